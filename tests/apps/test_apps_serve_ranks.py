"""``cascade serve`` on N ranks: switches and early ends agreed by every rank, under spawn and torchrun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from apps.request import ModelSource, RunRequest
from apps.serve.stream import Control, StreamHook, SwitchRequest
from cascade_sched import CascadeSpec, build_schedule
from executors.base import RunOptions
from executors.distributed import DistributedExecutor
from executors.feed import Stream, StreamView
from executors.launch import spawn
from executors.reference import ReferenceExecutor
from tests.executors.exec_support import tiny_model

ROOT = Path(__file__).resolve().parents[2]

# (spec, {tick: prompt text arriving then}, tick after which the stream is told to end)
SCRIPT = {2: "a blue cube spinning", 6: "a green field at dusk", 7: "waves on a beach", 9: "a blue cube spinning",
          14: "waves on a beach"}


def _cases() -> list[tuple[dict[str, Any], int]]:
    cases = []
    for policy in ("none", "recache"):
        for lag, attention in ((1, "causal"), (1, "bidirectional"), (2, "stale"), (5, "causal")):
            spec = CascadeSpec(num_blocks=1, lag=lag, attention=attention, window=3, sink=1, num_devices=2,
                               switch_policy=policy)
            cases.append((spec.to_dict(), 8 * lag + 2))  # block 8 has started
    spec = CascadeSpec(num_blocks=1, lag=2, window=3, sink=1, num_devices=2, placement="stage",
                       switch_policy="recache")
    cases.append((spec.to_dict(), 14))
    for attention, policy in (("causal", "none"), ("bidirectional", "recache"), ("stage", "none")):  # a layer ring
        spec = CascadeSpec(num_blocks=1, lag=1, attention=attention, window=3, sink=1, num_devices=2,
                           placement="layers", stage_stride=2, num_layers=2, switch_policy=policy)
        cases.append((spec.to_dict(), 10))
    return cases


def scripted_hook(stream: Stream, options: RunOptions, end_at: int,
                  applied: list[tuple[int, int]]) -> StreamHook:
    """The server's own hook, fed by a script instead of websocket clients; ``applied`` gets (block, prompt
    id) of every switch it declares."""
    control = Control(lead_blocks=10**6)

    def on_tick(tick: int, _: StreamView) -> None:
        if tick in SCRIPT:
            control.ask(SwitchRequest(tick, SCRIPT[tick], 0.0, -1))
        if tick == end_at:
            control.stop("scripted end")

    hook: StreamHook

    def report(request: SwitchRequest, at: int | None, why: str) -> None:
        if at is not None:
            pid = hook.book.id_for(request.prompt)[0]
            applied[:] = [sw for sw in applied if sw[0] != at] + [(at, pid)]

    hook = StreamHook(stream, options, control, report, on_tick)
    return hook


def run_scripted_on_rank(cases: list[tuple[dict[str, Any], int]], rank: int, world: int) -> list[Any]:
    torch.set_num_threads(1)
    model, out = tiny_model(), []
    for spec, end_at in cases:
        stream = Stream(CascadeSpec.from_dict(spec), max_blocks=40)
        options, applied = RunOptions(prompts={}), []
        hook = scripted_hook(stream, options, end_at, applied) if rank == 0 else None
        result = DistributedExecutor(extendable=True).run(stream, model, options, hook=hook)
        out.append((result.blocks, applied, dict(options.prompts), result.stacked().numpy())
                   if hook is not None else None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world", [2])
def test_switches_and_an_early_end_on_n_ranks_equal_the_final_schedule_run_whole(world: int) -> None:
    cases = _cases()
    got = spawn(run_scripted_on_rank, cases, world, timeout_s=60, threads=1)
    model = tiny_model()
    for (spec, end_at), (blocks, applied, prompts, latents) in zip(cases, got, strict=True):
        final_spec = CascadeSpec.from_dict(spec).replace(num_blocks=blocks, switches=tuple(applied))
        assert len(final_spec.switches) >= 2 and blocks < 40, (spec, final_spec)
        whole = ReferenceExecutor().run(build_schedule(final_spec), model, RunOptions(prompts=prompts))
        assert torch.allclose(torch.from_numpy(latents), whole.stacked(), rtol=1e-5, atol=1e-6), (spec, end_at)


def _torchrun(*flags: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "cascade_sched.cli", "serve", "--executor", "distributed", "--devices", "2", "--model", "tiny",
         "--lag", "1", "--window", "4", "--sink", "1", "--port", "0", "--fps", "60", "--max-blocks", "14", *flags],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True)


def _address(proc: subprocess.Popen[str]) -> tuple[str, list[str]]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on http://([\d.]+:\d+)/", line)
        if m:
            return m.group(1), lines
    raise AssertionError("the server did not start:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.stderr is not None
    return proc.stderr.read()


RING = {"placement": "layers", "stage_stride": 2, "num_layers": 2}  # tiny's two layers on a ring of two ranks


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "ring"), [("none", False), ("recache", False), ("recache", True)])
def test_torchrun_serves_from_rank_0_and_a_prompt_reaches_every_rank_at_the_same_block(policy: str,
                                                                                       ring: bool) -> None:
    from serve_support import StreamClient, offline_frames

    # A recache stream declares the blocks whose commit stage a recache task may precede before it builds a
    # block (cascade_sched.rolling): on a ring of stride 2 that is 8 ticks ahead, so the stream is longer.
    blocks = 30 if ring else 14
    proc = _torchrun("--switch-policy", policy, "--max-blocks", str(blocks),
                     *(["--placement", "layers", "--stage-stride", "2"] if ring else []))
    try:
        address, _ = _address(proc)
        c = StreamClient(address)
        c.pump(lambda c: c.block >= 0, timeout=60)
        c.send({"prompt": "a blue cube spinning"})
        c.pump(lambda c: c.closed is not None, timeout=120)
        d = StreamClient(address)  # the next session starts a clean stream on both ranks
        d.pump(lambda c: len(c.frame_times) >= 12, timeout=60)
        d.close()
        import httpx

        health = httpx.get(f"http://{address}/healthz", timeout=10).json()
    finally:
        _stop(proc)
    hello, (switch,) = c.of("hello")[0], c.of("switch")
    assert hello["executor"] == "distributed" and hello["devices"] == 2 and switch["applied"]
    job = RunRequest(spec=CascadeSpec(num_blocks=blocks, lag=1, window=4, sink=1, num_devices=2,
                                      **(RING if ring else {})), source=ModelSource(model="tiny"))
    expected = offline_frames(job, hello["prompt"], policy, [(switch["at_block"], "a blue cube spinning")], blocks)
    assert [c.frames[b] for b in range(blocks)] == expected
    assert d.of("hello")[0]["stream"] == 1 and health["alive"] and health["devices"] == 2


@pytest.mark.slow
def test_a_rank_that_dies_ends_the_session_with_one_error_and_the_server_exits_with_the_reason() -> None:
    proc = _torchrun("--fail-at", "1:7", "--max-blocks", "40")
    try:
        address, _ = _address(proc)
        from serve_support import StreamClient

        c = StreamClient(address)
        c.pump(lambda c: c.closed is not None, timeout=120)
        proc.wait(timeout=60)
    finally:
        err = _stop(proc)
    errors = c.of("error")
    assert len(errors) == 1 and errors[0]["code"] == "rank_failed", c.messages
    assert "rank 1 failed at tick 7" in errors[0]["message"]
    # Rank 0 stops on the abort key or on torchrun's SIGTERM, whichever comes first; either way it says so.
    assert proc.returncode != 0 and "rank 1 failed at tick 7" in err and "rank 0: stopping:" in err, err
    assert not [m for m in c.messages if m["type"] == "end"] and json.dumps(errors[0])


@pytest.mark.slow
def test_a_rank_killed_mid_stream_ends_the_session_with_one_message_and_the_next_starts_a_fresh_group() -> None:
    """Ten times: a spawned rank killed (SIGKILL) mid-stream; the client gets one error, the server replaces
    the group for the next stream and leaks no process, port or shared memory."""
    from serve_soak import children, listening_ports, serving
    from serve_support import StreamClient

    shm = set(os.listdir("/dev/shm"))
    with serving("--executor", "distributed", "--devices", "2", "--model", "tiny", "--lag", "1", "--window", "4",
                 "--sink", "1", "--fps", "60", "--idle-timeout", "0") as server:
        http = int(server.address.rsplit(":", 1)[1])

        def ranks() -> list[int]:
            return [p for p, cmd in children(server.proc.pid).items() if "executors.spawned" in cmd]

        seen: set[int] = set()
        for _ in range(10):
            c = StreamClient(server.address)
            c.pump(lambda c: c.block >= 2, timeout=120)
            (rank,) = ranks()
            assert rank not in seen  # a fresh group: a new process
            seen.add(rank)
            assert listening_ports(server.proc.pid) > {http}  # the page, the group's store and gloo's
            os.kill(rank, signal.SIGKILL)
            c.pump(lambda c: c.closed is not None, timeout=120)
            (error,) = [m for m in c.messages if m["type"] in ("error", "end")]
            assert error["type"] == "error" and error["code"] == "rank_failed", c.messages
            assert error["message"].startswith("rank 1 was killed by SIGKILL"), error
            assert c.closed == 1011
            assert ranks() == [] and listening_ports(server.proc.pid) == {http}  # reaped; the store closed
        d = StreamClient(server.address)  # and the next session streams on a fresh group
        d.pump(lambda c: len(c.frame_times) >= 24, timeout=120)
        d.close()
        status, said = server.stop()
    assert status == 130 and said.strip().splitlines()[-1] == "cascade serve: interrupted (SIGINT)", said
    assert not [line for line in said.splitlines() if "Traceback" in line], said
    assert all(not Path(f"/proc/{p}").exists() for p in seen)
    assert set(os.listdir("/dev/shm")) <= shm
