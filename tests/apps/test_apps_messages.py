"""Messages name what was typed: a prompt file's error names the file, the entry and its line (never a flag
the user did not type); a folder given as ``--out`` is called a folder; the toy says which words of a
prompt it does not know, in one note, and runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.cli import main


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["generate", "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(("name", "body", "expected"), [
    ("late.yaml", "- at_block: 3\n  prompt: red fast\n- at_block: 40\n  prompt: blue\n",
     "entry 2 (line 3): at_block 40 is past the run's last block, 15 (--blocks 16)"),
    ("late.json", '[\n  {"at_block": 3, "prompt": "red"},\n\n  {"at_block": 30, "prompt": "blue"}\n]\n',
     "entry 2 (line 4): at_block 30 is past the run's last block, 15 (--blocks 16)"),
    ("order.yaml", "- {at_block: 5, prompt: red}\n- {at_block: 3, prompt: blue}\n",
     "entry 2 (line 2): at_block 3 must come after the entry before it (at_block 5)"),
    ("keys.json", '[{"at_block": 1, "prompt": "red"},\n {"at": 2, "prompt": "blue"}]',
     "entry 2 (line 2) must be {at_block: int, prompt: non-empty text}"),
    ("broken.yaml", "- at_block: 3\n  prompt: red\n- at_block 4\n  prompt: blue\n",
     "is not valid YAML at line 4, column 9: mapping values are not allowed here"),
    ("broken.json", '[{"at_block": 3, "prompt": "red"},\n {"at_block": 4 "prompt": "x"}]',
     "is not valid JSON at line 2, column 17: Expecting ',' delimiter"),
])
def test_a_prompt_file_error_names_the_file_the_entry_and_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, body: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(body)
    err = refusal(capsys, "--prompts", str(path), "--out", str(tmp_path / "x.mp4"))
    assert f"`--prompts` {str(path)!r}" in err and expected in err
    assert "--switch" not in err  # a flag the user never typed


def test_a_folder_given_as_out_is_called_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refusal(capsys, "--out", str(tmp_path))
    assert f"`--out` {str(tmp_path)!r} is a folder; give a file name inside it" in err and "must end in" not in err


def test_the_toy_says_which_words_it_does_not_know(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--prompt", "a purple elephant, fast", "--blocks", "2", "--no-progress",
                 "--out", str(tmp_path / "x.mp4")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: the toy model knows only red, green, blue, slow, fast; it ignores 'a', 'purple', "
                     "'elephant' in 'a purple elephant, fast' and draws red green blue fast (no colour named: "
                     "every ball)"]
    assert main(["generate", "--prompt", "red fast", "--blocks", "2", "--no-progress",
                 "--out", str(tmp_path / "y.mp4")]) == 0
    assert "note:" not in capsys.readouterr().err  # every word known: nothing to say
