"""The eager tick of two revisions side by side: `bench_model.py`'s scenarios (seq-0, seq-3, gang-5), each
revision timed by its own code in alternating subprocesses, so load from other processes hits both alike.

Run:  .venv/bin/python benchmarks/bench_revisions.py BASE [OTHER] [--models tiny,small] [--rounds 4]

BASE and OTHER are git revisions (extracted with `git archive` into a temporary folder); OTHER defaults
to the working tree as it is. Prints, per model and scenario, the best and median milliseconds per tick
over the rounds (each round's figure is bench_model's median of repeats) and OTHER / BASE. Both run in
this interpreter, single-threaded. Prints figures only; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPEATS = {"tiny": 300, "small": 20}  # the tiny tick is ~1 ms, so more repeats


def child(root: str, models: list[str]) -> None:
    """Time every scenario of `root`'s bench_model with `root`'s model code; print JSON."""
    sys.path[:0] = [root, f"{root}/benchmarks"]
    import bench_model
    import torch

    from models import CausalWanDiT, get_config, text_embedding

    torch.set_num_threads(1)
    out = {}
    for name in models:
        cfg = get_config(name)
        model = CausalWanDiT(cfg)
        model.register_prompt("p", text_embedding("a fox running through snow", cfg))
        for scenario, (tasks, kv) in bench_model._scenarios(model).items():
            out[f"{name}/{scenario}"] = bench_model._time(lambda t=tasks, k=kv, m=model: m.forward_tick(t, k),
                                                          REPEATS.get(name, 20))
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("other", nargs="?", default=None, help="a revision (default: the working tree)")
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    models = args.models.split(",")
    if args.child:
        child(args.child, models)
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, str] = {}
        for label, rev in (("base", args.base), ("other", args.other)):
            if rev is None:
                trees[f"{label} (working tree)"] = str(ROOT)
                continue
            dest = Path(tmp) / label
            dest.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
            trees[f"{label} ({rev})"] = str(dest)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                r = subprocess.run([sys.executable, __file__, args.base, "--models", args.models, "--child", tree],
                                   capture_output=True, text=True, check=True)
                runs[label].append(json.loads(r.stdout.strip().splitlines()[-1]))
    (base_label, base), (other_label, other) = runs.items()
    print(f"{base_label} vs {other_label}: {args.rounds} alternating rounds, 1 thread, ms per tick")
    for scenario in base[0]:
        b = [r[scenario] * 1e3 for r in base]
        o = [r[scenario] * 1e3 for r in other]
        print(f"  {scenario:<13} base best {min(b):8.3f} median {statistics.median(b):8.3f}   "
              f"other best {min(o):8.3f} median {statistics.median(o):8.3f}   "
              f"other/base best {min(o) / min(b):.3f} median {statistics.median(o) / statistics.median(b):.3f}")


if __name__ == "__main__":
    main()
