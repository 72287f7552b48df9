"""Writing what a run makes, block by block, so that a run that dies keeps every finished frame.

- ``.mp4``: H.264 through ffmpeg (imageio-ffmpeg) as *fragmented* MP4 with a keyframe at every block,
  so the file is playable up to the last fragment written even if the process is killed;
- ``.gif``: rewritten atomically (temp file + rename) as blocks come and at ``close``, so the file on disk is
  always a complete GIF; a GIF cannot be appended to, so it is rewritten only once the last rewrite is ten
  times its own length in the past (at most a tenth of the time goes to rewriting, however long the
  stream), and a run killed outright loses at most the last few blocks' frames;
- ``--save-latents``: a ``.npz`` whose ``latents`` array is (num_blocks * frames_per_block, C, H, W).
"""

from __future__ import annotations

import os
import threading
import time
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
        self._gif_frames: list[np.ndarray] = []
        self._gif_written = 0  # frames in the GIF on disk
        self._gif_next = 0.0  # perf_counter after which the next rewrite is due
        self._gop = 4 * frames_per_block

    def open(self) -> None:
        """Start the encoder ahead of the first block (so its start-up is not counted as latency)."""
        with self._lock:
            if self.path.suffix.lower() == ".mp4" and self._writer is None:
                self._writer = self._open_mp4()

    def add_block(self, frames: np.ndarray) -> None:
        """Append one block's uint8 frames (T, H, W, 3) and flush them."""
        with self._lock:
            if self.path.suffix.lower() == ".gif":
                self._gif_frames.extend(frames)
                if time.perf_counter() >= self._gif_next:
                    self._write_gif()
            else:
                if self._writer is None:
                    self._writer = self._open_mp4()
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

    def _write_gif(self) -> None:
        import imageio.v2 as imageio

        start = time.perf_counter()
        tmp = self.path.with_name(f".{self.path.name}.tmp.gif")
        imageio.mimsave(str(tmp), self._gif_frames, duration=1000.0 / self.fps, loop=0)  # type: ignore[arg-type]
        os.replace(tmp, self.path)
        self._gif_written = len(self._gif_frames)
        now = time.perf_counter()
        self._gif_next = now + 9 * (now - start)

    def close(self) -> None:
        """Finish the file (idempotent)."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self._gif_frames and self._gif_written < len(self._gif_frames):
                self._write_gif()


def save_latents(path: str, latents: list[np.ndarray]) -> None:
    """Write ``latents`` (per block (C, F, H, W)) as one (B*F, C, H, W) float32 array named ``latents``."""
    arr = (np.concatenate([x.transpose(1, 0, 2, 3) for x in latents]) if latents
           else np.zeros((0,), np.float32))
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, latents=arr.astype(np.float32))
    os.replace(tmp, path)
