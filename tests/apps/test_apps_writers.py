"""What ``cascade generate`` writes, block by block: the video and the latents are whole files after every
block, and writing holds no frame and no latent once written (a run of any length holds one block)."""

from __future__ import annotations

import tracemalloc
import zipfile
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.generate.npz import NpzWriter, crc32_combine
from apps.generate.writers import VideoSink, check_room
from cascade_sched.errors import ConfigError


def _block(seed: int, frames: int = 3, size: int = 64) -> np.ndarray:
    """Frames of at most 64 colours, which a GIF palette holds exactly."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (64, 3), dtype=np.uint8)
    return colours[rng.integers(0, 64, (frames, size, size))]


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_the_video_is_whole_after_every_block(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"v{suffix}"
    sink = VideoSink(str(path), frames_per_block=3)
    sink.open()
    blocks = [_block(b) for b in range(6)]
    for n, frames in enumerate(blocks, 1):
        sink.add_block(frames)
        if suffix == ".gif":  # the trailer follows the last frame: a reader sees every frame so far
            back = iio.imread(path, index=None)
            assert back.shape == (3 * n, 64, 64, 3)
            assert np.array_equal(back[-3:], frames)  # a palette per frame: exact for few colours
    sink.close()
    assert iio.imread(path, index=None).shape[0] == 18


def test_writing_a_long_gif_and_its_latents_holds_no_frame(tmp_path: Path) -> None:
    """Peak traced memory of 300 blocks is that of a few blocks, not of the 300 (~11 MB of frames)."""
    sink = VideoSink(str(tmp_path / "v.gif"), frames_per_block=3)
    latents = NpzWriter(tmp_path / "l.npz", "latents", (16, 8, 8))
    frames, rows = _block(0), np.ones((3, 16, 8, 8), np.float32)
    tracemalloc.start()
    try:
        for _ in range(300):
            sink.add_block(frames)
            latents.append(rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sink.close()
        latents.close()
    one_block = frames.nbytes + rows.nbytes
    assert peak < 20 * one_block, f"peak {peak} bytes while writing; one block is {one_block}"
    assert iio.imread(tmp_path / "v.gif", index=None).shape[0] == 900
    assert np.load(tmp_path / "l.npz")["latents"].shape == (900, 16, 8, 8)


def test_the_latents_are_a_whole_npz_after_every_block(tmp_path: Path) -> None:
    path = tmp_path / "l.npz"
    w = NpzWriter(path, "latents", (4, 2, 2))
    rng = np.random.default_rng(3)
    written = []
    for _ in range(20):
        block = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
        w.append(block)
        written.append(block)
        with zipfile.ZipFile(path) as z:
            assert z.testzip() is None  # every CRC-32 checks out
        assert np.array_equal(np.load(path)["latents"], np.concatenate(written))
    w.close()
    with pytest.raises(ValueError, match="rows of shape"):
        NpzWriter(tmp_path / "m.npz", "latents", (4, 2, 2)).append(np.zeros((1, 3), np.float32))


@given(st.binary(max_size=200), st.binary(max_size=2000))
def test_crc32_combine_is_zlibs(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_a_file_bigger_than_the_free_space_is_refused_naming_its_flag(tmp_path: Path) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    check_room("--save-latents", str(tmp_path / "l.npz"), free // 2)
    with pytest.raises(ConfigError, match=r"`--save-latents` .*l\.npz would take ~.* GiB, more than the .* free"):
        check_room("--save-latents", str(tmp_path / "l.npz"), free + (1 << 30))
