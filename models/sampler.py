"""Few-step flow-matching sampler of Self-Forcing / CausVid / LongLive / Krea, and the project's noise function.

The sigma table (Self-Forcing's ``utils/wan_wrapper.py``: ``FlowMatchScheduler(shift, sigma_min=0.0,
extra_one_step=True).set_timesteps(1000)``): ``sigma(s) = shift * s / (1 + (shift - 1) * s)`` over a
1000-entry table of ``s`` falling linearly from 1 (``s_i = 1 - i / 1000``), with timesteps ``1000 * sigma``.

A nominal step ``t`` (1000, 750, ...) reaches the model in one of two ways, as the public pipelines do:

- *warped* (``warp=True``; ``warp_denoising_step: true`` in Self-Forcing, LongLive, Krea and CausVid's
  4-step config): entry ``1000 - t`` of the table is used, so the model is conditioned on ``1000 * sigma``.
  At shift 5 the steps 1000/750/500/250 become 1000, 937.5, 833.3, 625.0.
- *not warped* (``warp=False``; CausVid's ``wan_causal_dmd.yaml``): the model is conditioned on ``t`` itself,
  and sigma is that of the table entry whose timestep is nearest ``t`` (the wrapper's ``argmin`` lookup):
  at shift 8 the steps 1000/757/522 keep t = 1000, 757, 522 at sigma 1, 0.7568, 0.5217.

``sigma_min`` stays 0 for every published pipeline: the wrappers pass ``sigma_min=0.0`` over the
scheduler class's own default of ``0.003 / 1.002``.

A pass predicts the velocity ``v``; ``x0 = x_t - sigma * v``; the next input is
``(1 - sigma_next) * x0 + sigma_next * eps`` with fresh ``eps = noise(seed, block, stage + 1, ...)``.

>>> s = FlowMatchSampler(shift=5.0)
>>> [round(s.effective_timestep(t), 2) for t in (1000, 750, 500, 250)]
[1000.0, 937.5, 833.33, 625.0]
>>> c = FlowMatchSampler(**CAUSVID)
>>> [round(c.effective_timestep(t), 1) for t in c.steps], [round(x, 4) for x in c.sigmas()]
([1000.0, 757.0, 522.0], [1.0, 0.7568, 0.5217])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from cascade_sched.errors import ConfigError

__all__ = [
    "CAUSVID",
    "SELF_FORCING",
    "FlowMatchSampler",
    "StepOutput",
    "noise",
    "noise_seed",
]

# Sampler settings of the published configs (models/presets.py has the whole pipelines, with sources).
SELF_FORCING: dict[str, Any] = dict(shift=5.0, steps=(1000, 750, 500, 250), warp=True)
CAUSVID: dict[str, Any] = dict(shift=8.0, steps=(1000, 757, 522), warp=False)


class StepOutput(NamedTuple):
    """What one sampler step returns."""

    x0: Tensor  # the clean-sample prediction of this step
    next: Tensor  # the input of the next denoise stage (``x0`` itself after the last one)


class FlowMatchSampler:
    """Shifted flow-matching sigma table with warped nominal steps.

    `steps` (optional) records the nominal denoising steps of a preset, so ``FlowMatchSampler(**CAUSVID)``
    works; the methods take any nominal step. `warp` says how a nominal step reaches the model (see the
    module docstring).
    """

    def __init__(
        self,
        shift: float = 5.0,
        num_train_timesteps: int = 1000,
        *,
        sigma_min: float = 0.0,
        sigma_max: float = 1.0,
        steps: Sequence[float] | None = None,
        warp: bool = True,
    ) -> None:
        if not shift > 0:
            raise ConfigError("shift", f"`shift` must be positive, got {shift}")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ConfigError("num_train_timesteps", f"`num_train_timesteps` must be a positive integer, got {num_train_timesteps!r}")
        if not 0.0 <= sigma_min < sigma_max <= 1.0:
            raise ConfigError("sigma_min", f"need 0 <= sigma_min < sigma_max <= 1, got {sigma_min}, {sigma_max}")
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.warp = bool(warp)
        self._table: tuple[float, ...] | None = None
        self.steps: tuple[float, ...] = tuple(steps) if steps is not None else ()
        for t in self.steps:
            self._check(t)
        if any(a <= b for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ConfigError("steps", f"`steps` must be strictly decreasing, got {list(self.steps)}")

    def __repr__(self) -> str:
        return (f"FlowMatchSampler(shift={self.shift}, num_train_timesteps={self.num_train_timesteps}, "
                f"sigma_min={self.sigma_min}, steps={self.steps}, warp={self.warp})")

    def _check(self, nominal_t: float) -> float:
        n = self.num_train_timesteps
        if not 0 <= nominal_t <= n:
            raise ConfigError("steps", f"nominal timestep must be in [0, {n}], got {nominal_t}")
        return float(nominal_t)

    def _shifted(self, index: float) -> float:
        """Sigma of table entry ``index``: ``s = sigma_max + (sigma_min - sigma_max) * index / N``, shifted."""
        s = self.sigma_max + (self.sigma_min - self.sigma_max) * index / self.num_train_timesteps
        return self.shift * s / (1.0 + (self.shift - 1.0) * s)

    def table(self) -> tuple[float, ...]:
        """The N sigmas of the table, entry 0 first (sigma_max)."""
        if self._table is None:
            self._table = tuple(self._shifted(i) for i in range(self.num_train_timesteps))
        return self._table

    def sigma(self, nominal_t: float) -> float:
        """Sigma the sampler uses at nominal step `nominal_t` (1000 -> 1.0; 0 -> 0.0, the cache pass).

        Warped: entry ``N - t`` of the table. Not warped: the entry whose timestep ``N * sigma`` is
        nearest ``t`` (the first on a tie, as ``torch.argmin``). Nominal 0 is past the table's last
        entry; the pipelines append 0 there, and so do we.
        """
        t = self._check(nominal_t)
        n = self.num_train_timesteps
        if t == 0:
            return 0.0
        if self.warp:
            return self._shifted(n - t)
        table = self.table()
        best = min(range(n), key=lambda i: abs(n * table[i] - t))
        return table[best]

    def effective_timestep(self, nominal_t: float) -> float:
        """The timestep the model is conditioned on: ``N * sigma(t)`` when warped (1000, 937.5, 833.3, 625 at
        shift 5), else ``t`` itself."""
        if not self.warp:
            return self._check(nominal_t)
        return self.num_train_timesteps * self.sigma(nominal_t)

    def sigmas(self, steps: Sequence[float] | None = None) -> list[float]:
        """Sigmas of `steps` (default: this sampler's preset steps)."""
        return [self.sigma(t) for t in (self.steps if steps is None else steps)]

    def effective_timesteps(self, steps: Sequence[float] | None = None) -> list[float]:
        """Effective timesteps of `steps` (default: this sampler's preset steps)."""
        return [self.effective_timestep(t) for t in (self.steps if steps is None else steps)]

    @staticmethod
    def x0_from_velocity(x_t: Tensor, v: Tensor, sigma: float | Tensor) -> Tensor:
        """Clean-sample prediction from a velocity: ``x0 = x_t - sigma * v``."""
        return x_t - sigma * v

    @staticmethod
    def renoise(x0: Tensor, eps: Tensor, sigma_next: float | Tensor) -> Tensor:
        """Input of the next step: ``(1 - sigma_next) * x0 + sigma_next * eps``."""
        return (1 - sigma_next) * x0 + sigma_next * eps

    def step(self, x_t: Tensor, velocity: Tensor, t: float, t_next: float | None = None,
             eps: Tensor | None = None) -> StepOutput:
        """One few-step update after the pass at nominal step ``t`` (diffusers' schedulers own this in
        ``step()`` too): ``x0 = x_t - sigma(t) * v``, then, when a next step ``t_next`` follows, its input
        ``renoise(x0, eps, sigma(t_next))`` with the fresh noise ``eps``. Every executor and calibration
        calls this one function.

        >>> s = FlowMatchSampler(shift=1.0)
        >>> out = s.step(torch.ones(2), torch.ones(2), 1000, 500, eps=torch.zeros(2))
        >>> out.x0.tolist(), out.next.tolist()
        ([0.0, 0.0], [0.0, 0.0])
        """
        x0 = self.x0_from_velocity(x_t, velocity, self.sigma(t))
        if t_next is None:
            return StepOutput(x0, x0)
        if eps is None:
            raise ConfigError("eps", "a step with a next timestep needs its fresh noise `eps`")
        return StepOutput(x0, self.renoise(x0, eps, self.sigma(t_next)))


def noise_seed(seed: int, block: int, stage: int) -> int:
    """The generator seed of the triple: the first 8 bytes (little-endian) of sha256(``"seed:block:stage"``),
    masked to 63 bits. A hash, not arithmetic, so no two triples in practice share a stream.

    >>> noise_seed(0, 0, 0) == noise_seed(0, 0, 0) != noise_seed(0, 0, 1)
    True
    """
    for name, value in (("seed", seed), ("block", block), ("stage", stage)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"`{name}` must be an integer, got {value!r}")
    digest = hashlib.sha256(f"{seed}:{block}:{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def noise(seed: int, block: int, stage: int, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise for (seed, block, stage), drawn in float32 on the CPU, then cast to `dtype`.

    Every executor calls this and moves the result to its device, so all of them draw the same numbers.
    ``noise(seed, b, 0)`` is block b's initial noise; ``noise(seed, b, s + 1)`` re-noises after stage s.
    """
    g = torch.Generator(device="cpu").manual_seed(noise_seed(seed, block, stage))
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32).to(dtype)


def latent_dtype(weights: torch.dtype) -> torch.dtype:
    """The dtype of a run's latents and the sampler's arithmetic for a model of ``weights``: float32
    whatever the weights (bf16 included), float64 for a float64 model.

    >>> latent_dtype(torch.bfloat16), latent_dtype(torch.float64)
    (torch.float32, torch.float64)
    """
    return torch.float64 if weights == torch.float64 else torch.float32
