"""The Hypothesis strategies every test package draws cascade settings from (one statement, with parameters).

``specs()`` covers the whole spec space by default (one block, one device, lag S or 1, per-block lags,
window 1, a sink covering every block, no cache pass, every attention mode, the block and stage
placements); ``strides`` and ``placements`` open the ring space (stage strides, placement ``layers`` on
G x W rings with even or given layer splits); each test narrows it with parameters instead of restating
it.
"""

from __future__ import annotations

from hypothesis import strategies as st

from cascade_sched import CascadeSpec
from cascade_sched.spec import ATTENTION_MODES, SWITCH_POLICIES

NOMINAL_STEPS = (1000, 750, 500, 250)
PLACEMENTS = ("block", "stage")
ALL_PLACEMENTS = ("block", "stage", "layers")


@st.composite
def timesteps(draw: st.DrawFn, min_k: int = 1, max_k: int = 6) -> tuple[float, ...]:
    """1..6 distinct timesteps in (0, 1000], strictly decreasing; mostly integers, sometimes floats."""
    k = draw(st.integers(min_k, max_k))
    value = st.integers(1, 1000) | st.floats(0.5, 1000.0, allow_nan=False, allow_infinity=False)
    values = draw(st.lists(value, min_size=k, max_size=k, unique=True))
    return tuple(sorted(values, reverse=True))


@st.composite
def specs(
    draw: st.DrawFn,
    *,
    blocks: tuple[int, int] = (1, 10),
    devices: tuple[int, int] = (1, 6),
    steps: str = "random",
    max_denoise: int = 6,
    lags: str = "any",
    max_lag_below_s: bool = False,
    attention: str | None = None,
    window: st.SearchStrategy[int | None] | None = None,
    windowed: bool = False,
    max_sink: int | None = None,
    switches: int = 0,
    max_prompt: int = 5,
    seeds: tuple[int, int] = (0, 2**31),
    strides: tuple[int, int] = (1, 1),
    placements: tuple[str, ...] = PLACEMENTS,
    max_ring: int = 4,
) -> CascadeSpec:
    """A valid spec.

    ``blocks``, ``devices`` and ``seeds`` are inclusive ranges. ``steps``: ``random`` timesteps
    (:func:`timesteps`) or ``nominal`` prefixes of 1000, 750, 500, 250, with at most ``max_denoise``
    denoise steps. ``lags``: ``any`` (None = sequential, uniform, or per-block) or ``uniform``;
    ``max_lag_below_s`` keeps every lag below S. ``window``: a strategy of windows (default None or
    1 .. blocks + 1; ``windowed`` drops None). ``max_sink``: default blocks + 1. ``switches``: up to that
    many prompt switches at distinct blocks (prompt ids 0 .. ``max_prompt``), under either switch policy
    (``none`` only under ``stage`` attention, which refuses a recache). ``strides``: the stage stride k,
    an inclusive range. ``placements``: those drawn from; ``layers`` draws G rings of W <= ``max_ring``
    devices (G x W within ``devices``), a stride of at least W, and the model's layers (an even split of
    W..W+9 layers, or a given split of 1..4 layers per device).
    """
    stage_steps = draw(timesteps(max_k=max_denoise)) if steps == "random" else \
        NOMINAL_STEPS[:draw(st.integers(1, min(max_denoise, len(NOMINAL_STEPS))))]
    cache_pass = draw(st.booleans())
    s = len(stage_steps) + cache_pass
    placement = draw(st.sampled_from(placements))
    ring: dict[str, object] = {}
    if placement == "layers":
        w = draw(st.integers(1, min(max_ring, devices[1])), label="W")
        g = draw(st.integers(max(1, -(-devices[0] // w)), max(1, devices[1] // w)), label="G")
        k = draw(st.integers(max(w, strides[0]), max(w, strides[1])), label="stride")
        if draw(st.booleans(), label="given split"):
            ring["layer_split"] = tuple(draw(st.lists(st.integers(1, 4), min_size=w, max_size=w)))
        else:
            ring["num_layers"] = draw(st.integers(w, w + 9))
        num_devices, ring["rings"] = g * w, g
    else:
        k = draw(st.integers(*strides), label="stride")
        num_devices = draw(st.integers(*devices))
    span = (s - 1) * k + 1  # the sequential lag
    top = span - 1 if max_lag_below_s and span > 1 else span
    n = draw(st.integers(*blocks))
    kinds = ("none", "uniform", "per_block") if lags == "any" else ("uniform",)
    kind = draw(st.sampled_from(kinds))
    lag: int | tuple[int, ...] | None
    if kind == "none" and not max_lag_below_s:
        lag = None
    elif kind == "per_block":
        lag = tuple(draw(st.lists(st.integers(1, top), min_size=n - 1, max_size=n - 1)))
    else:
        lag = draw(st.integers(1, top))
    if window is None:
        window = st.integers(1, n + 1) if windowed else st.none() | st.integers(1, n + 1)
    switch_at = sorted(draw(st.sets(st.integers(0, n - 1), max_size=switches))) if switches else []
    mode = attention or draw(st.sampled_from(ATTENTION_MODES))
    policies = ("none",) if mode == "stage" else SWITCH_POLICIES
    return CascadeSpec(
        num_blocks=n,
        timesteps=stage_steps,
        cache_pass=cache_pass,
        lag=lag,
        attention=mode,
        window=draw(window),
        sink=draw(st.integers(0, n + 1 if max_sink is None else max_sink)),
        num_devices=num_devices,
        placement=placement,
        seed=draw(st.integers(*seeds)),
        switches=tuple((at, draw(st.integers(0, max_prompt))) for at in switch_at),
        switch_policy=draw(st.sampled_from(policies)) if switches else "none",
        stage_stride=k,
        **ring,  # type: ignore[arg-type]
    )
