"""The stall at a prompt switch, measured on this machine and predicted by the simulator (never a timed test).

Two runs of the ``small`` model on the CPU, one thread, the same window and sink (LongLive-like), one prompt
switch at block ``--switch-at``:

- *baseline*: the sequential schedule (lag = S) with switch policy ``recache``: before the switching
  block's first stage one recache task re-encodes the committed KV of its window under the new prompt;
- *cascade*: the fully parallel cascade (lag 1) with switch policy ``none``: in-flight blocks simply take
  the new prompt at their next stage.

Both on one device (the reference executor) and, with ``--ranks 2``, the cascade also on two gloo ranks
(the distributed executor). For each run: the per-block denoise-finish times (``RunResult.block_done_s``,
median of ``--repeats`` runs after one warm-up) and the stall at the switch by
``cascade_sched.metrics.switch_stalls`` (median over the repeats); predicted: the simulator with a profile
of this machine (``apps.calibrate.calibrate``, written to ``--profile`` and reused when it exists). Prints the
table of docs/interactive.md and draws the timeline to ``--png``.

    python benchmarks/bench_switch.py [--blocks 12] [--switch-at 6] [--window 4] [--sink 1] [--repeats 3]
                                      [--ranks 2] [--profile /tmp/switch-profile.json] [--png PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch

from cascade_sched import CascadeSpec, build_schedule
from cascade_sched.metrics import switch_stalls
from cascade_sched.schedule import Schedule

PROMPT, NEW_PROMPT = "a red ball bouncing on a wooden floor", "a blue cube spinning in the rain"
MODEL = "small"


def specs(args: argparse.Namespace) -> dict[str, CascadeSpec]:
    common: dict[str, Any] = {"num_blocks": args.blocks, "window": args.window, "sink": args.sink,
                              "switches": ((args.switch_at, 1),)}
    out = {
        "baseline: sequential + recache, 1 device": CascadeSpec(lag=None, switch_policy="recache", **common),
        "cascade: lag 1 + none, 1 device": CascadeSpec(lag=1, switch_policy="none", **common),
    }
    if args.ranks > 1:
        out[f"cascade: lag 1 + none, {args.ranks} ranks"] = CascadeSpec(
            lag=1, switch_policy="none", num_devices=args.ranks, **common)
    return out


def options() -> Any:
    from executors.base import RunOptions

    return RunOptions(prompt=PROMPT, prompts={1: NEW_PROMPT}, timeout_s=300.0)


def _model() -> Any:
    from models import CausalWanDiT, get_config

    return CausalWanDiT(get_config(MODEL), seed=0)


def _rank_fn(payload: dict[str, Any], rank: int, world: int) -> list[list[float]] | None:
    """Rank function of :func:`run_distributed` (module level, so spawned ranks find it)."""
    from executors.distributed import DistributedExecutor

    schedule = build_schedule(CascadeSpec.from_dict(payload["spec"]))
    model = _model()
    out = []
    with torch.inference_mode():
        for i in range(payload["repeats"] + 1):
            r = DistributedExecutor().run(schedule, model, options())
            if i:
                out.append(list(r.block_done_s))
    return out if rank == 0 else None


def run_distributed(schedule: Schedule, repeats: int) -> list[list[float]]:
    from executors.launch import spawn

    payload = {"spec": schedule.spec.to_dict(), "repeats": repeats}
    result = spawn(_rank_fn, payload, schedule.num_devices, "cpu", 600.0, threads=1)
    if not isinstance(result, list):
        raise RuntimeError("rank 0 returned no timings")
    return result


def get_profile(args: argparse.Namespace) -> Any:
    """The profile of this machine: loaded from ``--profile`` when it exists, else calibrated and saved."""
    from simulator.profile import Profile

    if os.path.exists(args.profile) and not args.recalibrate:
        prof = Profile.load(args.profile)
        if args.ranks > 1 and prof.link_fit is None:
            print(f"{args.profile} has no link fit; recalibrating with the link", file=sys.stderr)
        else:
            return prof
    import datetime
    import platform

    from apps.calibrate.calibrate import measure_link, profile_decode, profile_forward, profile_sampler
    from simulator.profile import ForwardPoint

    # The machine is shared: a shape measured while a neighbour's job runs is slow for seconds. So every
    # shape is measured in ``--calib-rounds`` round-robin passes and the median over the passes is kept.
    t0 = time.perf_counter()
    model = _model()
    ctx = (1, 3, args.sink + args.window)
    passes: dict[tuple[int, int], list[float]] = {}
    for i in range(args.calib_rounds):
        for pt in profile_forward(model, (1, 2, 3, 4, 5), ctx, warmup=1, repeats=3):
            passes.setdefault((pt.batch, pt.context_tokens), []).append(pt.seconds)
        print(f"  calibrate: pass {i + 1} of {args.calib_rounds} done", file=sys.stderr)
    q = model.config.tokens_per_block
    points = tuple(ForwardPoint(n, q, c, statistics.median(v), len(v) * 3) for (n, c), v in sorted(passes.items()))
    sample_s, _ = profile_sampler(model)
    first_s, rest_s = profile_decode(model)
    link = None
    if args.ranks > 1:
        ex = measure_link("cpu", "float32")["exchange"]
        link = (ex.latency_s, ex.bandwidth_Bps)
    prof = Profile(model=MODEL, forward=points, sample_s_per_task=sample_s, decode_s_per_block=rest_s,
                   decode_first_block_s=first_s, link_fit=link,
                   provenance={"device": f"cpu ({platform.machine()}, {os.cpu_count()} cores, shared)",
                               "torch": torch.__version__, "dtype": "float32", "threads": 1,
                               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                               "statistic": f"median over {args.calib_rounds} round-robin passes of a median of 3",
                               "notes": "benchmarks/bench_switch.py"})
    prof.save(args.profile)
    print(f"calibrated in {time.perf_counter() - t0:.0f} s, wrote {args.profile}", file=sys.stderr)
    return prof


def predict(schedule: Schedule, profile: Any) -> list[float]:
    """Predicted per-block denoise-finish times: the simulator with the profile (no decoding: the runs
    do not decode), the profile's fitted link between ranks."""
    from simulator import Cluster, simulate
    from simulator.catalog import get_gpu, get_link
    from simulator.profile import ProfileCost

    prof = dataclasses.replace(profile, decode_s_per_block=0.0, decode_first_block_s=0.0)
    link = prof.link() or get_link("ideal")
    cluster = Cluster(get_gpu("h100-sxm"), schedule.num_devices, 8, link, link)  # the GPU only names memory
    r = simulate(schedule, cluster, ProfileCost(prof), MODEL, check_memory=False)
    return list(r.block_denoised_s)


