import pytest
import torch

from study.core.errors import UserError
from study.models.costs import count_params
from study.models.families import MODELS, build_model, model_names

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: 1 torch thread, restored after

# Full width on 32x32 is cheap for all but the largest; they still run at reduced width below.
LARGE = {"resnet110", "resnet32x4", "resnet18", "resnet34", "wrn_40_2"}


@pytest.mark.parametrize("name", model_names())
def test_forward_rgb_32(name):
    width = 0.5 if name in LARGE else 1.0
    model = build_model(name, num_classes=10, width_mult=width)
    assert isinstance(model.fc, torch.nn.Linear)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", model_names())
def test_forward_gray_tiny_input(name):
    model = build_model(name, num_classes=7, in_channels=1, width_mult=0.25)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    assert model.fc.out_features == 7


def test_registry_covers_contract():
    expected = {
        "resnet8",
        "resnet14",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet8x4",
        "resnet32x4",
        "resnet18",
        "resnet34",
        "wrn_16_1",
        "wrn_16_2",
        "wrn_40_1",
        "wrn_40_2",
    }
    assert set(MODELS) == expected


def test_unknown_name_lists_valid_names():
    with pytest.raises(UserError, match="resnet20"):
        build_model("resnet21", 10)


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "resnet18", "wrn_16_2"])
def test_half_width_quarters_params(name):
    ratio = count_params(build_model(name, 10)) / count_params(build_model(name, 10, width_mult=0.5))
    assert 3.6 < ratio < 4.1


@pytest.mark.parametrize(("name", "params"), [("resnet20", 272_474), ("resnet56", 855_770), ("wrn_40_2", 2_243_546)])
def test_known_sizes(name, params):
    # option-B shortcuts add a few 1x1 convs over the 0.27M / 0.85M / 2.2M usually quoted.
    assert count_params(build_model(name, 10)) == params


def test_width_scales_stem_and_stages():
    model = build_model("resnet8x4", 10, width_mult=0.5)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].out_channels == 16  # stem 32 * 0.5
    assert convs[-1].out_channels == 128  # last stage 256 * 0.5
    tiny = build_model("resnet20", 10, width_mult=0.01)
    assert min(m.out_channels for m in tiny.modules() if isinstance(m, torch.nn.Conv2d)) == 4
