"""Output files: checked before any work starts, written under a name that says they are partial, and
renamed into place only when complete.

A run that is interrupted or fails keeps what it finished, readable, under the partial name
(``clip.partial.mp4``: the extension stays last so players and readers still open it), and never leaves a
partial file under the final name, where it would look whole.

>>> partial_path("out/clip.mp4").as_posix(), partial_path("plan").as_posix()
('out/clip.partial.mp4', 'plan.partial')
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cascade_sched.errors import ConfigError

__all__ = ["check_output", "committed", "partial_path", "save_figure"]


def check_output(flag: str, path: str | os.PathLike[str], suffixes: Sequence[str] | None = None, *,
                 directory: bool = False) -> Path:
    """Check an output path before any work: its folder exists and is writable, it is not a directory
    (a folder for ``directory=True``: not a file), and its extension is one the writer knows.

    Raises one :class:`ConfigError` naming ``flag`` (as the user typed it, e.g. ``--out``).

    >>> check_output("--out", "clip.mp4", (".mp4", ".gif")).name
    'clip.mp4'
    >>> check_output("--out", "clip.avi", (".mp4", ".gif"))
    Traceback (most recent call last):
    ...
    cascade_sched.errors.ConfigError: `--out` must end in .mp4 or .gif, got 'clip.avi'
    >>> check_output("--out", ".", (".mp4", ".gif"))
    Traceback (most recent call last):
    ...
    cascade_sched.errors.ConfigError: `--out` '.' is a folder; give a file name inside it, e.g. 'clip.mp4'
    """
    text = os.fspath(path)
    if not text.strip():
        raise ConfigError(flag, f"`{flag}` needs a path, got an empty one")
    p = Path(text)
    if directory:
        if p.exists() and not p.is_dir():
            raise ConfigError(flag, f"`{flag}` {text!r} is a file; it must be a folder (or a new name)")
    elif p.is_dir():
        example = f", e.g. {str(p / ('clip' + suffixes[0]))!r}" if suffixes else ""
        raise ConfigError(flag, f"`{flag}` {text!r} is a folder; give a file name inside it{example}")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise ConfigError(flag, f"`{flag}` must end in {' or '.join(suffixes)}, got {text!r}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(flag, f"`{flag}` folder {str(parent)!r} does not exist")
    target = p if directory and p.is_dir() else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(flag, f"`{flag}` folder {str(target)!r} is not writable")
    return p


def partial_path(path: str | os.PathLike[str]) -> Path:
    """The name a file (or folder) is written under until it is complete: ``x.mp4 -> x.partial.mp4``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.partial{p.suffix}") if p.suffix else p.with_name(f"{p.name}.partial")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def committed(path: str | os.PathLike[str], *, keep_partial: bool = True) -> Iterator[Path]:
    """Write ``path`` under its partial name; on success rename it into place (replacing an older file).

    On an exception (an interrupt included) the partial file stays, so the finished part is kept under a
    name that says it is partial; with ``keep_partial=False`` (an output that is useless unless whole, such
    as a JSON table) it is removed instead. Nothing is ever left under the final name by a failed run.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with committed(d / "t.json") as tmp:
    ...     _ = tmp.write_text("{}")
    >>> sorted(p.name for p in d.iterdir())
    ['t.json']
    """
    final = Path(path)
    tmp = partial_path(final)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        if not keep_partial or not tmp.exists():
            _remove(tmp)
        raise
    if tmp.exists() or tmp.is_symlink():
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)


def save_figure(fig: Any, path: str | os.PathLike[str], **savefig: Any) -> None:
    """``fig.savefig`` (a matplotlib figure) under the partial name, renamed into place when written; the
    format comes from the extension, which the partial name keeps."""
    with committed(path, keep_partial=False) as tmp:
        fig.savefig(tmp, **savefig)
