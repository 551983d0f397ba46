import math

import torch
import torch.nn.functional as F

from study.losses import kd_loss


def test_alpha_one_is_cross_entropy():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    total, ce, _ = kd_loss(s, t, y, temperature=3.0, alpha=1.0)
    assert torch.allclose(total, F.cross_entropy(s, y))
    assert torch.allclose(ce, F.cross_entropy(s, y))


def test_hand_computed_value_and_t_squared_scaling():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    temp, alpha = 2.0, 0.25
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = [1 / (1 + math.exp(0.5)), math.exp(0.5) / (1 + math.exp(0.5))]
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    ce = -math.log(math.exp(1) / (math.exp(1) + 1))
    total, ce_t, kd_t = kd_loss(s, t, y, temperature=temp, alpha=alpha)
    assert math.isclose(kd_t.item(), temp**2 * kl, rel_tol=1e-5)
    assert math.isclose(ce_t.item(), ce, rel_tol=1e-5)
    assert math.isclose(total.item(), alpha * ce + (1 - alpha) * temp**2 * kl, rel_tol=1e-5)


def test_identical_logits_have_zero_kd_and_gradient_flows_only_to_student():
    s = torch.randn(3, 5, requires_grad=True)
    t = s.detach().clone()
    _, _, kd = kd_loss(s, t, torch.tensor([0, 1, 2]), temperature=4.0, alpha=0.0)
    assert abs(kd.item()) < 1e-6
    total, _, _ = kd_loss(s, torch.randn(3, 5), torch.tensor([0, 1, 2]), temperature=4.0, alpha=0.0)
    total.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
