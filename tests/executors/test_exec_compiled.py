"""The compiled executor: buckets derived from the schedule, and the same latents as the reference.

Inductor compiles on the CPU here, a few seconds per graph on two cores, so the equivalence tests share
one compiled model across schedules whose token buckets coincide (12/24/36 tokens of the tiny model)
and are marked slow. TensorRT tests run only where torch-tensorrt imports and CUDA is present.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from exec_support import PROMISE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models.dit as dit
from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.errors import ConfigError, ExecutorError
from executors.base import RunOptions
from executors.buckets import ATTENTION, TOKENS, Bucket, bucket_of, forward_buckets, local_tasks
from executors.compiled import CompiledExecutor, CompiledModel, load_tensorrt
from executors.reference import ReferenceExecutor
from models import CausalWanDiT, TaskInput, get_config
from tests import strategies

TPB = get_config("tiny").tokens_per_block  # 12
T2 = (1000, 500)  # two denoise stages + the cache pass: S = 3

# Schedules over every attention mode, placements, device counts, prompt switches (with and without a
# recache task); their token buckets are all within 12/24/36 tokens, so Inductor compiles 3 of them.
SPECS = {
    "causal-lag1-window2": CascadeSpec(num_blocks=3, lag=1, timesteps=T2, window=2),
    "bidirectional-sink": CascadeSpec(num_blocks=3, lag=1, timesteps=T2, attention="bidirectional", sink=1,
                                      window=2, seed=2),
    "stale-lag2": CascadeSpec(num_blocks=4, lag=2, timesteps=T2, attention="stale"),
    "sequential": CascadeSpec(num_blocks=3, timesteps=T2, seed=1),
    "2dev-stage": CascadeSpec(num_blocks=3, lag=1, timesteps=T2, num_devices=2, placement="stage"),
    "switch-none": CascadeSpec(num_blocks=4, lag=1, timesteps=T2, switches=((2, 1),), window=2),
    "switch-recache": CascadeSpec(num_blocks=3, lag=2, timesteps=T2, switches=((2, 1),), switch_policy="recache",
                                  window=2),
}
OPTIONS = {"prompts": {1: "a blue cube spinning"}}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max()) / max(float(a.abs().max()), 1e-30)


def reference(model: CausalWanDiT, spec: CascadeSpec) -> torch.Tensor:
    return ReferenceExecutor().run(build_schedule(spec), model, RunOptions(**OPTIONS)).stacked()


@pytest.fixture(scope="module")
def tiny() -> CausalWanDiT:
    return CausalWanDiT(get_config("tiny"), seed=0).eval()


# --- buckets: pure derivation --------------------------------------------------------------------------------
def test_buckets_of_a_canonical_schedule() -> None:
    s = build_schedule(CascadeSpec(num_blocks=3, lag=1, timesteps=T2, attention="bidirectional"))
    got = {tick: sorted(map(str, bucket_of(s, tick, [0], TPB))) for tick in range(s.num_ticks)}
    assert got == {
        0: ["attn12x12", "tokens12"],  # B0S0 alone
        1: ["attn24x24", "tokens24"],  # B0S1 + B1S0 see each other: one group
        2: ["attn36x36", "tokens36"],  # three in flight, one group
        3: ["attn24x36", "tokens24"],  # B1S2, B2S1 (+ committed B0)
        4: ["attn12x36", "tokens12"],  # B2S2 reads committed B0, B1
    }
    assert forward_buckets(s, [0], TPB) == set().union(*(bucket_of(s, t, [0], TPB) for t in range(5)))
    # Per rank: block placement on 3 devices puts one task per tick on each.
    s3 = build_schedule(CascadeSpec(num_blocks=3, lag=1, timesteps=T2, attention="bidirectional", num_devices=3))
    assert {b for b in forward_buckets(s3, [1], TPB) if b.kind == TOKENS} == {Bucket(TOKENS, 12)}
    with pytest.raises(ConfigError, match="devices"):
        forward_buckets(s3, [3], TPB)


def specs() -> st.SearchStrategy[CascadeSpec]:
    """Small specs with up to one prompt switch (the compiled buckets of recache tasks too)."""
    return strategies.specs(blocks=(1, 5), devices=(1, 3), steps="nominal", max_denoise=3, lags="uniform",
                            window=st.none() | st.integers(1, 3), max_sink=2, switches=1, max_prompt=1,
                            seeds=(0, 0))


def observed_shapes(model: CausalWanDiT, inputs: list[TaskInput]) -> set[Bucket]:
    """Run the eager model on ``inputs`` and record the shapes its forward really uses."""
    cfg = model.config
    seen: set[Bucket] = set()
    attend, pre = dit._attend, dit.WanBlock.pre_attention

    def rec_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if k.shape[0] != cfg.text_len:  # self-attention (cross-attention keys are the text's)
            seen.add(Bucket(ATTENTION, q.shape[0], k.shape[0]))
        return attend(q, k, v)

    def rec_pre(self: dit.WanBlock, x: torch.Tensor, *a: Any) -> Any:
        seen.add(Bucket(TOKENS, x.shape[0] * x.shape[1]))
        return pre(self, x, *a)

    shape = (cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dit, "_attend", rec_attend)
        mp.setattr(dit.WanBlock, "pre_attention", rec_pre)
        model.forward_tick(inputs, kv=lambda ref, layer: (torch.zeros(shape), torch.zeros(shape)))
    return seen


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=specs(), data=st.data())
def test_every_tick_shape_is_a_compiled_bucket(spec: CascadeSpec, data: st.DataObject) -> None:
    """The shapes the eager model really runs at every tick are exactly that tick's derived buckets,
    for any process's share of the devices, so a compiled run never meets a shape it did not compile."""
    model = _tiny_for_shapes()
    s = build_schedule(spec)
    devices = data.draw(st.sets(st.integers(0, spec.num_devices - 1), min_size=1), label="devices")
    derived = forward_buckets(s, devices, TPB)
    for tick in range(s.num_ticks):
        tasks = local_tasks(s, tick, devices)
        inputs = []
        for t in tasks:  # the tick loop's inputs: a recache task is one cache pass per version it writes
            for ref, reads in s.forward_inputs(t):
                inputs.append(TaskInput(ref=ref, latent=torch.zeros(model.config.latent_shape()), timestep=500.0,
                                        frame_offset=ref[0] * 3, prompt=t.prompt, reads=reads))
        got = observed_shapes(model, inputs) if inputs else set()
        assert got == set(bucket_of(s, tick, devices, TPB)), (tick, [str(t) for t in tasks])
        assert got <= derived


