"""Interrupts: the note of what was kept is asked after the stack unwound, once (partial outputs:
tests/cascade_sched/test_sched_outputs.py)."""

from __future__ import annotations

import signal

import pytest

from apps import interrupts
from cascade_sched.errors import Interrupted


def test_a_note_is_asked_after_every_finally_ran_and_said_once() -> None:
    interrupts.what_was_kept()  # forget what an earlier test left
    state = {"blocks": 0}
    with pytest.raises(KeyboardInterrupt), interrupts.on_interrupt(lambda: f"kept {state['blocks']} blocks"):
        state["blocks"] = 3
        try:
            raise Interrupted(signal.SIGTERM)
        finally:
            state["blocks"] = 4  # the finally that closes the files runs before the note is asked
    assert interrupts.what_was_kept() == "kept 4 blocks"
    assert interrupts.what_was_kept() == ""  # said once: a later command in this process starts clean
    assert (
        interrupts.line("cascade generate", signal.SIGTERM, "kept 4 blocks")
        == "cascade generate: interrupted (SIGTERM): kept 4 blocks"
    )
    assert interrupts.exit_code(Interrupted(signal.SIGTERM)) == 143
    assert interrupts.exit_code(KeyboardInterrupt()) == 130
