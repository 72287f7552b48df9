"""``CascadeSpec``: the cascade setting a user asks for, validated where it is built.

Everything downstream (schedule, simulator, executors) is a pure function of this value.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from cascade_sched.errors import ConfigError, check_range

Attention = Literal["causal", "bidirectional", "stale", "stage"]
ATTENTION_MODES: tuple[str, ...] = ("causal", "bidirectional", "stale", "stage")
SWITCH_POLICIES: tuple[str, ...] = ("none", "recache")
DEFAULT_TIMESTEPS: tuple[float, ...] = (1000, 750, 500, 250)


@dataclass(frozen=True)
class CascadeSpec:
    """A cascade setting: how many blocks, which stages, how far apart blocks start, what they attend to.

    ``lag`` is an int (uniform), a sequence of ``num_blocks - 1`` per-block lags (``lag[b]`` is the
    distance from block b's start to block b+1's), or None for the sequential baseline ``S``.
    ``window`` counts blocks including the block itself (None = unbounded); ``sink`` blocks
    ``0 .. sink-1`` stay visible to every later block.

    ``switches`` are prompt switches ``(at_block, prompt)``: blocks from ``at_block`` on use prompt id
    ``prompt`` for every stage (blocks before the first switch use prompt 0). ``switch_policy`` is
    ``none`` (the cascade's: nothing added) or ``recache`` (the LongLive baseline's: one recache task
    before the switching block's first stage re-encodes the committed KV the new block will read, under
    the new prompt; it takes a tick, so the switching block starts one tick later).

    ``stage_stride`` (k) puts a block's stages k ticks apart: task (b, s) runs at ``start(b) + s*k``.
    Placement ``layers`` runs the cascade on ``rings`` rings of W = ``num_devices / rings`` devices each;
    device r of a ring runs layers ``[first_r, end_r)`` of every task of that ring, by ``layer_split``
    (W parts) or an even split of ``num_layers`` (the model's layer count; None = unknown, which the
    other placements allow). docs/contract.md states the rules.

    >>> spec = CascadeSpec(num_blocks=4, lag=1, num_devices=5)
    >>> spec.num_stages, spec.lags
    (5, (1, 1, 1))
    >>> ring = CascadeSpec(num_blocks=4, lag=1, num_devices=4, placement="layers", stage_stride=4, num_layers=30)
    >>> ring.ring_size, ring.layer_ranges
    (4, ((0, 8), (8, 16), (16, 23), (23, 30)))
    """

    num_blocks: int
    timesteps: tuple[float, ...] = DEFAULT_TIMESTEPS
    cache_pass: bool = True
    lag: int | tuple[int, ...] | None = None
    attention: str = "causal"
    window: int | None = None
    sink: int = 0
    num_devices: int = 1
    placement: str = "block"
    frames_per_block: int = 3
    seed: int = 0
    switches: tuple[tuple[int, int], ...] = ()
    switch_policy: str = "none"
    stage_stride: int = 1
    rings: int = 1
    layer_split: tuple[int, ...] | None = None
    num_layers: int | None = None
    lags: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_range("num_blocks", self.num_blocks, 1)
        steps = tuple(self.timesteps)
        if not steps:
            raise ConfigError("timesteps", "`timesteps` must name at least one denoise step, got none")
        for t in steps:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1000:
                raise ConfigError("timesteps", f"`timesteps` must lie in (0, 1000], got {t!r}")
        if any(a <= b for a, b in itertools.pairwise(steps)):
            raise ConfigError(
                "timesteps", f"`timesteps` must be strictly decreasing without repeats, got {list(steps)}"
            )
        object.__setattr__(self, "timesteps", steps)
        if self.attention not in ATTENTION_MODES:
            raise ConfigError(
                "attention", f"`attention` must be one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}"
            )
        if self.window is not None:
            check_range("window", self.window, 1, what=" block(s) (None = unbounded)")
        check_range("sink", self.sink, 0)
        check_range("num_devices", self.num_devices, 1)
        check_range("frames_per_block", self.frames_per_block, 1)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"`seed` must be a non-negative integer, got {self.seed!r}")
        from cascade_sched.placement import PLACEMENTS  # registry lives beside the policies

        if self.placement not in PLACEMENTS:
            raise ConfigError(
                "placement", f"`placement` must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}"
            )
        check_range("stage_stride", self.stage_stride, 1)
        self._check_layers()
        object.__setattr__(self, "lags", self._resolve_lags())
        object.__setattr__(self, "switches", self._check_switches())
        if self.switch_policy not in SWITCH_POLICIES:
            raise ConfigError(
                "switch_policy",
                f"`switch_policy` must be one of {', '.join(SWITCH_POLICIES)}, got {self.switch_policy!r}",
            )
        if self.switch_policy == "recache" and self.attention == "stage":
            raise ConfigError(
                "switch_policy",
                "`switch_policy` recache cannot go with attention stage: a recache re-encodes committed K/V, "
                "which stage attention reads only at the commit stage (StreamDiffusionV2 restarts its stream "
                "on a prompt change); use switch_policy none",
            )

    def _check_layers(self) -> None:
        """``rings``, ``num_layers`` and ``layer_split``, and the ring's rule on ``stage_stride``."""
        check_range("rings", self.rings, 1)
        if self.num_layers is not None:
            check_range("num_layers", self.num_layers, 1)
        layers = self.placement == "layers"
        if not layers:
            if self.rings != 1:
                raise ConfigError("rings", f"`rings` applies to placement layers only, got {self.rings} with "
                                  f"placement {self.placement}")
            if self.layer_split is not None:
                raise ConfigError("layer_split", "`layer_split` applies to placement layers only, got "
                                  f"{list(self.layer_split)} with placement {self.placement}")
            return
        if self.num_devices % self.rings:
            raise ConfigError("rings", f"`rings` must divide num_devices={self.num_devices} (G rings of W = "
                              f"num_devices / G devices each), got {self.rings}")
        w = self.num_devices // self.rings
        if self.layer_split is not None:
            split = self.layer_split
            if isinstance(split, (str, bytes)) or not isinstance(split, Sequence):
                raise ConfigError("layer_split", f"`layer_split` must be a sequence of W={w} layer counts, "
                                  f"got {split!r}")
            split = tuple(split)
            if len(split) != w:
                raise ConfigError("layer_split", f"`layer_split` must have one part per device of a ring, W={w}, "
                                  f"got {len(split)} parts {list(split)}")
            for part in split:
                if isinstance(part, bool) or not isinstance(part, int) or part < 1:
                    raise ConfigError("layer_split", f"`layer_split` must give every device of a ring at least "
                                      f"one layer, got {list(split)}")
            if self.num_layers is not None and sum(split) != self.num_layers:
                raise ConfigError("layer_split", f"`layer_split` must sum to num_layers={self.num_layers}, got "
                                  f"{'+'.join(map(str, split))}={sum(split)}")
            object.__setattr__(self, "layer_split", split)
            object.__setattr__(self, "num_layers", sum(split))
        elif self.num_layers is None:
            raise ConfigError("num_layers", "`num_layers` (the model's layer count) is needed by placement "
                              "layers, to split the layers over a ring; give it or a layer_split")
        elif self.num_layers < w:
            raise ConfigError("num_layers", f"`num_layers` must be at least the ring size W={w} (each device "
                              f"of a ring runs one layer or more), got {self.num_layers}")
        if self.stage_stride < w:
            raise ConfigError("stage_stride", f"`stage_stride` must be at least the ring size W={w} under "
                              "placement layers (a block's next stage enters the ring only after its previous "
                              f"stage has left it), got {self.stage_stride}")

    def _check_switches(self) -> tuple[tuple[int, int], ...]:
        out: list[tuple[int, int]] = []
        for item in self.switches:
            if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
                raise ConfigError("switches", f"a prompt switch is (at_block, prompt), got {item!r}")
            at, prompt = item
            check_range("at_block", at, 0, self.num_blocks - 1, f" (blocks 0..{self.num_blocks - 1})",
                        part_of="switches")
            check_range("prompt", prompt, 0, part_of="switches")
            if out and at <= out[-1][0]:
                raise ConfigError("switches", f"prompt switches must be in increasing at_block order, got {at} "
                                  f"after {out[-1][0]}")
            out.append((at, prompt))
        return tuple(out)

    def prompt_of(self, block: int) -> int:
        """The prompt id block ``block`` uses: that of the last switch at or before it (0 before any).

        >>> CascadeSpec(num_blocks=4, switches=((2, 7),)).prompt_of(1), CascadeSpec(num_blocks=4, switches=((2, 7),)).prompt_of(3)
        (0, 7)
        """
        prompt = 0
        for at, p in self.switches:
            if at > block:
                break
            prompt = p
        return prompt

    @property
    def recache_switches(self) -> tuple[tuple[int, int], ...]:
        """The (index, at_block) of every switch that adds a recache task (policy recache, at_block >= 1)."""
        if self.switch_policy != "recache":
            return ()
        return tuple((q, at) for q, (at, _) in enumerate(self.switches) if at >= 1)

    def _resolve_lags(self) -> tuple[int, ...]:
        s, n, k = self.num_stages, self.num_blocks - 1, self.stage_stride
        top = self.tick_span
        why = f" (S={s} stages)" if k == 1 else f" (S={s} stages, stage_stride {k}: (S-1)*k + 1 is sequential)"
        if self.lag is None:
            return (top,) * n
        if isinstance(self.lag, int) and not isinstance(self.lag, bool):
            check_range("lag", self.lag, 1, top, why)
            return (self.lag,) * n
        if isinstance(self.lag, (str, bytes)) or not isinstance(self.lag, Sequence):
            raise ConfigError("lag", f"`lag` must be an int or a sequence of ints, got {self.lag!r}")
        lags = tuple(self.lag)
        if len(lags) != n:
            raise ConfigError("lag", f"`lag` as a sequence needs num_blocks - 1 = {n} entries, got {len(lags)}")
        for value in lags:
            check_range("lag", value, 1, top, why)
        object.__setattr__(self, "lag", lags)
        return lags

    # -- derived sizes ----------------------------------------------------------------------------------
    @property
    def num_denoise(self) -> int:
        """K, the number of denoise stages."""
        return len(self.timesteps)

    @property
    def num_stages(self) -> int:
        """S = K denoise stages, plus one cache stage when ``cache_pass`` is on."""
        return len(self.timesteps) + (1 if self.cache_pass else 0)

    @property
    def tick_span(self) -> int:
        """Ticks from a block's first stage to its last, inclusive: ``(S-1)*k + 1``. A block is in flight
        at tick n when ``start(b) <= n < start(b) + tick_span``, and it is also the largest lag: the
        sequential baseline, one block in flight."""
        return (self.num_stages - 1) * self.stage_stride + 1

    @property
    def ring_size(self) -> int:
        """W, the devices one task passes through: ``num_devices / rings`` under placement layers, else 1."""
        return self.num_devices // self.rings if self.placement == "layers" else 1

    @property
    def layer_ranges(self) -> tuple[tuple[int, int | None], ...]:
        """The layers ``[first, end)`` device r of a ring runs, in ring order: ``layer_split``, or an even
        split of ``num_layers`` with the remainder to the first devices (30 layers on 4: 8, 8, 7, 7, as
        StreamDiffusionV2 splits them). Other placements: one range of all layers (end None = unknown).

        >>> CascadeSpec(num_blocks=1, num_devices=2, placement="layers", stage_stride=2, num_layers=5).layer_ranges
        ((0, 3), (3, 5))
        """
        if self.placement != "layers":
            return ((0, self.num_layers),)
        w, n = self.ring_size, self.num_layers or 0
        parts = self.layer_split or tuple(n // w + (1 if r < n % w else 0) for r in range(w))
        bounds = list(itertools.accumulate(parts, initial=0))
        return tuple(itertools.pairwise(bounds))

    @property
    def stage_timesteps(self) -> tuple[float, ...]:
        """The nominal timestep of every stage; the cache stage runs at the context timestep 0."""
        return self.timesteps + ((0,) if self.cache_pass else ())

    def to_dict(self) -> dict[str, Any]:
        """Every spec field as plain JSON-ready values (``lag`` as given, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if f.name == "switches":
                value = [list(sw) for sw in value]
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CascadeSpec:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ConfigError``."""
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError("spec", f"unknown spec field(s) {unknown}; valid: {sorted(known)}")
        kwargs = dict(data)
        if "timesteps" in kwargs:
            kwargs["timesteps"] = tuple(kwargs["timesteps"])
        if isinstance(kwargs.get("lag"), list):
            kwargs["lag"] = tuple(kwargs["lag"])
        if "switches" in kwargs:
            kwargs["switches"] = tuple(tuple(sw) for sw in kwargs["switches"])
        if isinstance(kwargs.get("layer_split"), list):
            kwargs["layer_split"] = tuple(kwargs["layer_split"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> CascadeSpec:
        """This spec with ``changes`` (spec fields), validated as a new spec is.

        >>> CascadeSpec(num_blocks=3, lag=1).replace(attention="stale").attention
        'stale'
        """
        return dataclasses.replace(self, **changes)

    def extended(self, extra_blocks: int, switches: Sequence[tuple[int, int]] = ()) -> CascadeSpec:
        """This spec with ``extra_blocks`` more blocks and more prompt switches (at or after the new blocks'
        start, in order): what a stream asks for while it runs. Per-block lags repeat the last lag for the
        new blocks.

        >>> CascadeSpec(num_blocks=3, lag=1).extended(2, [(3, 1)]).num_blocks
        5
        """
        check_range("extra_blocks", extra_blocks, 0)
        lag = self.lag
        if isinstance(lag, tuple):
            lag = (*lag, *[lag[-1] if lag else self.tick_span] * extra_blocks)
        return self.replace(num_blocks=self.num_blocks + extra_blocks, lag=lag,
                            switches=(*self.switches, *(tuple(sw) for sw in switches)))


def paper_level(k: int, num_stages: int) -> int:
    """The uniform lag of the paper's parallelism level ``P(k)``: ``S - k``.

    The paper names only its most parallel level publicly (P4: lag 1 with S = 5); P0 (lag S, the
    sequential baseline) up to P{S-1} (lag 1) is the natural family this project fills in around it.

    >>> paper_level(4, 5), paper_level(0, 5)
    (1, 5)
    """
    check_range("level", k, 0, num_stages - 1, f" (S={num_stages} stages)")
    return num_stages - k