_SHAPES_MODEL: list[CausalWanDiT] = []


def _tiny_for_shapes() -> CausalWanDiT:
    if not _SHAPES_MODEL:
        m = CausalWanDiT(get_config("tiny"), seed=0)
        for pid in range(6):  # every prompt id the spec strategy draws
            m.register_prompt(pid, torch.full((3, 32), float(pid)))
        _SHAPES_MODEL.append(m)
    return _SHAPES_MODEL[0]


# --- the compiled tick without a compiler: routing and the pieces' math ----------------------------------------
@pytest.fixture(scope="module")
def eager_executor() -> CompiledExecutor:
    return CompiledExecutor("eager")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=specs())
def test_exported_pieces_match_the_reference(spec: CascadeSpec, tiny: CausalWanDiT,
                                             eager_executor: CompiledExecutor) -> None:
    """The exported pieces run uncompiled: the decomposition (real RoPE, batched cross-attention, grouped
    attention, K/V routing, recache inputs) reproduces the reference within float32 rounding."""
    got = eager_executor.run(build_schedule(spec), tiny, RunOptions(**OPTIONS)).stacked()
    assert rel_err(reference(tiny, spec), got) <= 1e-5


def test_a_shape_not_compiled_fails_instead_of_compiling_mid_stream(tiny: CausalWanDiT) -> None:
    cm = CompiledModel(tiny, "eager")
    cm.prepare(forward_buckets(build_schedule(SPECS["sequential"]), [0], TPB))
    tiny.register_prompt(0, torch.zeros(3, 32))
    tasks = [TaskInput(ref=(b, 0), latent=torch.zeros(tiny.config.latent_shape()), timestep=1000.0,
                       frame_offset=3 * b, prompt=0) for b in (0, 1)]
    with pytest.raises(ExecutorError, match=r"tokens24.*never compiles mid-stream"):
        tiny.forward_tick(tasks, kv=lambda ref, layer: None, kernels=cm.kernels)


