"""Fuzz every subcommand from its own parser: any argument list exits 0 or 2, a refusal is one line on
stderr with no traceback, and a refusal leaves no file behind.

Each example builds an argument list by walking the subcommand's ``parser._actions``: for each flag picked,
a value of its kind (valid, out of range, wrong type, an unwritable or missing path, a directory, a wrong
extension, a binary or malformed input file). It runs in-process through ``apps.cli.main`` in a
fresh folder holding the input files.

Time is bounded two ways. Cheap sizes come first on every command line (``CHEAP``; a fuzzed flag given
later wins, argparse keeps the last), and the fuzzed integers are small or far out of range. Work that
is long whatever the sizes (calibration, the validation matrix, a server that runs until stopped, ranks
and compilation, a model with billions of weights) is replaced by :class:`ReachedWork`: reaching it means
every flag was accepted before any work began, which is what this test asks of a refusal.

``HYPOTHESIS_PROFILE=thorough`` runs many more examples (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from apps.cli import build_parser, main
from cascade_sched import bounds

PARSER, _ = build_parser()
SUBCOMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices

# Small sizes first; a fuzzed flag later on the line overrides them.
CHEAP: dict[str, list[str]] = {
    "schedule": ["--blocks", "3"],
    "simulate": ["--blocks", "3"],
    "plan": [
        "--blocks",
        "3",
        "--gpu-counts",
        "1,2",
        "--lag",
        "1",
        "--attention",
        "causal",
        "--decode",
        "inline",
        "--model",
        "wan2.1-1.3b",
    ],
    "generate": ["--blocks", "2", "--no-progress", "--model", "toy", "--out", "v.gif"],
    "calibrate": ["--model", "tiny"],
    "validate": ["--model", "tiny", "--blocks", "3", "--quiet-wait", "0"],
    "quality": ["--seeds", "1", "--blocks", "2", "--lag", "1", "--attention", "causal", "--no-progress"],
    "serve": [],
    "make-tiny-folder": ["tiny"],
}
SKIP = {"help", "fail_at", "interactive"}  # --interactive reads the terminal: tests/executors covers it

OUTPUTS = {
    "png",
    "trace",
    "gantt",
    "intervals",
    "out",
    "save_latents",
    "engine_cache",
    "traces",
    "save_profile",
    "frames",
    "save_text_embeddings",
}
INPUTS = {
    "prompts",
    "profile",
    "checkpoint",
    "lora",
    "text_encoder",
    "text_embeddings",
    "vae",
    "model_dir",
    "cost",
}


class ReachedWork(Exception):
    """Raised where a long run would start: every flag was accepted before it."""


def _stop(*_: Any, **__: Any) -> Any:
    raise ReachedWork


@pytest.fixture(scope="module")
def long_work_stops() -> Any:
    """Replace the work that is long at any size (see the module docstring)."""
    import apps.generate.run as generate

    mp = pytest.MonkeyPatch()
    real_run = generate.run_generate

    def run_generate(job: Any, notes: tuple[str, ...] = ()) -> Any:
        if job.executor != "reference" or job.source.checkpoint or job.source.model not in ("toy", "tiny"):
            raise ReachedWork
        return real_run(job, notes)

    mp.setattr(generate, "run_generate", run_generate)
    for target in (
        "apps.calibrate.calibrate.calibrate",
        "apps.calibrate.gpu_kit.run_kit",
        "apps.calibrate.matrix.run_matrix",
        "apps.serve.app.serve",
        "apps.tiny_folder.write_tiny_folder",
        "apps.serve.group.LocalGroup",
        "executors.launch.run_rank",
    ):
        mp.setattr(target, _stop)
    yield
    mp.undo()


def _fixtures(root: Path) -> None:
    """The input files an example may name: binary, malformed and well-formed."""
    (root / "bin.yaml").write_bytes(b"\x00\xff\xfe binary")
    (root / "bad.json").write_text("{not json", encoding="utf-8")
    (root / "bad.yaml").write_text("a: [1", encoding="utf-8")
    (root / "story.yaml").write_text("- {at_block: 1, prompt: a blue ball}\n", encoding="utf-8")
    (root / "exists.json").write_text("{}", encoding="utf-8")


def _ints() -> st.SearchStrategy[str]:
    return st.sampled_from(
        ["-1", "0", "1", "2", "3", "7", "1000000000", "99999999999999999999", "x", "1.5", ""]
    )


def _floats() -> st.SearchStrategy[str]:
    return st.sampled_from(["-1", "0", "0.5", "1", "2", "nan", "inf", "-inf", "1e30", "x", ""])


def _lists() -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            "1",
            "1,2",
            "0",
            "1-3",
            "5-1",
            "1-100000",
            "a,b",
            "",
            ",",
            "causal",
            "causal,stale",
            "foo",
            "inline",
            "1000,500",
            "500,1000",
            "1:1",
            "2:1.5",
            "x:y",
            "-3",
        ]
    )


def _outputs() -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            "o.png",
            "o.json",
            "o.mp4",
            "o.gif",
            "o.npz",
            "o.safetensors",
            "o.txt",
            "odir",
            "missing/o.json",
            "missing/o.png",
            "exists.json/o.png",
            ".",
            "",
            "bad\x00.json",
        ]
    )


def _inputs() -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            "bin.yaml",
            "bad.json",
            "bad.yaml",
            "story.yaml",
            "missing.json",
            ".",
            "stand-in",
            "profile:bad.json",
            "profile:missing.json",
            "uniform:0.01",
            "roofline",
            "",
            "a\x00b",
        ]
    )


def _names() -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            "toy",
            "tiny",
            "foo",
            "",
            "cpu",
            "cuda",
            "tpu",
            "cuda:x",
            "wan2.1-1.3b",
            "wan2.1-14b",
            "h100-sxm",
            "x100",
            "nvlink4",
            "causal",
            "stale",
            "recache",
            "none",
            "block",
            "stage",
            "inline",
            "gpu",
            "float64",
            "float16",
            "self-forcing",
            "nope",
            "0",
            "a\x00b",
        ]
    )


def _value(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    flag = st.sampled_from(action.option_strings)
    if action.nargs == 0:
        return flag.map(lambda f: [f])
    if action.choices:
        values: st.SearchStrategy[str] = st.sampled_from([*map(str, action.choices), "bogus"])
    elif action.type is int:
        values = _ints()
    elif action.type is float:
        values = _floats()
    elif action.type is not None:
        values = _lists()
    elif action.dest in OUTPUTS:
        values = _outputs()
    elif action.dest in INPUTS:
        values = _inputs()
    else:
        values = _names()
    return st.tuples(flag, values).map(list)


def _argv(command: str) -> st.SearchStrategy[list[str]]:
    actions = [a for a in SUBCOMMANDS[command]._actions if a.option_strings and a.dest not in SKIP]
    picks = st.lists(st.sampled_from(actions), min_size=1, max_size=4, unique_by=id)
    return picks.flatmap(lambda chosen: st.tuples(*map(_value, chosen))).map(
        lambda parts: [command, *CHEAP[command], *(x for part in parts for x in part)]
    )


def _run(argv: list[str]) -> tuple[int | str, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code: int | str = main(argv)
        except SystemExit as e:  # argparse: --help, --version and its own one-line errors
            code = e.code if isinstance(e.code, int) else 2
        except ReachedWork:
            code = "work"
    return code, err.getvalue()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_argument_list_is_run_or_refused_in_one_line(
    command: str, data: st.DataObject, long_work_stops: None
) -> None:
    argv = data.draw(_argv(command), label="argv")
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _fixtures(root)
        before = _files(root)
        os.chdir(root)
        try:
            code, err = _run(argv)
        finally:
            os.chdir(home)
        event(f"exit {code}")
        assert "Traceback" not in err, err
        assert code in (0, 2, "work"), (code, err)
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].strip(), err
            assert _files(root) == before, f"a refusal left files: {sorted(_files(root) - before)}"


def test_cheap_prefixes_are_accepted(long_work_stops: None) -> None:
    """The cheap sizes are valid on their own, so a refusal in the fuzz is the fuzzed flag's doing."""
    for command, cheap in CHEAP.items():
        with tempfile.TemporaryDirectory() as tmp:
            home = os.getcwd()
            os.chdir(tmp)
            try:
                code, err = _run([command, *cheap])
            finally:
                os.chdir(home)
        assert code in (0, "work"), (command, err)


def test_huge_sizes_are_refused_at_once() -> None:
    """The issue's unbounded requests: each refused in one line, before any work (so within a second)."""
    import time

    for argv in (
        ["schedule", "--blocks", "100000000"],
        ["simulate", "--blocks", "2000000"],
        ["plan", "--gpu-counts", "1-100000"],
        ["quality", "--seeds", "100000000"],
        ["schedule", "--blocks", "20000", "--window", "0"],
    ):
        t0 = time.perf_counter()
        code, err = _run(argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
        assert time.perf_counter() - t0 < 5, argv
    assert bounds.MAX_BLOCKS * 5 * bounds.TASK_S < bounds.WORK_BUDGET_S  # the ceiling itself is finishable
