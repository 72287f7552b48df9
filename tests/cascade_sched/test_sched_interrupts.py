"""Interrupts and partial outputs: the note of what was kept is asked after the stack unwound, once; a
file under its final name is always whole."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from cascade_sched import interrupts
from cascade_sched.outputs import committed, partial_path, save_figure


def test_a_note_is_asked_after_every_finally_ran_and_said_once() -> None:
    interrupts.what_was_kept()  # forget what an earlier test left
    state = {"blocks": 0}
    with pytest.raises(KeyboardInterrupt), interrupts.on_interrupt(lambda: f"kept {state['blocks']} blocks"):
        state["blocks"] = 3
        try:
            raise interrupts.Interrupted(signal.SIGTERM)
        finally:
            state["blocks"] = 4  # the finally that closes the files runs before the note is asked
    assert interrupts.what_was_kept() == "kept 4 blocks"
    assert interrupts.what_was_kept() == ""  # said once: a later command in this process starts clean
    assert (
        interrupts.line("cascade generate", signal.SIGTERM, "kept 4 blocks")
        == "cascade generate: interrupted (SIGTERM): kept 4 blocks"
    )
    assert interrupts.exit_code(interrupts.Interrupted(signal.SIGTERM)) == 143
    assert interrupts.exit_code(KeyboardInterrupt()) == 130


def test_committed_keeps_a_partial_file_under_the_partial_name_only(tmp_path: Path) -> None:
    final = tmp_path / "v.mp4"
    with pytest.raises(KeyboardInterrupt), committed(final) as tmp:
        assert tmp == partial_path(final) == tmp_path / "v.partial.mp4"
        tmp.write_bytes(b"two blocks")
        raise KeyboardInterrupt
    assert not final.exists() and (tmp_path / "v.partial.mp4").read_bytes() == b"two blocks"
    with committed(final) as tmp:  # the next run starts from nothing and renames when complete
        assert not tmp.exists()
        tmp.write_bytes(b"all blocks")
    assert final.read_bytes() == b"all blocks" and not (tmp_path / "v.partial.mp4").exists()


def test_a_figure_that_fails_half_way_leaves_no_file(tmp_path: Path) -> None:
    class Figure:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        def savefig(self, path: Path, **kwargs: object) -> None:
            Path(path).write_bytes(b"\x89PNG half")
            if self.fail:
                raise OSError("disk full")

    with pytest.raises(OSError):
        save_figure(Figure(fail=True), tmp_path / "g.png")
    assert list(tmp_path.iterdir()) == []
    save_figure(Figure(fail=False), tmp_path / "g.png", dpi=120)
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]
