"""The GPU kit's report: ``cascade-gpu-report/1``, written after every step, and the table
``cascade validate --gpu-report`` makes of it (the one docs/validation.md carries).

The file is replaced atomically (written beside it, then renamed), so a kit killed at any moment leaves the
last complete version: every finished step, and the step it was in marked ``running``::

    {
      "format": "cascade-gpu-report/1",
      "rehearsal": false,                      # true: `gpu_check.sh --rehearse` on a CPU, tiny geometries
      "card": {"name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "torch": "2.11.0+cu130",
               "cuda": "13.0", "python": "3.12.3", "host": "...", "catalog_gpu": "h100-sxm"},
      "budget_s": 540, "started": "2026-12-03 10:00 UTC", "wall_s": 512.3, "wheels": "...",
      "options": {...},                        # what the kit measured (models, grid, blocks, window)
      "steps": [
        {"id": 1, "name": "batching", "title": "...", "status": "ok",  # ok | cut | skipped | failed | running
         "why": "",                             # why a step was cut short, skipped or failed
         "estimate_s": 60, "wall_s": 41.2,
         "rows": [{"figure": "sequential FPS", "unit": "FPS", "measured": 14.1, "predicted": 16.0,
                   "note": "..."}],
         "figures": {...}},                     # everything else the step measured
        ...
      ]
    }
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cascade_sched.errors import ConfigError

__all__ = ["FORMAT", "STATUSES", "card_info", "format_gpu_table", "load_report", "write_report"]

FORMAT = "cascade-gpu-report/1"
STATUSES = ("ok", "cut", "skipped", "failed", "running")


def write_report(path: str | Path, doc: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``doc`` atomically (non-finite numbers as null)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent or "."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_finite(doc), f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def load_report(path: str) -> dict[str, Any]:
    """Read a kit report; one ConfigError (``--gpu-report``) naming what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise ConfigError("--gpu-report", f"`--gpu-report` {path!r} cannot be read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("--gpu-report", f"`--gpu-report` {path!r} is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ConfigError("--gpu-report", f"`--gpu-report` {path!r} is not a {FORMAT} file (format {got!r}); "
                                          "benchmarks/gpu_check.sh writes one as OUT/gpu-report.json")
    steps = doc.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, dict) and s.get("status") in STATUSES for s in steps):
        raise ConfigError("--gpu-report", f"`--gpu-report` {path!r}: `steps` must be a list of steps, each with a "
                                          f"status of {', '.join(STATUSES)}")
    return doc


def _driver() -> str:
    """The NVIDIA driver's version (nvidia-smi, else the kernel module's file), or why there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        words = Path("/proc/driver/nvidia/version").read_text(encoding="utf-8").split()
        return next(w for w in words if w[:1].isdigit() and "." in w)
    except (OSError, StopIteration):
        return "none (no NVIDIA driver)"


def card_info(device: str) -> dict[str, Any]:
    """Where the kit ran: the device's name, the driver, torch and CUDA versions, Python, the host."""
    import torch

    from apps.calibrate.calibrate import device_name

    cuda = device.startswith("cuda") and torch.cuda.is_available()
    return {"name": device_name(device), "driver": _driver() if cuda else "none (CPU)",
            "torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "python": platform.python_version(), "host": platform.node(), "cores": os.cpu_count() or 1,
            "argv": " ".join(sys.argv[1:])}


def now() -> str:
    """The report's timestamps: UTC, to the minute."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, (int, float)):
        return f"{v:.4g}"
    return str(v)


def _cell(text: Any) -> str:
    """Text safe in a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _error(measured: Any, predicted: Any) -> str:
    if not isinstance(measured, (int, float)) or not isinstance(predicted, (int, float)) or not measured:
        return ""
    return f"{100.0 * (predicted - measured) / measured:+.1f}"


def format_gpu_table(doc: Mapping[str, Any]) -> str:
    """The markdown table of a kit report: one row per figure (measured, predicted, error = 100 x (predicted -
    measured) / measured, the card, its driver and torch), then what each step that did not finish says."""
    card = doc.get("card", {})
    kind = "rehearsal on a CPU (tiny geometries: not figures of any GPU)" if doc.get("rehearsal") else "GPU run"
    lines = [f"{kind}: {card.get('name', '?')}, driver {card.get('driver', '?')}, torch {card.get('torch', '?')} "
             f"(CUDA {card.get('cuda', '?')}), Python {card.get('python', '?')}; {doc.get('started', '?')}; budget "
             f"{_num(doc.get('budget_s'))} s, {_num(doc.get('wall_s'))} s used", "",
             "| step | figure | measured | predicted | error % | unit | card | driver | torch | note |",
             "|---|---|---:|---:|---:|---|---|---|---|---|"]
    where = " | ".join(_cell(card.get(k, "?")) for k in ("name", "driver", "torch"))
    status_lines = []
    for step in doc.get("steps", []):
        label = f"{step.get('id')}. {step.get('name')}"
        for row in step.get("rows", []):
            lines.append(f"| {_cell(label)} | {_cell(row.get('figure', ''))} | {_num(row.get('measured'))} | "
                         f"{_num(row.get('predicted'))} | {_error(row.get('measured'), row.get('predicted'))} | "
                         f"{_cell(row.get('unit', ''))} | {where} | {_cell(row.get('note', ''))} |")
        if step.get("status") != "ok" or step.get("why"):
            status_lines.append(f"- step {label}: **{step.get('status')}**"
                                + (f": {step['why']}" if step.get("why") else ""))
    if status_lines:
        lines += ["", *status_lines]
    return "\n".join(lines)
