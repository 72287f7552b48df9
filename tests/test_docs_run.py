"""The docs cannot drift: every ``cascade`` command in the README's Commands block and in any fenced block of
docs/*.md runs (or, where it cannot run here, parses), and docs/schedule-format.md documents every field the
code writes.

The rule for running a documented command small: the command runs as written, in-process, in a fresh
folder per document (holding ``examples/``, so ``--prompts examples/story.yaml`` resolves, and the
folders its relative output paths name), in the document's order (so ``calibrate --out calib.json``
feeds a later ``--profile calib.json``), with ``SMALL[subcommand]`` appended (the test models shrink to
``tiny`` for calibrate and validate). argparse keeps the last
value of a flag, so the appended sizes win and everything else is the document's. ``> FILE`` writes stdout
to FILE; ``&&`` chains.

A command is only parsed (its flags must all exist and take the values shown; a placeholder
in capitals stands for 1) when it cannot finish here:
``serve`` (a server runs until stopped), ``--interactive`` (reads a terminal), torchrun, several ranks or
compilation (``--executor distributed|compiled``, tested in tests/executors), CUDA or TensorRT, published
weights (``--preset``, and ``--checkpoint``, ``--model-dir``, ``--vae``, ``--text-encoder``, ``--lora``
naming a path that is not there: a folder ``cascade make-tiny-folder`` wrote earlier in the document is,
and its commands run), and placeholders in capitals (``--window W``).

Words cannot drift either: every ``--flag`` the README, the docs and the examples name is one of a
``cascade`` subcommand's, of the project's own scripts (``python -m apps.toy``, ``benchmarks/``), or of a
named outside tool; and every example does what its comment says (its command runs, and the frames show
what the comment promises).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from apps.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SMALL: dict[str, list[str]] = {
    "schedule": [],
    "simulate": ["--blocks", "8"],
    "plan": ["--gpu-counts", "1,2", "--blocks", "8", "--decode", "inline"],
    "generate": ["--no-progress"],
    "calibrate": [
        "--model",
        "tiny",
        "--batches",
        "1-5",
        "--context-blocks",
        "1,4",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--no-link",
    ],
    "validate": [
        "--model",
        "tiny",
        "--blocks",
        "4",
        "--window",
        "2",
        "--lag",
        "1",
        "--attention",
        "causal",
        "--worlds",
        "1",
        "--repeats",
        "1",
        "--quiet-wait",
        "0",
    ],
    "quality": ["--seeds", "1", "--blocks", "2", "--no-progress"],
    "serve": [],
    "make-tiny-folder": [],
}
EXTERNAL = ("--preset", "--interactive")  # published weights; a terminal
PATHS = ("--checkpoint", "--model-dir", "--vae", "--text-encoder", "--lora")  # run when the path is there
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(\.[a-z]+)?$|^DIR$")


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```([a-z]*)\n(.*?)^```", text, flags=re.S | re.M)


def _commands(block: tuple[str, str]) -> list[str]:
    """Each ``cascade ...`` (or ``torchrun ... cascade_sched.cli ...``) command of a block, continuation
    lines joined, comments dropped; in a ``console`` block only the lines after a ``$`` prompt (the rest is
    output)."""
    language, body = block
    out: list[str] = []
    joined = re.sub(r"\\\n\s*", " ", body)
    for line in joined.splitlines():
        line = line.strip()
        if language == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:].strip()
        if line.startswith("cascade ") or (line.startswith("torchrun ") and "cascade_sched.cli" in line):
            out.append(line.split(" #", 1)[0].strip())
    return out


def _documented() -> list[tuple[str, list[str]]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = readme.split("## Commands", 1)[1]
    docs = [("README.md", _commands(_blocks(commands)[0]))]
    for path in sorted((ROOT / "docs").glob("*.md")):
        found = [c for b in _blocks(path.read_text(encoding="utf-8")) for c in _commands(b)]
        if found:
            docs.append((f"docs/{path.name}", found))
    return docs


DOCUMENTED = _documented()


def _parse_only(argv: list[str]) -> bool:
    return (
        argv[0] == "torchrun"
        or argv[1] == "serve"
        or any(a in EXTERNAL for a in argv)
        or any(a in PATHS and not Path(b).exists() for a, b in itertools.pairwise(argv))
        or (argv[1] == "make-tiny-folder" and importlib.util.find_spec("diffusers") is None)
        or any(a in ("distributed", "compiled", "tensorrt") or a.startswith("cuda") for a in argv)
        or any(PLACEHOLDER.match(a) for a in argv)
    )


def _run(line: str, folder: Path) -> None:
    for part in line.split(" && "):
        words = shlex.split(re.sub(r"(?<=\s)\.\.\.(?=\s|$)", "", part))  # "--devices 8 ...": and the rest
        out = None
        if ">" in words:
            i = words.index(">")
            words, out = words[:i], words[i + 1]
        if _parse_only(words):
            argv = words[words.index("cascade_sched.cli") + 1 :] if words[0] == "torchrun" else words[1:]
            argv = ["1" if PLACEHOLDER.match(a) and a.isupper() else a for a in argv]  # --window W
            parser, _ = build_parser()
            parser.parse_args(argv)  # argparse exits 2 on a flag that does not exist or a bad value
            continue
        argv = [*words[1:], *SMALL[words[1]]]
        for arg in argv:
            if "/" in arg and not arg.startswith(("/", "-", "examples/")) and ":" not in arg:
                (folder / arg).parent.mkdir(parents=True, exist_ok=True)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
        assert code == 0, f"{part!r} (run as {argv}) exited {code}: {stderr.getvalue()[-2000:]}"
        if out:
            (folder / out).write_text(stdout.getvalue(), encoding="utf-8")


def _profile(folder: Path) -> None:
    """A calib.json for documents that read one before any command of theirs writes it."""
    from simulator.profile import ForwardPoint, Profile

    points = [ForwardPoint(n, 12, c, 0.001 * n + 1e-5 * c) for n in range(1, 6) for c in (12, 48, 96)]
    Profile(
        "tiny",
        tuple(points),
        1e-4,
        2e-3,
        None,
        (5e-5, 2e9),
        {"device": "cpu", "torch": "2.11", "dtype": "float32", "threads": 1, "date": "2025-11-25"},
    ).save(str(folder / "calib.json"))


@pytest.mark.slow
@pytest.mark.parametrize(("doc", "commands"), DOCUMENTED, ids=[d for d, _ in DOCUMENTED])
def test_documented_commands_run(
    doc: str, commands: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    if not any("--out calib.json" in c for c in commands):
        _profile(tmp_path)
    monkeypatch.chdir(tmp_path)
    for line in commands:
        _run(line, tmp_path)


def test_the_docs_show_commands() -> None:
    counts = dict((d, len(c)) for d, c in DOCUMENTED)
    assert counts["README.md"] >= 15 and sum(counts.values()) >= 40, counts


def test_every_file_the_docs_name_is_shipped() -> None:
    for doc, commands in DOCUMENTED:
        for line in commands:
            for word in shlex.split(line):
                if word.startswith("examples/"):
                    assert (ROOT / word).is_file(), (doc, word)


def test_schedule_format_documents_every_field_written() -> None:
    from cascade_sched import CascadeSpec, build_schedule
    from cascade_sched.io import FORMAT, dumps

    doc = (ROOT / "docs" / "schedule-format.md").read_text(encoding="utf-8")
    assert doc.startswith(f"# The schedule format: `{FORMAT}`")
    data = json.loads(
        dumps(
            build_schedule(
                CascadeSpec(num_blocks=4, lag=1, num_devices=2, switches=((2, 1),), switch_policy="recache")
            )
        )
    )
    assert data["format"] == FORMAT
    keys = set(data) | set(data["spec"]) | {k for t in data["tasks"] for k in t}
    assert {"replaces", "writes", "switches", "switch_policy", "prompt"} <= keys
    documented = set(re.findall(r"^\| `([a-z_]+)` ", doc, flags=re.M))
    assert keys <= documented, sorted(keys - documented)
    for path in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        if path.name == "schedule-format.md":
            continue  # it describes the older versions, and what a change would take (a /4)
        for version in re.findall(r"cascade-schedule/\d+", path.read_text(encoding="utf-8")):
            assert version == FORMAT, (path.name, version)
    assert FORMAT in (ROOT / "README.md").read_text(encoding="utf-8")


# Flags of tools that are not the project's, as the docs use them (tool: flags).
OUTSIDE_FLAGS = {
    "torchrun": {"--nproc-per-node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint"},
    "huggingface-cli download": {"--include", "--local-dir"},
    "pip install": {"--extra-index-url", "--no-deps", "--no-index", "--target"},
    "FlashDreams' benchmark.py (--enable_torch_compile, --use_taehv)": {"--enable", "--use"},
}
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9])")


def _project_flags() -> set[str]:
    """Every option of every ``cascade`` subcommand, and of the project's own scripts (their
    ``add_argument("--...")`` calls: ``python -m apps.toy`` and ``benchmarks/``)."""
    import argparse

    parser, _ = build_parser()
    flags: set[str] = set()
    todo: list[argparse.ArgumentParser] = [parser]
    while todo:
        p = todo.pop()
        for action in p._actions:
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    for script in (*sorted((ROOT / "benchmarks").glob("*.py")), ROOT / "apps" / "toy" / "cli.py"):
        flags.update(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", script.read_text(encoding="utf-8")))
    return flags


def test_every_flag_the_docs_name_exists() -> None:
    """A flag renamed or removed leaves no sentence behind that still names it."""
    known = _project_flags() | set().union(*OUTSIDE_FLAGS.values())
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").iterdir())]
    stale = sorted({(path.relative_to(ROOT).as_posix(), flag) for path in texts
                    for flag in FLAG.findall(path.read_text(encoding="utf-8")) if flag not in known})
    assert not stale, f"the docs name flags that exist nowhere: {stale}"


def _timeline_examples() -> list[Path]:
    return sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".yaml", ".yml", ".json"))


@pytest.mark.slow
@pytest.mark.parametrize("example", _timeline_examples(), ids=lambda p: p.name)
def test_every_example_does_what_its_comment_says(example: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt timeline's comment names the command that runs it; run that command, and on the toy (which
    draws the balls its prompt names: ball k in colour channel k) check that every block shows exactly the
    balls of the prompt it is conditioned on."""
    import numpy as np

    from apps.flags import DEFAULT_PROMPT, read_timeline
    from models.toy_world import COLOURS, parse_prompt

    comment = "\n".join(line for line in example.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
    commands = re.findall(r"`(cascade generate [^`]*)`", comment)
    assert commands, f"{example.name}: its comment names no `cascade generate ...` command to run it"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    words = shlex.split(commands[0])
    assert f"examples/{example.name}" in words and "--model" not in words  # the toy's command
    _run(" ".join([*words, "--save-latents", "story.npz"]), tmp_path)
    latents = np.load(tmp_path / "story.npz")["latents"]  # (frames, 3 colours, H, W) in [-1, 1]
    blocks = words[words.index("--blocks") + 1]
    first = words[words.index("--prompt") + 1] if "--prompt" in words else DEFAULT_PROMPT
    texts, switches = read_timeline(str(example), first, num_blocks=int(blocks))
    for block in range(int(blocks)):
        prompt = texts[next((pid for at, pid in reversed(switches) if at <= block), 0)]
        frames = latents[3 * block: 3 * block + 3]
        shown = tuple(bool(((frames[:, c] + 1) / 2).max() > 0.5) for c in range(len(COLOURS)))
        assert shown == parse_prompt(prompt).balls, (example.name, block, prompt, shown)
