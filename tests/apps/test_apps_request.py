"""One request, resolved once: generate and serve read the same flags the same way (presets, the toy's
defaults, what the user typed), nothing mutates the parsed flags, and ``cascade serve --preset`` runs the
preset's sampler steps."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from apps.cli import build_parser, main, subparser
from apps.host import machine
from apps.request import Resolved, resolve
from cascade_sched.cliargs import Invocation
from models.presets import PRESETS

PARSER, _ = build_parser()


def resolved(argv: list[str]) -> Resolved:
    args = PARSER.parse_args(argv)
    before = copy.deepcopy(vars(args))
    out = resolve(Invocation(args, subparser(PARSER, argv[0]).typed(argv), machine()))
    assert vars(args) == before  # the parsed flags are read, never written
    return out


@pytest.fixture
def weights(tmp_path: Path) -> list[str]:
    """A checkpoint and a LoRA that exist (resolving checks paths; nothing is loaded)."""
    (tmp_path / "dit.safetensors").write_bytes(b"")
    (tmp_path / "lora.pt").write_bytes(b"")
    return ["--checkpoint", str(tmp_path / "dit.safetensors"), "--lora", str(tmp_path / "lora.pt")]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_generate_and_serve_resolve_the_same_flags_to_equal_requests(preset: str, weights: list[str],
                                                                    tmp_path: Path) -> None:
    flags = ["--preset", preset, "--model", "tiny", *weights, "--text-embeddings", "stand-in", "--lag", "1",
             "--window", "5"]
    gen = resolved(["generate", *flags, "--blocks", "600", "--save-latents", str(tmp_path / "z.npz")])
    srv = resolved(["serve", *flags, "--max-blocks", "600"])
    shared = ("source", "prompt", "prompts", "executor", "timeout_s", "fail_at")
    assert {k: getattr(gen.request, k) for k in shared} == {k: getattr(srv.request, k) for k in shared}
    # a served stream starts with one block and the engine declares the rest, up to --max-blocks
    assert srv.request.spec == gen.request.spec.replace(num_blocks=1)
    assert srv.request.streaming is not None and srv.request.streaming.max_blocks == 600
    assert gen.notes == srv.notes
    p = PRESETS[preset]
    spec = gen.request.spec
    assert (spec.timesteps, spec.sink, spec.switch_policy) == (tuple(p.steps), p.sink, p.switch_policy)
    assert spec.window == 5 and (p.window != 5) == any("--window 5 overrides" in n for n in gen.notes)  # with a note


def test_a_typed_default_is_the_users_setting_not_unset() -> None:
    preset = resolved(["generate", "--preset", "causvid", "--text-embeddings", "stand-in", "--model", "tiny"])
    assert preset.request.spec.timesteps == (1000, 757, 522)
    typed = resolved(["generate", "--preset", "causvid", "--text-embeddings", "stand-in", "--model", "tiny",
                      "--timesteps", "1000,750,500,250"])
    assert typed.request.spec.timesteps == (1000, 750, 500, 250)
    assert "--timesteps (1000, 750, 500, 250) overrides preset causvid's (1000, 757, 522)" in typed.notes[0]


def test_the_toy_defaults_apply_where_nothing_was_typed() -> None:
    toy = resolved(["generate"]).request
    assert toy.spec.window == 3 and toy.spec.switches == ((3, 1),) and toy.prompts == ((1, "red green blue fast"),)
    assert toy.prompt == "red green slow" and toy.source.model == "toy"
    typed = resolved(["generate", "--window", "7", "--prompt", "a red ball bouncing"]).request
    assert typed.spec.window == 7 and typed.spec.switches == () and typed.prompt == "a red ball bouncing"
    assert resolved(["serve"]).request.spec.window == 3  # the window the toy was trained for, served too


def test_streams_go_on_until_their_input_ends_unless_bounded() -> None:
    served = resolved(["serve"]).request
    assert served.streaming is not None and served.streaming.max_blocks is None and served.spec.num_blocks == 1
    assert resolved(["serve", "--max-blocks", "50"]).request.streaming.max_blocks == 50  # type: ignore[union-attr]
    typed = resolved(["generate", "--interactive", "--blocks", "4"]).request
    assert typed.streaming is not None and typed.streaming.max_blocks is None and typed.spec.num_blocks == 4


def test_geometry_and_ring_flags_reach_the_spec_and_the_model() -> None:
    for command in (["generate"], ["serve"]):
        r = resolved([*command, "--model", "tiny", "--frames-per-block", "1", "--resolution", "64x32",
                      "--placement", "layers", "--devices", "2", "--stage-stride", "3", "--attention", "stage"])
        spec, config = r.request.spec, r.request.source.config()
        assert config is not None and (config.frames_per_block, config.latent_height, config.latent_width) == (1, 8, 4)
        assert spec.frames_per_block == 1 and spec.num_layers == 2 and spec.layer_ranges == ((0, 1), (1, 2))
        assert (spec.stage_stride, spec.attention) == (3, "stage")
    toy = resolved(["generate", "--placement", "layers", "--devices", "4", "--rings", "2", "--stage-stride", "2",
                    "--layer-split", "3,1"]).request.spec
    assert toy.num_layers == 4 and toy.layer_ranges == ((0, 3), (3, 4)) and toy.rings == 2


@pytest.mark.parametrize(("flags", "flag", "says"), [
    (["--frames-per-block", "0"], "--frames-per-block", "a positive integer"),
    (["--resolution", "40x32"], "--resolution", "multiple of 16"),
    (["--resolution", "big"], "--resolution", "HEIGHTxWIDTH"),
    (["--placement", "layers", "--devices", "2"], "--stage-stride", "at least the ring size W=2"),
    (["--placement", "layers", "--devices", "2", "--stage-stride", "2", "--layers", "3"], "--layers", "2 layers"),
    (["--placement", "layers", "--devices", "2", "--stage-stride", "2", "--layer-split", "2,1"], "--layer-split",
     "sum to num_layers=2"),
    (["--placement", "layers", "--devices", "3", "--rings", "2", "--stage-stride", "2"], "--rings", "divide"),
    (["--placement", "layers", "--devices", "2", "--stage-stride", "2", "--executor", "compiled"], "--placement",
     "--executor distributed"),
    (["--attention", "sideways"], "--attention", "stage"),
])
def test_bad_geometry_and_ring_flags_are_one_line_naming_the_flag(flags: list[str], flag: str, says: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", "tiny", "--blocks", "4", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cascade generate: error: {flag}:") and says in err[0], err


def test_a_refused_command_prints_only_its_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    # A note (the preset's sampler steps overridden) and a refusal: only the refusal is printed.
    assert main(["generate", "--preset", "causvid", "--model", "tiny", "--text-embeddings", "stand-in",
                 "--timesteps", "1000,500", "--blocks", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cascade generate: error: --blocks:"), err


def test_cascade_serve_with_a_preset_runs_its_timesteps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ``cascade serve``'s own path: the flags, the group that loads the model, one stream of it."""
    from apps.serve.group import LocalGroup
    from apps.serve.stream import StreamStart, stream_of

    seen: list[float] = []
    groups: list[LocalGroup] = []

    def serve(config: object, group: LocalGroup, **_: object) -> None:  # the HTTP server: one stream instead
        groups.append(group)
        model = group.model
        forward = model.forward_slice  # the tick loop's one forward (the whole model, or a ring's slice)

        def spy(tasks, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen.extend(t.timestep for t in tasks)
            return forward(tasks, *args, **kwargs)

        monkeypatch.setattr(model, "forward_slice", spy)
        start = StreamStart(0, "a red ball bouncing", "none")
        group.run(start, stream_of(group.request, start), group.options(start), lambda tick, view: None,
                  lambda block, x0: None)

    monkeypatch.setattr("apps.serve.app.serve", serve)
    assert main(["serve", "--preset", "causvid", "--model", "tiny", "--text-embeddings", "stand-in",
                 "--max-blocks", "2", "--port", "0"]) == 0
    (group,) = groups
    assert group.request.spec.timesteps == (1000, 757, 522)
    assert sorted(set(seen), reverse=True) == [1000.0, 757.0, 522.0, 0.0]  # CausVid's steps, then the cache pass
    assert group.sampler.shift == 8.0
