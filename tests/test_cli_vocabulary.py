"""One vocabulary across subcommands: the same flag has the same name, default and list syntax everywhere,
every help text shows its defaults, and the shared definitions live in ``cascade_sched.cliargs``."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from apps.cli import build_parser, main
from cascade_sched import cliargs

PARSER, _ = build_parser()
SUBCOMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices


def _actions(command: str) -> dict[str, argparse.Action]:
    return {s: a for a in SUBCOMMANDS[command]._actions for s in a.option_strings}


def test_every_help_text_shows_its_default() -> None:
    formatter = cliargs.DefaultsHelpFormatter("cascade")
    missing = [
        (name, a.option_strings[0])
        for name, p in SUBCOMMANDS.items()
        for a in p._actions
        if a.option_strings
        and a.help != argparse.SUPPRESS
        and a.nargs != 0
        and not isinstance(a, argparse._HelpAction)
        and "default" not in (formatter._get_help_string(a) or "")
    ]
    assert not missing


@pytest.mark.parametrize(
    ("flag", "default"), [("--window", cliargs.DEFAULT_WINDOW), ("--blocks", cliargs.DEFAULT_BLOCKS)]
)
def test_one_default_everywhere(flag: str, default: int) -> None:
    for name in SUBCOMMANDS:
        action = _actions(name).get(flag)
        if action is None or action.help == argparse.SUPPRESS:  # serve: its length is --max-blocks
            continue
        value = action.default[0] if isinstance(action.default, tuple) else action.default
        assert value == default, (name, flag, action.default)


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("plan", ("--lag", "--attention", "--window", "--decode", "--decoder", "--interconnect")),
        ("validate", ("--lag", "--attention")),
        ("quality", ("--lag", "--attention")),
    ],
)
def test_sweeps_take_lists_in_the_same_flags(command: str, flags: tuple[str, ...]) -> None:
    actions = _actions(command)
    for flag in flags:
        assert actions[flag].help != argparse.SUPPRESS, (command, flag)
        assert actions[flag].type in (cliargs.int_ranges, cliargs.name_list), (command, flag)


@pytest.mark.parametrize(
    ("argv", "typed"),
    [
        (["plan", "--lags", "9"], "--lags"),
        (["plan", "--lag", "9"], "--lag"),
        (["plan", "--attentions", "foo"], "--attentions"),
        (["validate", "--lags", "9"], "--lags"),
        (["quality", "--blocks", "0"], "--blocks"),
        (["quality", "--lags", "0"], "--lags"),
    ],
)
def test_refusals_name_the_flag_as_typed(
    argv: list[str], typed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.split(": error: ", 1)[1].startswith(f"{typed}:"), err


def test_flags_are_never_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["schedule", "--blo", "3"])
    assert e.value.code == 2 and "--blo" in capsys.readouterr().err


def test_serve_takes_generates_model_sources() -> None:
    sources = (
        "--model",
        "--checkpoint",
        "--preset",
        "--weights",
        "--lora",
        "--shift",
        "--model-dir",
        "--text-encoder",
        "--text-encoder-device",
        "--text-embeddings",
        "--vae",
        "--vae-device",
        "--device",
        "--dtype",
    )
    generate, serve = _actions("generate"), _actions("serve")
    for flag in sources:
        assert serve[flag].default == generate[flag].default and serve[flag].help == generate[flag].help, flag


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from cascade_sched import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


def test_toy_is_a_model_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--model", "toy", "--blocks", "4", "--json"]) == 0
    assert '"fps"' in capsys.readouterr().out
    for name in ("simulate", "generate", "calibrate", "validate", "serve"):
        assert "toy" in (_actions(name)["--model"].help or ""), name


def test_generate_without_out_writes_a_default_file_and_says_where(tmp_path: Path) -> None:
    cascade = Path(sys.executable).with_name("cascade")
    r = subprocess.run(
        [str(cascade), "generate", "--blocks", "2", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    written = list((tmp_path / "cascade-out").iterdir())
    assert len(written) == 1 and written[0].suffix == ".mp4" and written[0].stat().st_size > 0
    assert f"cascade-out/{written[0].name}" in r.stderr + r.stdout