def test_a_layer_ring_is_refused_with_one_line_naming_placement(tiny: CausalWanDiT) -> None:
    ring = build_schedule(CascadeSpec(num_blocks=2, lag=1, num_devices=2, placement="layers", stage_stride=2,
                                      num_layers=2))
    with pytest.raises(ConfigError) as e:
        CompiledExecutor("inductor").run(ring, tiny, RunOptions())
    assert e.value.param == "placement" and "`--placement` layers" in str(e.value) and "\n" not in str(e.value)


def test_weights_are_graph_inputs_not_constants(tiny: CausalWanDiT) -> None:
    """One exported `pre` graph serves every layer, and no artifact freezes a weight."""
    cm = CompiledModel(tiny, "eager")
    cm.prepare([Bucket(TOKENS, TPB), Bucket(ATTENTION, TPB, TPB)])
    graph = cm.graphs[("pre", Bucket(TOKENS, TPB))]
    ex = cm._examples("pre", Bucket(TOKENS, TPB))[:4]
    outs = [graph(*ex, *w) for w in cm._weights["pre"]]
    assert not torch.equal(outs[0][0], outs[1][0])  # layer 0 and layer 1 differ: the weights were inputs


# --- Inductor on the CPU ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inductor() -> CompiledExecutor:
    return CompiledExecutor("inductor")


@pytest.mark.slow
def test_inductor_matches_reference_over_schedules(tiny: CausalWanDiT, inductor: CompiledExecutor) -> None:
    compiled: set[Bucket] = set()
    for name, spec in SPECS.items():
        schedule = build_schedule(spec)
        got = inductor.run(schedule, tiny, RunOptions(**OPTIONS)).stacked()
        err = rel_err(reference(tiny, spec), got)
        assert err <= PROMISE[torch.float32], (name, err)
        cm = inductor.compiled_model(tiny)
        assert forward_buckets(schedule, range(spec.num_devices), TPB) <= set(cm.compile_s)
        compiled |= set(cm.compile_s)
    # Token buckets are shared: 3 stream shapes for all seven schedules (4 graphs each).
    assert {b for b in compiled if b.kind == TOKENS} == {Bucket(TOKENS, n * TPB) for n in (1, 2, 3)}


@pytest.mark.slow
def test_inductor_bfloat16_within_rounding(inductor: CompiledExecutor) -> None:
    model = CausalWanDiT(get_config("tiny"), seed=0).to(torch.bfloat16).eval()
    spec = SPECS["sequential"]
    got = inductor.run(build_schedule(spec), model, RunOptions()).stacked()
    want = ReferenceExecutor().run(build_schedule(spec), model, RunOptions()).stacked()
    assert rel_err(want, got) <= 5e-2  # bf16 matmuls: fusion reorders roundings


def _compiled_rank(specs: list[dict[str, Any]], rank: int, world: int) -> list[Any]:
    """Rank function: each rank compiles its own graphs and runs its share with the compiled executor."""
    torch.set_num_threads(1)
    model = CausalWanDiT(get_config("tiny"), seed=0).eval()
    ex = CompiledExecutor("inductor")
    out = []
    for spec in specs:
        result = ex.run(build_schedule(CascadeSpec.from_dict(spec)), model, RunOptions())
        out.append(result.stacked().numpy() if rank == 0 else None)
    return out


@pytest.mark.slow
def test_inductor_composes_with_the_distributed_executor(tiny: CausalWanDiT) -> None:
    from executors.launch import spawn

    spec = CascadeSpec(num_blocks=3, lag=1, timesteps=(1000,), num_devices=2, attention="bidirectional")
    (got,) = spawn(_compiled_rank, [spec.to_dict()], 2, timeout_s=300, threads=1)
    want = ReferenceExecutor().run(build_schedule(spec), tiny, RunOptions()).stacked()
    assert rel_err(want, torch.from_numpy(got)) <= PROMISE[torch.float32]


