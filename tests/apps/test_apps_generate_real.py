"""One folder, one command, with the real libraries: the folder ``cascade make-tiny-folder`` writes (umT5
through transformers, AutoencoderKLWan and WanTransformer3DModel through diffusers), a Wan DiT in
Self-Forcing's checkpoint layout with a PEFT LoRA, all tiny and random, run through ``cascade generate
--model-dir`` on the reference and distributed executors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from apps.cli import main
from apps.tiny_folder import write_tiny_folder
from tests.extras import need

transformers = need("transformers")
diffusers = need("diffusers")
peft = need("peft")

PROMPT, OTHER = "a red fox in the snow", "a blue cube rolling"  # words of the tiny folder's tokenizer


def build_dit(root: Path) -> None:
    """The tiny DiT as Self-Forcing saves it (generator + generator_ema, ``model.`` prefix), and a LoRA."""
    from models import CausalWanDiT, get_config

    cfg = get_config("tiny")
    raw, ema = CausalWanDiT(cfg, seed=3), CausalWanDiT(cfg, seed=4)
    torch.save({"generator": {f"model.{k}": v for k, v in raw.state_dict().items()},
                "generator_ema": {f"model.{k}": v for k, v in ema.state_dict().items()}}, root / "dit.pt")
    targets = sorted(n for n, m in raw.named_modules() if n.startswith("blocks.") and isinstance(m, torch.nn.Linear))
    torch.manual_seed(7)
    lora = peft.get_peft_model(raw, peft.LoraConfig(r=4, lora_alpha=4, target_modules=targets,
                                                     init_lora_weights=False))
    lora.save_pretrained(str(root / "lora"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wan")
    write_tiny_folder(root / "Wan2.1-tiny")
    build_dit(root)
    return root


def generate(folder: Path, *args: str) -> list[str]:
    argv = ["generate", "--model", "tiny", "--checkpoint", str(folder / "dit.pt"), "--weights", "generator",
            "--lora", str(folder / "lora"), "--blocks", "3", "--lag", "1", "--devices", "2", "--no-progress", *args]
    return argv


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def latents_of(path: Path) -> np.ndarray:
    return np.load(path)["latents"]


def test_one_folder_one_command(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = str(folder / "Wan2.1-tiny")
    a, b, e = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "e.safetensors"
    out = run_in_process(generate(folder, "--model-dir", model_dir, "--prompt", PROMPT, "--out", str(tmp_path / "a.mp4"),
                                  "--save-latents", str(a), "--save-text-embeddings", str(e)), capsys)
    assert "entry 'generator'" in out and "merged into 20 layers" in out  # the run says what it loaded
    assert f"umT5 ({model_dir})" in out and "Wan VAE" in out
    video = iio.imread(tmp_path / "a.mp4")
    assert video.shape == (9 + 12 + 12, 32, 32, 3)  # the VAE's frame counts, 8x the 4x4 latent
    run_in_process(generate(folder, "--model-dir", model_dir, "--prompt", OTHER, "--save-latents", str(b)), capsys)
    assert np.abs(latents_of(a) - latents_of(b)).max() > 1e-3  # the prompt reaches the model
    # Precomputed embeddings condition exactly as the encoder did.
    c = tmp_path / "c.npz"
    out = run_in_process(generate(folder, "--text-embeddings", str(e), "--vae", f"{model_dir}/vae", "--prompt", PROMPT,
                                  "--save-latents", str(c)), capsys)
    assert f"embeddings {e}" in out
    np.testing.assert_array_equal(latents_of(c), latents_of(a))
    # The LoRA and the entry matter: without them the latents differ.
    d = tmp_path / "d.npz"
    argv = [x for x in generate(folder, "--text-embeddings", str(e), "--prompt", PROMPT, "--save-latents", str(d))]
    i = argv.index("--lora")
    run_in_process(argv[:i] + argv[i + 2:], capsys)
    assert np.abs(latents_of(d) - latents_of(a)).max() > 1e-3


@pytest.mark.slow
def test_distributed_matches_reference_with_rank0_encoding(folder: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = str(folder / "Wan2.1-tiny")
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    run_in_process(generate(folder, "--model-dir", model_dir, "--prompt", PROMPT, "--save-latents", str(a)), capsys)
    r = subprocess.run([sys.executable, "-m", "cascade_sched.cli",
                        *generate(folder, "--model-dir", model_dir, "--prompt", PROMPT, "--save-latents", str(b),
                                  "--executor", "distributed", "--out", str(tmp_path / "b.mp4"))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    x, y = latents_of(a), latents_of(b)
    assert np.abs(x - y).max() <= 1e-5 * np.abs(x).max()
    assert iio.imread(tmp_path / "b.mp4").shape == (33, 32, 32, 3)


@pytest.mark.parametrize(("args", "flag", "words"), [
    (["--model", "wan2.1-1.3b"], "--text-encoder", "needs real text conditioning"),
    (["--preset", "self-forcing"], "--text-encoder", "needs real text conditioning"),
    (["--preset", "longlive", "--text-embeddings", "stand-in"], "--lora", "pass --lora PATH"),
    (["--model-dir", "."], "--model-dir", "has no transformer/"),
    (["--model", "tiny", "--weights", "ema"], "--weights", "none was given"),
    (["--model", "tiny", "--vae", "missing/vae"], "--vae", "does not exist"),
    (["--model", "tiny", "--text-embeddings", "nope.safetensors"], "--text-embeddings", "neither a file"),
    (["--model", "tiny", "--device", "tpu"], "--device", "cpu, cuda or cuda:N"),
    (["--model", "tiny", "--vae-device", "cuda:7"], "--vae-device", "cuda:7"),
])
def test_refusals_are_one_line(args: list[str], flag: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert main(["generate", "--no-progress", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and words in lines[0], lines


def test_a_checkpoint_of_the_wrong_size_lists_its_keys(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--no-progress", "--model", "small", "--text-embeddings", "stand-in",
                 "--checkpoint", str(folder / "dit.pt"), "--weights", "ema"]) == 2
    err = capsys.readouterr().err
    assert "does not match model 'small'" in err and "shape mismatches" in err
    assert "its shapes are those of 'tiny'" in err and "Traceback" not in err


def test_taehv_is_the_fast_option(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """TAEHV weights in the public layout (random here) decode the same run, on its own thread."""
    import json

    from models.taehv import TAEHVDecoder

    torch.save(TAEHVDecoder().state_dict(), tmp_path / "taew2_1.pth")
    trace = tmp_path / "t.json"
    out = run_in_process(generate(folder, "--text-embeddings", "stand-in", "--vae", str(tmp_path / "taew2_1.pth"),
                                  "--out", str(tmp_path / "t.mp4"), "--trace", str(trace)), capsys)
    assert "TAEHV" in out
    assert iio.imread(tmp_path / "t.mp4").shape == (33, 32, 32, 3)
    decodes = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("cat") == "decode"]
    assert [e["name"] for e in decodes] == ["decode B0", "decode B1", "decode B2"]
    assert [e["args"]["frames"] for e in decodes] == [9, 12, 12] and "TAEHV" in decodes[0]["args"]["decoder"]


def test_the_help_names_every_preset() -> None:
    from apps.flags import PRESET_NAMES
    from models.presets import PRESETS

    assert PRESET_NAMES.split(" | ") == list(PRESETS)
