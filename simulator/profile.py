"""Measured cost tables: the ``cascade-profile/2`` file format and the cost model that interpolates it.

A profile is what a calibration run measures on one device kind with one model (``cascade calibrate``
writes it; docs/simulator.md documents it)::

    {
      "format": "cascade-profile/2",
      "model": "small",                       # the geometry it was measured with
      "provenance": {"device": "cpu", "torch": "2.11.0", "dtype": "float32", "threads": 2,
                     "date": "2025-11-25", "notes": "..."},
      "forward": [                            # one entry per measured shape
        {"batch": 1, "query_tokens": 192, "context_tokens": 384, "seconds": 0.0121, "samples": 20,
         "peak_bytes": 0},                    # optional: the forward's peak memory (GPU calibration)
        ...
      ],
      "sample_s_per_task": 0.0002,            # sampler step of one denoise task
      "decode_s_per_block": 0.0011,           # decoding one block (12 video frames)
      "decode_first_block_s": 0.0009,         # optional: the first block (9 frames); default as above
      "tick_overhead_s": 0.0004,              # optional: the tick loop's own time per tick with work
      "text_encode_s": 0.0,                   # optional: encoding one prompt
      "peak_memory_bytes": 0,                 # optional: the largest forward's peak (GPU calibration)
      "link": {"latency_s": 5e-05, "bandwidth_Bps": 2.0e9}   # optional alpha-beta fit of the backend
    }

Version 1 files (without the three optional fields of version 2) still read.

``batch`` is the number of tasks one device runs in one forward, ``query_tokens`` the new tokens of each
task (one block), ``context_tokens`` the tokens each task attends to (its own plus the visible KV), and
``seconds`` the wall time of that whole batched forward. Interpolation (:meth:`Profile.forward_s`):
query tokens must match exactly; for a batch size, linear in context tokens between measured points and
linear extrapolation beyond them from the nearest segment (one point: constant); batch sizes between two
measured ones are interpolated linearly, batch sizes outside the measured range are an error. Shapes
priced off the measured grid are recorded (:meth:`ProfileCost.extrapolations`) so a prediction can say so.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cascade_sched.errors import SimulationError
from simulator.catalog import MODELS, Link, ModelGeometry

FORMAT = "cascade-profile/2"
READS = ("cascade-profile/1", FORMAT)

__all__ = ["FORMAT", "ForwardPoint", "Profile", "ProfileCost"]


@dataclass(frozen=True)
class ForwardPoint:
    """One measured forward: ``batch`` tasks of ``query_tokens`` each over ``context_tokens`` took ``seconds``."""

    batch: int
    query_tokens: int
    context_tokens: int
    seconds: float
    samples: int = 1
    peak_bytes: int = 0  # the forward's peak device memory (GPU calibration), 0 where not measured


def _num(data: Mapping[str, Any], key: str, where: str, integer: bool = False, optional: bool = False) -> Any:
    if key not in data or data[key] is None:
        if optional:
            return None
        raise SimulationError(f"{where}: missing `{key}`")
    v = data[key]
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not math.isfinite(v) or v < 0:
        raise SimulationError(f"{where}: `{key}` must be a non-negative {'integer' if integer else 'number'}, "
                              f"got {v!r}")
    return v


@dataclass(frozen=True)
class Profile:
    """A parsed ``cascade-profile/1`` file (see the module docstring)."""

    model: str
    forward: tuple[ForwardPoint, ...]
    sample_s_per_task: float = 0.0
    decode_s_per_block: float = 0.0
    decode_first_block_s: float | None = None
    link_fit: tuple[float, float] | None = None  # (latency_s, bandwidth_Bps)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    path: str = ""
    tick_overhead_s: float = 0.0
    text_encode_s: float = 0.0
    peak_memory_bytes: int = 0

    # -- I/O --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready object of the format (what a calibration writes)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "model": self.model,
            "provenance": dict(self.provenance),
            "forward": [
                {"batch": p.batch, "query_tokens": p.query_tokens, "context_tokens": p.context_tokens,
                 "seconds": p.seconds, "samples": p.samples, **({"peak_bytes": p.peak_bytes} if p.peak_bytes else {})}
                for p in self.forward
            ],
            "sample_s_per_task": self.sample_s_per_task,
            "decode_s_per_block": self.decode_s_per_block,
            "tick_overhead_s": self.tick_overhead_s,
            "text_encode_s": self.text_encode_s,
        }
        if self.peak_memory_bytes:
            out["peak_memory_bytes"] = self.peak_memory_bytes
        if self.decode_first_block_s is not None:
            out["decode_first_block_s"] = self.decode_first_block_s
        if self.link_fit is not None:
            out["link"] = {"latency_s": self.link_fit[0], "bandwidth_Bps": self.link_fit[1]}
        return out

    def save(self, path: str) -> None:
        """Write the profile as indented JSON (under its partial name until complete)."""
        from cascade_sched.outputs import committed

        with committed(path, keep_partial=False) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def from_dict(cls, data: Any, path: str = "<profile>") -> Profile:
        """Parse and check a profile object; every problem is one ``SimulationError`` line naming ``path``."""
        if not isinstance(data, dict):
            raise SimulationError(f"profile {path}: expected a JSON object")
        if data.get("format") not in READS:
            raise SimulationError(f"profile {path}: `format` must be one of {', '.join(READS)}, "
                                  f"got {data.get('format')!r}")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise SimulationError(f"profile {path}: missing `model` (the geometry it was measured with)")
        entries = data.get("forward")
        if not isinstance(entries, list) or not entries:
            raise SimulationError(f"profile {path}: `forward` must be a non-empty list of measured shapes")
        points = []
        for i, e in enumerate(entries):
            where = f"profile {path}: forward[{i}]"
            if not isinstance(e, dict):
                raise SimulationError(f"{where}: expected an object")
            points.append(ForwardPoint(
                _num(e, "batch", where, integer=True), _num(e, "query_tokens", where, integer=True),
                _num(e, "context_tokens", where, integer=True), float(_num(e, "seconds", where)),
                _num(e, "samples", where, integer=True, optional=True) or 1,
                _num(e, "peak_bytes", where, integer=True, optional=True) or 0,
            ))
            if points[-1].batch < 1:
                raise SimulationError(f"{where}: `batch` must be at least 1")
        where = f"profile {path}"
        link = data.get("link")
        link_fit = None
        if link is not None:
            if not isinstance(link, dict):
                raise SimulationError(f"{where}: `link` must be an object with latency_s and bandwidth_Bps")
            link_fit = (float(_num(link, "latency_s", f"{where}: link")),
                        float(_num(link, "bandwidth_Bps", f"{where}: link")))
            if link_fit[1] <= 0:
                raise SimulationError(f"{where}: link `bandwidth_Bps` must be positive")
        prov = data.get("provenance", {})
        first = _num(data, "decode_first_block_s", where, optional=True)
        return cls(
            model=model,
            forward=tuple(points),
            sample_s_per_task=float(_num(data, "sample_s_per_task", where, optional=True) or 0.0),
            decode_s_per_block=float(_num(data, "decode_s_per_block", where, optional=True) or 0.0),
            decode_first_block_s=None if first is None else float(first),
            link_fit=link_fit,
            provenance=dict(prov) if isinstance(prov, dict) else {"notes": str(prov)},
            path=path,
            tick_overhead_s=float(_num(data, "tick_overhead_s", where, optional=True) or 0.0),
            text_encode_s=float(_num(data, "text_encode_s", where, optional=True) or 0.0),
            peak_memory_bytes=int(_num(data, "peak_memory_bytes", where, integer=True, optional=True) or 0),
        )

    @classmethod
    def load(cls, path: str) -> Profile:
        """Read a profile file; a missing or malformed file is one ``SimulationError`` line."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise SimulationError(f"cannot read profile {path}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise SimulationError(f"profile {path} is not JSON: {e.msg} at line {e.lineno}") from None
        except UnicodeDecodeError as e:
            raise SimulationError(f"profile {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        return cls.from_dict(data, path)

    # -- interpolation ----------------------------------------------------------------------------------
    def curves(self) -> dict[int, dict[int, tuple[tuple[float, ...], tuple[float, ...]]]]:
        """``{query_tokens: {batch: (context_tokens sorted, seconds)}}``, repeated shapes averaged."""
        acc: dict[tuple[int, int, int], list[float]] = {}
        for p in self.forward:
            acc.setdefault((p.query_tokens, p.batch, p.context_tokens), []).append(p.seconds)
        out: dict[int, dict[int, tuple[tuple[float, ...], tuple[float, ...]]]] = {}
        for (q, n, c) in sorted(acc):
            xs, ys = out.setdefault(q, {}).get(n, ((), ()))
            vals = acc[(q, n, c)]
            out[q][n] = ((*xs, float(c)), (*ys, sum(vals) / len(vals)))
        return out

    def link(self) -> Link | None:
        """The fitted backend link, if the profile has one."""
        if self.link_fit is None:
            return None
        lat, bw = self.link_fit
        return Link("profile", bw, lat, f"profile {self.path}: fitted link ({bw / 1e9:.3g} GB/s, {lat * 1e6:.3g} us)")


def _interp(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
    """Piecewise linear through (xs, ys), extrapolated linearly from the end segments (one point: constant)."""
    if len(xs) == 1:
        return ys[0]
    i = bisect.bisect_left(xs, x)
    i = min(max(i, 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


class ProfileCost:
    """A cost model that interpolates a measured :class:`Profile` (see the module docstring)."""

    name = "profile"

    def __init__(self, profile: Profile, geometry: ModelGeometry | None = None) -> None:
        if geometry is not None and profile.model != geometry.name:
            raise SimulationError(f"profile {profile.path} was measured with model {profile.model!r}, "
                                  f"not {geometry.name!r}; pass --model {profile.model}")
        self.profile = profile
        if geometry is None and profile.model in MODELS:
            geometry = MODELS[profile.model]
        self.geometry = geometry  # the simulator's default model for this cost
        self._curves = profile.curves()
        self._marked: dict[str, None] = {}  # shapes priced off the measured grid, in first-seen order
        prov = ", ".join(f"{k}={v}" for k, v in profile.provenance.items())
        self.source = (f"profile {profile.path}: {len(profile.forward)} measured shapes of {profile.model}"
                       + (f" ({prov})" if prov else ""))

    @classmethod
    def load(cls, path: str, geometry: ModelGeometry | None = None) -> ProfileCost:
        """Load ``path`` and check it was measured with ``geometry``."""
        return cls(Profile.load(path), geometry)

    def _curve_at(self, q: int, n: int) -> dict[int, tuple[tuple[float, ...], tuple[float, ...]]]:
        by_batch = self._curves.get(q)
        if by_batch is None:
            raise SimulationError(
                f"profile {self.profile.path} has no forward entries for query_tokens={q} "
                f"(it has {sorted(self._curves)}); profile this shape"
            )
        return by_batch

    def forward_s(self, query_tokens: int, contexts: tuple[int, ...]) -> float:
        """Interpolated seconds of a batch of ``len(contexts)`` tasks at their mean context.

        >>> p = Profile("tiny", (ForwardPoint(1, 12, 12, 1.0), ForwardPoint(1, 12, 24, 2.0),
        ...                      ForwardPoint(2, 12, 12, 1.5), ForwardPoint(2, 12, 24, 2.5)))
        >>> c = ProfileCost(p)
        >>> c.forward_s(12, (18,)), c.forward_s(12, (36,)), c.forward_s(12, (12, 24))
        (1.5, 3.0, 2.0)
        """
        n = len(contexts)
        c = sum(contexts) / n
        by_batch = self._curve_at(query_tokens, n)
        if n in by_batch:
            self._mark_context(n, c, by_batch[n][0])
            return _interp(*by_batch[n], c)
        sizes = sorted(by_batch)
        i = bisect.bisect_left(sizes, n)
        if i == 0 or i == len(sizes):
            raise SimulationError(
                f"profile {self.profile.path} has no forward entries for batch={n} (query_tokens={query_tokens}; "
                f"measured batches {sizes}); profile batch sizes up to {n}"
            )
        n0, n1 = sizes[i - 1], sizes[i]
        self._mark(f"batch {n} interpolated between measured {n0} and {n1}")
        self._mark_context(n0, c, by_batch[n0][0])
        self._mark_context(n1, c, by_batch[n1][0])
        y0, y1 = _interp(*by_batch[n0], c), _interp(*by_batch[n1], c)
        return y0 + (y1 - y0) * (n - n0) / (n1 - n0)

    def _mark(self, text: str) -> None:
        self._marked.setdefault(text, None)

    def _mark_context(self, n: int, c: float, xs: tuple[float, ...]) -> None:
        if c < xs[0] or c > xs[-1]:
            self._mark(f"batch {n}: context {c:g} tokens extrapolated beyond the measured {xs[0]:g}..{xs[-1]:g}")

    def extrapolations(self) -> tuple[str, ...]:
        """Every shape priced so far that the profile did not measure: a batch size interpolated between two
        measured ones, or a context outside a batch's measured range (linear extrapolation). Empty when
        every price came from inside the measured grid.

        >>> c = ProfileCost(Profile("tiny", (ForwardPoint(1, 12, 12, 1.0), ForwardPoint(1, 12, 24, 2.0))))
        >>> _ = c.forward_s(12, (48,))
        >>> c.extrapolations()
        ('batch 1: context 48 tokens extrapolated beyond the measured 12..24',)
        """
        return tuple(self._marked)

    def sample_s(self, n: int) -> float:
        return self.profile.sample_s_per_task * n

    def decode_s(self, block: int, frames: int) -> float:
        p = self.profile
        if block == 0 and p.decode_first_block_s is not None:
            return p.decode_first_block_s
        return p.decode_s_per_block

    def text_s(self) -> float:
        return self.profile.text_encode_s

    def tick_s(self) -> float:
        return self.profile.tick_overhead_s

    def check_shapes(self, query_tokens: int, batches: set[int]) -> None:
        """Raise one ``SimulationError`` line if a needed (query tokens, batch) shape is not covered."""
        for n in sorted(batches):
            self.forward_s(query_tokens, (query_tokens,) * n)