def stall(times: list[float], schedule: Schedule) -> Any:
    (s,) = switch_stalls(times, None, [at for at, _ in schedule.spec.switches],
                         max_in_flight=schedule.max_in_flight(), window=schedule.spec.window)
    return s


def draw(rows: list[dict[str, Any]], at: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
    cmap = plt.get_cmap("tab10")
    for i, row in enumerate(rows):
        c = cmap(i)
        meas, pred = row["measured_s"], row["predicted_s"]
        blocks = list(range(len(meas)))
        ax0.plot(blocks, meas, "o", color=c, label=f"{row['run']} (measured)")
        ax0.plot(blocks, pred, "-", color=c, alpha=0.7, label="predicted")
        gaps_m = [1e3 * (meas[b] - meas[b - 1]) for b in blocks[1:]]
        gaps_p = [1e3 * (pred[b] - pred[b - 1]) for b in blocks[1:]]
        ax1.plot(blocks[1:], gaps_m, "o", color=c)
        ax1.plot(blocks[1:], gaps_p, "-", color=c, alpha=0.7)
    for ax in (ax0, ax1):
        ax.axvline(at, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
    ax0.text(at, ax0.get_ylim()[1] * 0.95, f" switch at block {at}", va="top", fontsize=8)
    ax0.set_ylabel("block denoised (s from start)")
    ax0.set_title("per-block finish times: dots measured, lines predicted", fontsize=9)
    ax1.set_ylabel("interval from the previous block (ms)")
    ax1.set_title("inter-block interval: the recache stall is the spike at the switch", fontsize=9)
    ax0.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"prompt switch, `{MODEL}` model on CPU (1 thread per rank)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--switch-at", type=int, default=6)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--sink", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=0, help="also run the cascade on this many gloo ranks (0: no)")
    ap.add_argument("--profile", default="/tmp/cascade-switch-profile.json")
    ap.add_argument("--recalibrate", action="store_true")
    ap.add_argument("--calib-rounds", type=int, default=3, help="round-robin calibration passes (median)")
    ap.add_argument("--png", default="docs/img/switch_timeline.png")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    profile = get_profile(args)
    runs: dict[str, list[list[float]]] = {}
    schedules = {name: build_schedule(spec) for name, spec in specs(args).items()}
    local = {name: s for name, s in schedules.items() if s.num_devices == 1}
    with torch.inference_mode():  # one warm-up each, then the repeats interleaved: load drift hits all alike
        from executors.reference import ReferenceExecutor

        model = _model()
        for i in range(args.repeats + 1):
            for name, sched in local.items():
                r = ReferenceExecutor().run(sched, model, options())
                if i:
                    runs.setdefault(name, []).append(list(r.block_done_s))
    for name, sched in schedules.items():
        if sched.num_devices > 1:
            runs[name] = run_distributed(sched, args.repeats)
    rows = []
    for name, schedule in schedules.items():
        spec = schedule.spec
        measured = [statistics.median(r[b] for r in runs[name]) for b in range(spec.num_blocks)]
        stalls = [stall(r, schedule) for r in runs[name]]
        predicted = predict(schedule, profile)
        p = stall(predicted, schedule)
        rows.append({
            "run": name, "spec": spec.to_dict(), "measured_s": measured, "predicted_s": predicted,
            "measured_stall_s": statistics.median(s.stall_s for s in stalls),
            "measured_steady_s": statistics.median(s.steady_s for s in stalls),
            "measured_interval_s": statistics.median(s.interval_s for s in stalls),
            "predicted_stall_s": p.stall_s, "predicted_steady_s": p.steady_s, "predicted_interval_s": p.interval_s,
            "repeats": [[round(x, 5) for x in r] for r in runs[name]],
        })
    print(f"model {MODEL} on CPU, 1 thread per rank; {args.blocks} blocks, switch at block {args.switch_at}, "
          f"window {args.window}, sink {args.sink}; median of {args.repeats} runs after a warm-up; "
          f"profile {args.profile}")
    head = (f"| {'run':<40} | measured stall ms | predicted stall ms | measured steady ms | "
            f"predicted steady ms | measured worst ms | predicted worst ms |")
    print(head)
    print("|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|")
    for row in rows:
        print(f"| {row['run']:<40} | {row['measured_stall_s'] * 1e3:>17.1f} | "
              f"{row['predicted_stall_s'] * 1e3:>18.1f} | {row['measured_steady_s'] * 1e3:>18.1f} | "
              f"{row['predicted_steady_s'] * 1e3:>19.1f} | {row['measured_interval_s'] * 1e3:>17.1f} | "
              f"{row['predicted_interval_s'] * 1e3:>18.1f} |")
    draw(rows, args.switch_at, args.png)
    print(f"wrote {args.png}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "profile": profile.to_dict(), "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
