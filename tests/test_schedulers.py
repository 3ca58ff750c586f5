from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_breastlt.networks import RespacedDDPMScheduler, is_truncated_ddpm

SCHEDULE = dict(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False)


def _oracle_sample(scheduler, x0: torch.Tensor, steps: int, seed: int = 0) -> torch.Tensor:
    """Sample with a model that knows the data is the single point ``x0``: it predicts the exact noise of ``x_t``."""
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(x0.shape, generator=g)
    for t in scheduler.timesteps:
        a = scheduler.alphas_cumprod[int(t)]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x, _ = scheduler.step(eps, int(t), x, generator=g)
    return x


@pytest.mark.parametrize("steps", [10, 37, 100])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_few_steps_reach_the_data(steps, variance_type):
    """With fewer steps than training, the respaced chain still ends at the data (the last step is deterministic)."""
    x0 = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    out = _oracle_sample(RespacedDDPMScheduler(variance_type=variance_type, **SCHEDULE), x0, steps)
    assert torch.allclose(out, x0, atol=1e-4)


def test_gaussian_data_spread_is_bracketed():
    """Data N(0, 0.5^2) with the exact noise prediction of a Gaussian, sampled in 20 steps: the two fixed variances
    bracket the true spread (the small one ignores the uncertainty of x_0, the large one overstates it, as in Ho et
    al. 2020), and nothing of the initial unit noise is left, as MONAI's t -> t-1 step leaves it."""

    def spread(variance_type):
        sched = RespacedDDPMScheduler(variance_type=variance_type, **SCHEDULE)
        sched.set_timesteps(20)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 1, 20000, generator=g)
        for t in sched.timesteps:
            a = sched.alphas_cumprod[int(t)]
            eps = (1 - a).sqrt() * x / (a * 0.25 + (1 - a))  # E[eps | x_t] for x_t = sqrt(a) x_0 + sqrt(1 - a) eps
            x, _ = sched.step(eps, int(t), x, generator=g)
        assert abs(float(x.mean())) < 0.02
        return float(x.std())

    assert 0.3 < spread("fixed_small") < 0.5 < spread("fixed_large") < 0.6


def test_every_step_is_monai_ddpm():
    torch.manual_seed(0)
    sample, output = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for kind in ("epsilon", "v_prediction", "sample"):
        ours, theirs = RespacedDDPMScheduler(prediction_type=kind, **SCHEDULE), DDPMScheduler(prediction_type=kind, **SCHEDULE)
        for t in (999, 500, 1, 0):
            a = ours.step(output, t, sample, generator=torch.Generator().manual_seed(t))
            b = theirs.step(output, t, sample, generator=torch.Generator().manual_seed(t))
            assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-6)


def test_previous_timestep_and_checks():
    sched = RespacedDDPMScheduler(**SCHEDULE)
    sched.set_timesteps(4)  # 999, 666, 333, 0
    assert [sched.previous_timestep(int(t)) for t in sched.timesteps] == [666, 333, 0, -1]
    assert sched.previous_timestep(500) == 499  # outside the schedule: the training chain's step
    with pytest.raises(ValueError, match="learned"):
        RespacedDDPMScheduler(variance_type="learned", **SCHEDULE)
    plain = DDPMScheduler(**SCHEDULE)
    assert not is_truncated_ddpm(plain)
    plain.set_timesteps(50)
    assert is_truncated_ddpm(plain) and not is_truncated_ddpm(sched) and not is_truncated_ddpm(DDIMScheduler(**SCHEDULE))