@pytest.mark.slow
def test_engine_cache_saves_and_reloads_aot_artifacts(tiny: CausalWanDiT, tmp_path: Path) -> None:
    """With an engine cache, Inductor writes AOTInductor packages per rank and bucket; a new executor
    loads them all without compiling and gives the same latents."""
    spec = CascadeSpec(num_blocks=1, timesteps=(1000,))
    first = CompiledExecutor("inductor", tmp_path)
    a = first.run(build_schedule(spec), tiny, RunOptions()).stacked()
    files = sorted(p.name for p in (tmp_path / "rank0" / "inductor").glob("*.pt2"))
    assert [f.split("-")[0] for f in files] == ["attend", "embed", "head", "post", "pre"]
    second = CompiledExecutor("inductor", tmp_path)
    b = second.run(build_schedule(spec), tiny, RunOptions()).stacked()
    cm = second.compiled_model(tiny)
    assert cm.loaded == set(cm.compile_s) == {Bucket(TOKENS, TPB), Bucket(ATTENTION, TPB, TPB)}
    assert rel_err(reference(tiny, spec), a) <= PROMISE[torch.float32]
    assert torch.equal(a, b)


# --- TensorRT ------------------------------------------------------------------------------------------------
def _tensorrt_missing() -> str | None:
    try:
        load_tensorrt()
    except ConfigError as e:
        return str(e)
    return None if torch.cuda.is_available() else "no CUDA device"


TRT_REASON = _tensorrt_missing()


@pytest.mark.tensorrt
@pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT cannot run here: {TRT_REASON}")
def test_tensorrt_bf16_matches_reference_and_reloads(tmp_path: Path) -> None:
    model = CausalWanDiT(get_config("tiny"), seed=0).to("cuda", torch.bfloat16).eval()
    spec = SPECS["bidirectional-sink"]
    want = ReferenceExecutor().run(build_schedule(spec), model, RunOptions()).stacked()
    got = CompiledExecutor("tensorrt", tmp_path).run(build_schedule(spec), model, RunOptions()).stacked()
    assert rel_err(want, got) <= 5e-2
    assert list((tmp_path / "rank0" / "tensorrt").glob("*.ep"))
    again = CompiledExecutor("tensorrt", tmp_path)
    b = again.run(build_schedule(spec), model, RunOptions()).stacked()
    assert again.compiled_model(model).loaded and torch.equal(got, b)


def test_tensorrt_import_failure_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing torch_tensorrt without its libraries raises a plain Exception: one ConfigError, no fallback."""
    (tmp_path / "torch_tensorrt.py").write_text("raise Exception('libnvinfer.so.10: cannot open shared object')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_tensorrt", raising=False)
    with pytest.raises(ConfigError, match=r"pip install torch-tensorrt.*libnvinfer|libnvinfer.*pip install") as e:
        CompiledExecutor("tensorrt")
    assert e.value.param == "backend"


def test_cli_tensorrt_missing_is_one_line_exit_2() -> None:
    if TRT_REASON is None or "no CUDA" in TRT_REASON:
        pytest.skip("torch-tensorrt imports here")
    r = subprocess.run([sys.executable, "-m", "cascade_sched.cli", "generate", "--executor", "compiled",
                        "--backend", "tensorrt", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backend" in lines[0] and "pip install torch-tensorrt" in lines[0], r.stderr


def test_cli_backend_needs_the_compiled_executor() -> None:
    r = subprocess.run([sys.executable, "-m", "cascade_sched.cli", "generate", "--backend", "inductor",
                        "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--backend" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_compiled_generate_matches_reference(tmp_path: Path) -> None:
    common = ["--model", "tiny", "--blocks", "2", "--timesteps", "1000", "--no-progress"]
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    cli = [sys.executable, "-m", "cascade_sched.cli", "generate"]
    assert subprocess.run([*cli, *common, "--save-latents", str(a)], timeout=120).returncode == 0
    r = subprocess.run([*cli, *common, "--executor", "compiled", "--save-latents", str(b)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "compiled executor" in r.stdout
    x, y = np.load(a)["latents"], np.load(b)["latents"]
    assert np.abs(x - y).max() <= 1e-4 * np.abs(x).max()
