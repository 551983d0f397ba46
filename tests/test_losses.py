import math

import torch
import torch.nn.functional as F

from study.training.losses import kd_loss


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


def test_kd_ls_is_kd_on_standardised_logits_and_shift_scale_invariant():
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    y = torch.tensor([0, 1, 2, 3])
    _, _, a = kd_loss(s, t, y, temperature=2.0, alpha=0.0, kind="kd_ls")
    _, _, b = kd_loss(3 * s + 5, 0.5 * t - 2, y, temperature=2.0, alpha=0.0, kind="kd_ls")
    assert torch.allclose(a, b, atol=1e-5)


def test_dkd_hand_computed_and_zero_for_identical_logits():
    # 3 classes, target 0: check TCKD + beta * NCKD against an explicit computation.
    s = torch.tensor([[2.0, 1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 2.0]])
    y = torch.tensor([0])
    temp, beta = 1.0, 8.0
    ps, pt = torch.softmax(s, 1)[0], torch.softmax(t, 1)[0]
    bs, bt = torch.tensor([ps[0], 1 - ps[0]]), torch.tensor([pt[0], 1 - pt[0]])
    tckd = (bt * (bt / bs).log()).sum()
    ns, nt = torch.softmax(s[0, 1:], 0), torch.softmax(t[0, 1:], 0)
    nckd = (nt * (nt / ns).log()).sum()
    _, _, term = kd_loss(s, t, y, temperature=temp, alpha=0.0, kind="dkd", dkd_beta=beta)
    assert math.isclose(term.item(), (tckd + beta * nckd).item(), rel_tol=1e-4)
    _, _, zero = kd_loss(s, s.clone(), y, temperature=4.0, alpha=0.0, kind="dkd")
    assert abs(zero.item()) < 1e-5


def test_ce_kind_ignores_the_teacher():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    total, ce, term = kd_loss(s, t, y, temperature=4.0, alpha=0.3, kind="ce")
    assert torch.equal(total, ce) and term.item() == 0.0
