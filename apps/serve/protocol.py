"""The ``/ws`` protocol of ``cascade serve``: what a client may send, and the bounds it is held to.

Client to server, JSON text messages of at most ``Limits.max_message_bytes`` bytes:

- ``{"prompt": "a blue cube", "policy": "none"}``: switch to this prompt from the first block not yet
  started. ``policy`` is optional; naming the other policy than the stream's restarts the stream under it
  (a schedule has one switch policy, so a stream cannot change it mid-way).
- ``{"policy": "recache"}``: restart the stream under that policy with its current prompt.
- ``{"type": "ping"}``: answered with ``{"type": "pong"}``; counts as activity for ``--idle-timeout``.

Server to client: every binary message is one frame, a baseline JPEG; every text message is a JSON object
with a ``type`` (``hello``, ``block``, ``switch``, ``switched``, ``stats``, ``error``, ``busy``, ``end``,
``pong``). docs/serve.md lists their fields.

A message that breaks a rule gets one ``{"type": "error", "code": ..., "message": ...}`` and the stream goes
on. Nothing in a message names a file: a prompt is text handed to the text encoder, never a path.

>>> parse_message('{"prompt": "a red ball"}', None, Limits())
Request(kind='prompt', prompt='a red ball', policy=None)
>>> parse_message('{"prompt": 3}', None, Limits())
Traceback (most recent call last):
...
apps.serve.protocol.ProtocolError: `prompt` must be text, got int
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

from cascade_sched.errors import CascadeError
from cascade_sched.spec import SWITCH_POLICIES

FIELDS = ("prompt", "policy", "type")


class ProtocolError(CascadeError):
    """Raised when a client message breaks the protocol; ``code`` is the error's machine-readable name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may send."""

    max_message_bytes: int = 4096  # one JSON message, UTF-8
    max_prompt_chars: int = 500  # after stripping surrounding blanks
    prompt_interval_s: float = 1.0  # a client's prompt changes (and restarts) are at least this far apart

    def to_dict(self) -> dict[str, Any]:
        return {"max_message_bytes": self.max_message_bytes, "max_prompt_chars": self.max_prompt_chars,
                "prompt_interval_s": self.prompt_interval_s}


@dataclass(frozen=True)
class Request:
    """A valid client message: ``kind`` is ``prompt`` (a switch, maybe with a policy), ``policy`` (a
    restart under another policy) or ``ping``."""

    kind: str
    prompt: str | None = None
    policy: str | None = None


def parse_message(text: str | None, data: bytes | None, limits: Limits) -> Request:
    """The request in one websocket message, or ``ProtocolError`` saying what is wrong with it."""
    if text is None:
        size = len(data or b"")
        raise ProtocolError("binary", f"binary messages are not accepted ({size} bytes); send JSON text")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_message_bytes:
        raise ProtocolError("too_large", f"message of {size} bytes is over the limit of "
                                         f"{limits.max_message_bytes} bytes")
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ProtocolError("bad_json", f"message is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not_object", f"message must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise ProtocolError("unknown_field", f"unknown field(s) {unknown}; a message has {', '.join(FIELDS)}")
    kind = obj.get("type")
    if kind is not None:
        if kind != "ping" or len(obj) != 1:
            raise ProtocolError("unknown_type", f"`type` may only be \"ping\" (alone), got {kind!r}")
        return Request("ping")
    policy = obj.get("policy")
    if policy is not None and policy not in SWITCH_POLICIES:
        raise ProtocolError("bad_policy", f"`policy` must be one of {', '.join(SWITCH_POLICIES)}, got {policy!r}")
    if "prompt" not in obj:
        if policy is None:
            raise ProtocolError("empty", "message names neither `prompt` nor `policy`")
        return Request("policy", policy=policy)
    return Request("prompt", prompt=check_prompt(obj["prompt"], limits), policy=policy)


def check_prompt(value: object, limits: Limits) -> str:
    """A prompt as text: stripped, non-empty, at most ``max_prompt_chars``, no control characters."""
    if not isinstance(value, str):
        raise ProtocolError("bad_prompt", f"`prompt` must be text, got {type(value).__name__}")
    prompt = value.strip()
    if not prompt:
        raise ProtocolError("bad_prompt", "`prompt` is empty")
    if len(prompt) > limits.max_prompt_chars:
        raise ProtocolError("bad_prompt", f"`prompt` has {len(prompt)} characters, over the limit of "
                                          f"{limits.max_prompt_chars}")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in prompt):
        raise ProtocolError("bad_prompt", "`prompt` holds control characters")
    return prompt


class RateLimiter:
    """At most one accepted change per ``interval_s`` seconds (per client).

    >>> r = RateLimiter(1.0)
    >>> r.wait_s(10.0), r.wait_s(10.4), r.wait_s(11.0)
    (0.0, 0.6, 0.0)
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._next = -float("inf")

    def wait_s(self, now: float) -> float:
        """0 and the change is accepted (counted); else the seconds until one would be."""
        if now < self._next:
            return round(self._next - now, 3)
        self._next = now + self.interval_s
        return 0.0


def message(kind: str, **fields: Any) -> str:
    """A server text message: ``{"type": kind, **fields}`` as JSON."""
    return json.dumps({"type": kind, **fields})
