"""``cascade make-tiny-folder DIR``, then the whole real path in one command: ``cascade generate --model-dir
DIR``; and every model-source flag taking the folder's root or its own subfolder, with the same result."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from apps.cli import main
from cascade_sched.metrics import video_frames
from tests.extras import need

diffusers = need("diffusers")
need("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folders") / "tiny"
    assert main(["make-tiny-folder", str(root)]) == 0
    return root


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["generate", "--blocks", "8", "--no-progress", *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_the_folder_is_a_real_diffusers_pipeline(tiny: Path) -> None:
    assert {p.name for p in tiny.iterdir()} == {"model_index.json", "transformer", "text_encoder", "tokenizer",
                                                 "vae", "scheduler"}
    pipe = diffusers.WanPipeline.from_pretrained(str(tiny))  # the libraries' own loader reads it as laid out
    assert type(pipe.transformer).__name__ == "WanTransformer3DModel"
    assert type(pipe.vae).__name__ == "AutoencoderKLWan" and type(pipe.text_encoder).__name__ == "UMT5EncoderModel"


def test_one_command_runs_the_whole_real_path(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, lat = tmp_path / "x.mp4", tmp_path / "x.npz"
    text = run(capsys, "--model-dir", str(tiny), "--out", str(out), "--save-latents", str(lat))
    assert "model tiny" in text  # the transformer's config is the tiny preset's network: its size too
    assert f"weights: {tiny / 'transformer'}, entry WanTransformer3DModel" in text
    assert f"text: umT5 ({tiny})" in text and f"decoder: Wan VAE ({tiny / 'vae'})" in text
    assert iio.imread(out).shape == (sum(video_frames(b) for b in range(8)), 32, 32, 3)
    # Each piece by its own flag, root or subfolder: the same pieces, the same latents.
    base = np.load(lat)["latents"]
    for i, argv in enumerate((["--model-dir", str(tiny / "transformer")],
                              ["--model", "tiny", "--checkpoint", str(tiny / "transformer"),
                               "--text-encoder", str(tiny / "text_encoder"), "--vae", str(tiny / "vae")],
                              ["--model", "tiny", "--checkpoint", str(tiny), "--text-encoder", str(tiny),
                               "--vae", str(tiny)])):
        other = tmp_path / f"{i}.npz"
        run(capsys, *argv, "--save-latents", str(other))
        np.testing.assert_array_equal(np.load(other)["latents"], base)


def test_a_folder_without_a_transformer_names_the_flag_for_the_geometry(
        tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    bare = tmp_path / "bare"
    for piece in ("text_encoder", "tokenizer", "vae"):
        shutil.copytree(tiny / piece, bare / piece)
    assert main(["generate", "--model-dir", str(bare), "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "has no transformer/" in err and "`--model`" in err and "`--checkpoint`" in err
    assert len(err.strip().splitlines()) == 1
    text = run(capsys, "--model-dir", str(bare), "--model", "tiny", "--save-latents", str(tmp_path / "y.npz"))
    assert "seeded random weights" in text and f"umT5 ({bare})" in text


def test_make_tiny_folder_refuses_a_folder_that_is_not_empty(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-tiny-folder", str(tiny)]) == 2
    assert "not empty" in capsys.readouterr().err
