from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from monai_breastlt.losses import min_snr_weights, weighted_diffusion_loss


def _snr(sched, t):
    a = sched.alphas_cumprod[t].double()
    return a / (1 - a)


@pytest.mark.parametrize(
    "kind, formula",
    [
        ("epsilon", lambda snr, g: torch.minimum(snr, torch.tensor(g, dtype=snr.dtype)) / snr),
        ("v_prediction", lambda snr, g: torch.minimum(snr, torch.tensor(g, dtype=snr.dtype)) / (snr + 1)),
        ("sample", lambda snr, g: torch.minimum(snr, torch.tensor(g, dtype=snr.dtype))),
    ],
)
def test_min_snr_weights_match_the_paper(kind, formula):
    sched = DDPMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, prediction_type=kind)
    t = torch.tensor([0, 10, 100, 300, 600, 999])
    w = min_snr_weights(sched, t, 5.0)
    assert w.shape == (6,) and w.dtype == torch.float32
    assert torch.allclose(w.double(), formula(_snr(sched, t), 5.0), rtol=1e-5)


def test_min_snr_weights_by_hand():
    sched = DDPMScheduler(1000)
    t = torch.tensor([0, 999])
    snr = _snr(sched, t)
    assert snr[0] > 5 > snr[1]  # a clean step above the clip, a noisy one below
    w = min_snr_weights(sched, t, 5.0)
    assert w[0] == pytest.approx(float(5.0 / snr[0]), rel=1e-5)  # easy step down-weighted
    assert w[1] == pytest.approx(1.0)  # below the clip: the plain loss
    assert torch.allclose(min_snr_weights(sched, t, 1e12), torch.ones(2))  # no clip: plain MSE
    with pytest.raises(ValueError, match="gamma must be > 0"):
        min_snr_weights(sched, t, 0.0)
    sched.prediction_type = "score"
    with pytest.raises(ValueError, match="prediction_type must be"):
        min_snr_weights(sched, t, 5.0)


def test_weighted_diffusion_loss():
    pred, target = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 3.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert float(weighted_diffusion_loss(pred, target)) == pytest.approx(5.0)  # (1 + 9) / 2: plain MSE
    assert float(weighted_diffusion_loss(pred, target, torch.tensor([2.0, 0.0]))) == pytest.approx(1.0)  # (2 * 1 + 0) / 2
    with pytest.raises(ValueError, match="one per sample"):
        weighted_diffusion_loss(pred, target, torch.ones(3))
    with pytest.raises(ValueError, match="must equal target shape"):
        weighted_diffusion_loss(pred, target[:1])


def test_min_snr_weights_at_pure_noise():
    sched = DDPMScheduler(10)
    sched.alphas_cumprod = torch.tensor([0.99, 0.5, 0.0] + [0.5] * 7)  # a schedule that reaches SNR 0
    t = torch.tensor([0, 1, 2])
    assert torch.allclose(min_snr_weights(sched, t, 5.0), torch.tensor([5.0 / 99.0, 1.0, 1.0]))  # limit at SNR 0: 1
    sched.prediction_type = "v_prediction"
    assert torch.allclose(min_snr_weights(sched, t, 5.0), torch.tensor([5.0 / 100.0, 0.5, 0.0]))
