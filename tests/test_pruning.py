import copy

import pytest
import torch

from study.core.errors import UserError
from study.models.costs import count_params
from study.models.families import build_model
from study.models.pruning import PRUNE_METHODS, prune_model, reapply_mask, sparsity_mask

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 torch thread, restored after


def _model(name="resnet20", width=0.5):
    torch.manual_seed(0)
    return build_model(name, num_classes=10, width_mult=width)


@pytest.mark.parametrize("method", ["l1_structured", "l2_structured"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_structured_removes_about_one_minus_keep_squared(method, ratio):
    model = _model().train()
    x = torch.randn(2, 3, 32, 32)
    r = prune_model(model, method, ratio, x[:1])
    expected = 1 - (1 - ratio) ** 2
    assert r["prune_method"] == method and r["prune_ratio"] == ratio
    assert abs(1 - r["params_after"] / r["params_before"] - expected) < 0.15
    assert abs(1 - r["macs_after"] / r["macs_before"] - expected) < 0.15
    assert r["params_after"] == count_params(model)
    assert model.training  # mode kept
    assert model.fc.out_features == 10
    assert model(x).shape == (2, 10)


def test_structured_keeps_bn_statistics_and_mixed_modes():
    model = _model().train()
    model.fc.eval()  # a per-module mode must survive too
    before = model.bn1.running_mean.clone()
    prune_model(model, "l1_structured", 0.5, torch.randn(4, 3, 32, 32) + 5)
    kept = model.bn1.running_mean.numel()
    assert kept < before.numel()
    assert torch.all(model.bn1.running_mean == 0)  # tracing ran in eval: stats untouched (init zeros)
    assert model.training and not model.fc.training


def test_l1_and_l2_rank_channels_differently():
    base = _model()
    torch.manual_seed(1)
    with torch.no_grad():  # heavy-tailed weights: few large entries favour L2, many medium ones favour L1
        for m in base.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.distributions.Cauchy(0.0, 1.0).sample(m.weight.shape))
    kept = {}
    for method in ["l1_structured", "l2_structured"]:
        model = copy.deepcopy(base)
        prune_model(model, method, 0.5, torch.randn(1, 3, 32, 32))
        kept[method] = torch.cat([p.flatten() for p in model.parameters()])
    assert kept["l1_structured"].shape == kept["l2_structured"].shape  # same channel counts...
    assert not torch.equal(kept["l1_structured"], kept["l2_structured"])  # ...different channels kept


def test_round_to_gives_multiples():
    model = _model(width=1.0)  # 16/32/64 channels
    prune_model(model, "l2_structured", 0.4, torch.randn(1, 3, 32, 32), round_to=8)
    outs = {m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(c % 8 == 0 for c in outs), outs


def test_unstructured_zeros_conv_weights_and_stays_dense():
    model = _model()
    conv_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 3, 32, 32)
    r = prune_model(model, "l1_unstructured", 0.5, x[:1])
    assert r["params_after"] == r["params_before"]
    assert r["macs_after"] == r["macs_before"]
    removed = r["params_before"] - r["nonzero_params_after"]
    assert abs(removed / conv_weights - 0.5) < 0.02
    assert torch.count_nonzero(model.fc.weight) == model.fc.weight.numel()  # classifier left dense
    keys = list(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    clone = copy.deepcopy(model)
    assert torch.equal(clone(x), model(x))


def test_masks_keep_zeros_through_an_optimizer_step():
    model = _model()
    prune_model(model, "l1_unstructured", 0.6, torch.randn(1, 3, 32, 32))
    masks = sparsity_mask(model)
    assert masks and all(m.dtype == torch.bool for m in masks.values())
    weights = dict(model.named_parameters())
    zeros = sum(int((weights[k] == 0).sum()) for k in masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    assert sum(int((weights[k] == 0).sum()) for k in masks) < zeros  # the step revived pruned weights...
    reapply_mask(model, masks)
    assert all(torch.equal(weights[k] != 0, m) for k, m in masks.items())  # ...the mask zeroes exactly them


def test_dense_model_has_no_masks():
    assert sparsity_mask(_model()) == {}


@pytest.mark.parametrize(("method", "ratio"), [("none", 0.5), ("l1_structured", 0.0), ("l1_unstructured", 0.0)])
def test_noop(method, ratio):
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    r = prune_model(model, method, ratio, torch.randn(1, 3, 32, 32))
    assert r["params_after"] == r["params_before"] and r["macs_after"] == r["macs_before"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["resnet8x4", "resnet18", "wrn_16_2"])
def test_structured_other_families(name):
    model = _model(name, width=0.25)
    x = torch.randn(2, 3, 16, 16)
    r = prune_model(model, "l1_structured", 0.5, x[:1])
    assert r["params_after"] < 0.5 * r["params_before"]
    assert model(x).shape == (2, 10)


def test_bad_inputs_raise_user_error():
    with pytest.raises(UserError, match="l1_structured"):
        prune_model(_model(), "random", 0.5, torch.randn(1, 3, 32, 32))
    with pytest.raises(UserError, match=r"\[0, 1\)"):
        prune_model(_model(), "l1_structured", 1.0, torch.randn(1, 3, 32, 32))
    assert set(PRUNE_METHODS) == {"none", "l1_structured", "l2_structured", "l1_unstructured"}
