"""Writing what a run makes, block by block, so that a run that dies keeps every finished frame.

- ``.mp4``: H.264 through ffmpeg (imageio-ffmpeg) as *fragmented* MP4 with a keyframe at every block,
  so the file is playable up to the last fragment written even if the process is killed;
- ``.gif``: appended frame by frame, each frame with its own palette, the trailer written after the last
  frame and overwritten by the next block's, so the file on disk is a whole GIF after every block;
- ``--save-latents``: a ``.npz`` whose ``latents`` array is (num_blocks * frames_per_block, C, H, W),
  written block by block and whole after every block (:mod:`apps.generate.npz`).

No frame and no latent is kept once written: a run of any length holds one block at a time.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cascade_sched.errors import ConfigError

VIDEO_SUFFIXES = (".mp4", ".gif")
VIDEO_FPS = 16.0  # the frame rate of every video written (Wan2.1's), and of a --realtime stream


def check_video_path(path: str) -> Path:
    """The output path, if its suffix is one we write; ``ConfigError`` naming ``--out`` otherwise."""
    p = Path(path)
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError("out", f"`--out` must end in {' or '.join(VIDEO_SUFFIXES)}, got {path!r}")
    if not p.parent.exists():
        raise ConfigError("out", f"`--out` directory {str(p.parent)!r} does not exist")
    return p


class VideoSink:
    """Appends decoded blocks to a video file and makes each block durable before the next one."""

    def __init__(self, path: str, fps: float = VIDEO_FPS, frames_per_block: int = 3) -> None:
        self.path = check_video_path(path)
        self.fps = fps
        self.frames_written = 0
        self._lock = threading.RLock()
        self._writer: Any = None
        self._gop = 4 * frames_per_block

    def open(self) -> None:
        """Start the encoder ahead of the first block (so its start-up is not counted as latency)."""
        with self._lock:
            if self._writer is None:
                self._writer = self._open_mp4() if self.path.suffix.lower() == ".mp4" else GifWriter(self.path, self.fps)

    def add_block(self, frames: np.ndarray) -> None:
        """Append one block's uint8 frames (T, H, W, 3) and flush them."""
        with self._lock:
            self.open()
            if isinstance(self._writer, GifWriter):
                self._writer.append(frames)
            else:
                for f in frames:
                    self._writer.append_data(f)
            self.frames_written += len(frames)

    def _open_mp4(self) -> Any:
        import imageio.v2 as imageio

        return imageio.get_writer(
            str(self.path),
            format="FFMPEG",
            fps=self.fps,
            codec="libx264",
            macro_block_size=1,
            pixelformat="yuv420p",
            ffmpeg_log_level="error",
            output_params=["-movflags", "frag_keyframe+empty_moov+default_base_moof", "-g", str(self._gop)],
        )

    def close(self) -> None:
        """Finish the file (idempotent)."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


class GifWriter:
    """A GIF written as frames come (GIF89a: a header, then per frame a delay and an image with its own
    colour table, then the trailer). Each frame is encoded by Pillow alone, as a one-frame GIF whose global
    colour table becomes the frame's local one, so no frame is kept; the trailer follows the last frame and
    the next frames overwrite it."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.delay_cs = path, max(1, round(100 / fps))
        self._f: Any = None

    def append(self, frames: np.ndarray) -> None:
        data = b"".join(self._frame(f) for f in frames)
        if self._f is None:
            h, w = frames.shape[1:3]
            self._f = open(self.path, "wb")  # noqa: SIM115  # held open across blocks
            loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever
            self._f.write(b"GIF89a" + struct.pack("<HHBBB", w, h, 0x70, 0, 0) + loop)
        else:
            self._f.seek(-1, os.SEEK_END)  # over the trailer
        self._f.write(data + b"\x3b")
        self._f.flush()

    def _frame(self, frame: np.ndarray) -> bytes:
        """One frame: its graphic control (the delay) and its image, with its palette as a local table."""
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame), "RGB").save(buf, format="GIF")
        one = buf.getvalue()
        screen = one[10]
        table = 3 * (2 << (screen & 7)) if screen & 0x80 else 0
        i = 13 + table
        while one[i] == 0x21:  # extensions Pillow wrote: skip them
            i += 2
            while one[i]:
                i += one[i] + 1
            i += 1
        if one[i] != 0x2C:
            raise ValueError(f"Pillow wrote no image descriptor where expected (byte {one[i]:#x})")
        descriptor, image = bytearray(one[i:i + 10]), one[i + 10:-1]  # [-1]: Pillow's trailer
        if table and not descriptor[9] & 0x80:  # the global table becomes this image's local one
            descriptor[9] |= 0x80 | (screen & 7)
            image = one[13:13 + table] + image
        control = b"\x21\xf9\x04\x04" + struct.pack("<H", self.delay_cs) + b"\x00\x00"
        return control + bytes(descriptor) + image

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def check_room(flag: str, path: str, need: int) -> None:
    """Refuse (one ``ConfigError`` naming ``flag``) a file of ``need`` bytes where the disk holding ``path``
    has less free space: said at once, not when the disk fills hours into a run."""
    import shutil

    from cascade_sched.bounds import gib

    free = shutil.disk_usage(Path(path).resolve().parent).free
    if need > free:
        raise ConfigError(flag.lstrip("-").replace("-", "_"), f"`{flag}` {path} would take ~{gib(need)}, more than "
                                                             f"the {gib(free)} free on its disk")
