"""Flow-matching tables against the published effective timesteps, and the noise function."""

from __future__ import annotations

import pytest
import torch

from cascade_sched.errors import ConfigError
from models import CAUSVID, SELF_FORCING, SELF_FORCING_SIGMA_MIN, FlowMatchSampler, noise, noise_seed


def test_published_effective_timesteps_shift5() -> None:
    s = FlowMatchSampler(**SELF_FORCING)
    assert s.effective_timesteps() == pytest.approx([1000.0, 937.5, 833.3333333, 625.0], abs=1e-6)
    assert s.sigma(1000) == 1.0 and s.sigma(0) == 0.0 and s.effective_timestep(0) == 0.0


def test_self_forcing_table_exactly() -> None:
    """Self-Forcing's scheduler: linspace(1, sigma_min, 1001)[:-1], shifted, indexed at 1000 - t, then 0."""
    shift = 5.0
    lin = torch.linspace(1.0, SELF_FORCING_SIGMA_MIN, 1001, dtype=torch.float64)[:-1]
    table = torch.cat([shift * lin / (1 + (shift - 1) * lin) * 1000, torch.zeros(1, dtype=torch.float64)])
    s = FlowMatchSampler(shift=shift, sigma_min=SELF_FORCING_SIGMA_MIN)
    for t in (1000, 750, 500, 250, 0, 1, 999):
        assert s.effective_timestep(t) == pytest.approx(table[1000 - t].item(), abs=1e-9)
    assert [round(x, 1) for x in s.effective_timesteps([1000, 750, 500, 250])] == [1000.0, 937.7, 834.2, 627.8]


def test_causvid_preset() -> None:
    s = FlowMatchSampler(**CAUSVID)
    assert s.steps == (1000, 757, 522)
    sig = [8 * x / (1 + 7 * x) for x in (1.0, 0.757, 0.522)]
    assert s.sigmas() == pytest.approx(sig)


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
