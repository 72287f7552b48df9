"""Flow-matching tables against the public pipelines, golden tables per preset, and the noise function."""

from __future__ import annotations

import pytest
import torch

from cascade_sched.errors import ConfigError
from models import CAUSVID, SELF_FORCING, FlowMatchSampler, noise, noise_seed
from models.presets import PRESETS


def public_table(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The wrappers' scheduler, written out independently: FlowMatchScheduler(shift, sigma_min=0.0,
    extra_one_step=True).set_timesteps(1000): linspace(1, 0, 1001)[:-1], shifted; timesteps = 1000 sigma."""
    lin = torch.linspace(1.0, 0.0, 1001, dtype=torch.float64)[:-1]
    sigmas = shift * lin / (1 + (shift - 1) * lin)
    return sigmas, sigmas * 1000


def public_pipeline(shift: float, steps: list[float], warp: bool) -> tuple[list[float], list[float]]:
    """(model timesteps, sigmas) as the public inference pipelines compute them.

    warp: ``timesteps = cat(scheduler.timesteps, [0]); denoising_step_list = timesteps[1000 - steps]``;
    either way ``_convert_flow_pred_to_x0`` takes the sigma of ``argmin |timesteps - t|``.
    """
    sigmas, timesteps = public_table(shift)
    padded = torch.cat([timesteps, torch.zeros(1, dtype=torch.float64)])
    model_t = [padded[1000 - int(t)].item() if warp else float(t) for t in steps]
    sig = [sigmas[int(torch.argmin((timesteps - t).abs()))].item() for t in model_t]
    return model_t, sig


# Golden tables: (model timestep, sigma) per denoise step, each row from the config that sets it.
GOLDEN = {
    # guandeh17/Self-Forcing configs/self_forcing_dmd.yaml: denoising_step_list [1000, 750, 500, 250],
    # warp_denoising_step true, timestep_shift 5.0 (utils/wan_wrapper.py: sigma_min=0.0).
    "self-forcing": [(1000.0, 1.0), (937.5, 0.9375), (833.3333, 0.833333), (625.0, 0.625)],
    # tianweiy/CausVid configs/wan_causal_dmd.yaml: denoising_step_list [1000, 757, 522, 0], no warp,
    # timestep_shift 8.0: the model sees t itself, sigma from the nearest table entry.
    "causvid": [(1000.0, 1.0), (757.0, 0.756757), (522.0, 0.521739)],
    # tianweiy/CausVid configs/wan_causal_dmd_warp_4step_cfg2.yaml: [1000, 750, 500, 250, 0],
    # warp_denoising_step true, timestep_shift 8.0.
    "causvid-warp4": [(1000.0, 1.0), (960.0, 0.96), (888.8889, 0.888889), (727.2727, 0.727273)],
    # NVlabs/LongLive configs/longlive_inference.yaml: [1000, 750, 500, 250], warp true,
    # model_kwargs.timestep_shift 5.0.
    "longlive": [(1000.0, 1.0), (937.5, 0.9375), (833.3333, 0.833333), (625.0, 0.625)],
    # krea-ai/realtime-video configs/self_forcing_server_14b.yaml: [1000, 750, 500, 250], warp true,
    # timestep_shift 5.0.
    "krea-14b": [(1000.0, 1.0), (937.5, 0.9375), (833.3333, 0.833333), (625.0, 0.625)],
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_tables_per_preset(name: str) -> None:
    preset = PRESETS[name]
    s = preset.sampler()
    want_t, want_sigma = zip(*GOLDEN[name], strict=True)
    assert s.effective_timesteps() == pytest.approx(list(want_t), abs=5e-5), name
    assert s.sigmas() == pytest.approx(list(want_sigma), abs=5e-7), name
    public_t, public_sigma = public_pipeline(preset.shift, list(preset.steps), preset.warp)
    assert s.effective_timesteps() == pytest.approx(public_t, abs=1e-9)
    assert s.sigmas() == pytest.approx(public_sigma, abs=1e-12)
    assert s.sigma(0) == 0.0 and s.effective_timestep(0) == 0.0  # the cache pass


def test_published_effective_timesteps_shift5() -> None:
    s = FlowMatchSampler(**SELF_FORCING)
    assert s.effective_timesteps() == pytest.approx([1000.0, 937.5, 833.3333333, 625.0], abs=1e-6)
    assert s.sigma(1000) == 1.0 and s.sigma(0) == 0.0 and s.effective_timestep(0) == 0.0


@pytest.mark.parametrize("warp", [True, False])
@pytest.mark.parametrize("shift", [1.0, 5.0, 8.0])
def test_every_nominal_step_matches_the_public_pipeline(shift: float, warp: bool) -> None:
    s = FlowMatchSampler(shift=shift, warp=warp)
    steps = [1000, 999, 757, 750, 522, 500, 250, 1]
    model_t, sig = public_pipeline(shift, steps, warp)
    assert s.effective_timesteps(steps) == pytest.approx(model_t, abs=1e-9)
    assert s.sigmas(steps) == pytest.approx(sig, abs=1e-12)


def test_causvid_is_not_warped() -> None:
    """CausVid's 3-step checkpoint sees t = 1000, 757, 522 (the old preset warped them to 1000, 961, 897)."""
    s = FlowMatchSampler(**CAUSVID)
    assert s.steps == (1000, 757, 522) and not s.warp
    assert [round(t) for t in s.effective_timesteps()] == [1000, 757, 522]
    assert [round(x, 4) for x in s.sigmas()] == [1.0, 0.7568, 0.5217]
    warped = FlowMatchSampler(shift=8.0, steps=(1000, 757, 522))
    assert [round(t) for t in warped.effective_timesteps()] == [1000, 961, 897]


def test_velocity_and_renoise() -> None:
    x0 = torch.randn(4)
    eps = torch.randn(4)
    sigma = 0.8
    x_t = FlowMatchSampler.renoise(x0, eps, sigma)
    v = eps - x0  # the flow-matching velocity of this path
    assert torch.allclose(FlowMatchSampler.x0_from_velocity(x_t, v, sigma), x0, atol=1e-6)


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError):
        FlowMatchSampler(shift=0)
    with pytest.raises(ConfigError, match="steps"):
        FlowMatchSampler(steps=(500, 750))
    with pytest.raises(ConfigError):
        FlowMatchSampler().sigma(1001)


def test_noise_is_a_function_of_the_triple() -> None:
    a = noise(1, 2, 3, (16, 3, 4, 4))
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, noise(1, 2, 3, (16, 3, 4, 4)))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, noise(1, 2, 3, (16, 3, 4, 4)))
    for other in ((1, 2, 4), (1, 3, 3), (2, 2, 3), (1, 23, 0)):
        assert not torch.equal(a, noise(*other, (16, 3, 4, 4)))
    # drawn in float32, then cast: every dtype sees the same numbers
    assert torch.equal(noise(1, 2, 3, (16, 3, 4, 4), torch.float64), a.double())
    assert torch.equal(noise(1, 2, 3, (16, 3, 4, 4), torch.bfloat16), a.bfloat16())
    assert noise_seed(0, 0, 0) < 2**63
    with pytest.raises(ConfigError, match="block"):
        noise_seed(0, 1.5, 0)  # type: ignore[arg-type]
