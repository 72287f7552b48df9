"""Partial outputs: a file under its final name is always whole; what a failed run finished stays under
the partial name."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_sched.outputs import committed, partial_path, save_figure


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
