"""CIFAR-style classifiers picked by name: ResNets (CIFAR and ImageNet-depth with a CIFAR stem) and WideResNets.

Every model works for any input size (adaptive average pooling) and any channel count, and names its final
classifier `fc` (the pruner leaves it alone). Shortcuts that change shape are 1x1 conv (+ BN) ("option B"),
which torch-pruning follows through its dependency graph; zero-padding shortcuts ("option A") do not prune well.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from study.core.errors import UserError
from study.core.registry import Registry
from study.models.pruning import classifier_layers, prune_model


def scale_width(channels: int, width_mult: float) -> int:
    """Channels after width scaling; never fewer than 4 so tiny widths stay trainable."""
    return max(4, round(channels * width_mult))


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN + shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        """ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)), (B, out_ch, H / stride, W / stride)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem (3x3 conv, stride 1, no max-pool) + stages of BasicBlocks + global pool + `fc`."""

    def __init__(
        self,
        blocks: list[int],  # BasicBlocks per stage
        stem: int,  # stem output channels
        widths: list[int],  # output channels per stage
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_ch = stem
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(in_ch if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            in_ch = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, H, W)
        """Class scores (B, num_classes) of images x."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x)).flatten(1)  # (B, C_last)
        return self.fc(x)  # (B, num_classes)


class WideBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis 2016): BN-ReLU-conv-BN-ReLU-conv + shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        # Pre-activation: the next block's BN follows, so the projection needs no BN of its own.
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """conv(ReLU(BN(conv(ReLU(BN(x)))))) + shortcut: x itself, or the projection of ReLU(BN(x))."""
        act = self.relu(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.relu(self.bn2(out)))
        identity = x if self.shortcut is None else self.shortcut(act)
        return out + identity


class WideResNet(nn.Module):
    """WRN-depth-widen: 3 stages of (depth - 4) / 6 pre-activation blocks, widths 16k/32k/64k."""

    def __init__(
        self,
        depth: int,
        widen: int,
        num_classes: int,
        in_channels: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        stem = scale_width(16, width_mult)
        widths = [scale_width(c * widen, width_mult) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        stages = []
        in_ch = stem
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers = [WideBlock(in_ch if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            in_ch = w
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, H, W)
        """Class scores (B, num_classes) of images x."""
        x = self.layers(self.conv1(x))
        x = self.pool(self.relu(self.bn(x))).flatten(1)  # (B, C_last)
        return self.fc(x)  # (B, num_classes)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
            nn.init.zeros_(m.bias)


def _cifar_resnet(
    depth: int,
    num_classes: int,
    in_channels: int = 3,
    width_mult: float = 1.0,
    stem: int = 16,
    widths: tuple[int, ...] = (16, 32, 64),
) -> ResNet:
    # depth = 6n + 2: n BasicBlocks (2 convs each) per stage, plus stem conv and fc.
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(
        [n] * 3,
        scale_width(stem, width_mult),
        [scale_width(w, width_mult) for w in widths],
        num_classes,
        in_channels,
    )


def _imagenet_depth_resnet(
    blocks: list[int], num_classes: int, in_channels: int = 3, width_mult: float = 1.0
) -> ResNet:
    return ResNet(
        blocks,
        scale_width(64, width_mult),
        [scale_width(w, width_mult) for w in (64, 128, 256, 512)],
        num_classes,
        in_channels,
    )


ModelFactory = Callable[..., nn.Module]  # (num_classes, in_channels, width_mult) -> nn.Module


@dataclass(frozen=True)
class ModelSpec:
    """A model family entry. `width`: how `width_mult` scales it. "knob": the builder takes width_mult itself;
    "prune": the builder has no width argument, so the randomly initialised model loses (1 - width_mult) of its
    channels in every prunable layer (torch-pruning, uniform, classifier kept) before training."""

    build: ModelFactory
    width: str = "knob"
    source: str = "kdstudy"  # kdstudy, torchvision, timm, python: where the family comes from (for the record)


def _python_model(obj: object, name: str) -> ModelSpec:
    if isinstance(obj, ModelSpec):
        return obj
    if not callable(obj):
        raise UserError(f"model {name!r}: {type(obj).__name__} is not callable; point the import string at a "
                        "function build(num_classes, in_channels, width_mult) -> nn.Module.")
    import inspect

    try:  # checked here, before anything trains: a TypeError from the call itself would read as a crash
        signature = inspect.signature(obj)
        signature.bind(num_classes=10, in_channels=3, width_mult=1.0)
    except ValueError:  # no signature to read (some builtins): the call will tell
        pass
    except TypeError as exc:
        raise UserError(f"model {name!r}: it takes ({', '.join(signature.parameters)}) ({exc}), but a student is "
                        "built as build(num_classes=..., in_channels=..., width_mult=...); point the import string "
                        "at a function of that signature that returns a torch.nn.Module.") from None
    return ModelSpec(obj, "knob", "python")


MODELS: Registry[ModelSpec] = Registry("model", _python_model)
_BUILTIN_FAMILIES: dict[str, ModelFactory] = {
    **{f"resnet{d}": partial(_cifar_resnet, d) for d in (8, 14, 20, 32, 44, 56, 110)},
    # RepDistiller's x4 variants: stem 32, stages 64/128/256.
    "resnet8x4": partial(_cifar_resnet, 8, stem=32, widths=(64, 128, 256)),
    "resnet32x4": partial(_cifar_resnet, 32, stem=32, widths=(64, 128, 256)),
    "resnet18": partial(_imagenet_depth_resnet, [2, 2, 2, 2]),
    "resnet34": partial(_imagenet_depth_resnet, [3, 4, 6, 3]),
    **{f"wrn_{d}_{k}": partial(WideResNet, d, k) for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
}
for _name, _build in _BUILTIN_FAMILIES.items():
    MODELS.register(_name, ModelSpec(_build))


# torchvision families whose builder takes a width multiplier; every other one is scaled by pruning
_TORCHVISION_WIDTH_KNOB = {"mobilenet_v2": "width_mult"}


def _torchvision_model(name: str) -> ModelSpec:
    try:
        import torchvision.models as tvm
    except ImportError:  # pragma: no cover  torchvision is a dependency
        raise UserError("torchvision: models need torchvision; pip install torchvision.") from None
    available = tvm.list_models(module=tvm)  # classification models only
    if name not in available:
        close = difflib.get_close_matches(name, available, n=1)
        hint = f" Did you mean 'torchvision:{close[0]}'?" if close else ""
        raise UserError(f"Unknown torchvision classification model {name!r}.{hint} See "
                        "torchvision.models.list_models(module=torchvision.models).")
    knob = _TORCHVISION_WIDTH_KNOB.get(name)

    def build(num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
        kwargs = {knob: width_mult} if knob else {}
        # weights=None: nothing is downloaded; student_weights / teacher checkpoints load local files
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        return adapt_input_channels(model, in_channels)

    return ModelSpec(build, "knob" if knob else "prune", "torchvision")


def _timm_model(name: str) -> ModelSpec:
    try:
        import timm
    except ImportError:
        raise UserError(f"timm:{name}: timm is not installed; pip install timm (an optional dependency) or "
                        "use a torchvision: model.") from None
    if name not in timm.list_models():
        raise UserError(f"Unknown timm model {name!r}; see timm.list_models().")

    def build(num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)

    return ModelSpec(build, "prune", "timm")


MODELS.add_prefix("torchvision", _torchvision_model)
MODELS.add_prefix("timm", _timm_model)


def register_model(name: str, build: ModelFactory | None = None, *, width: str = "knob",
                   overwrite: bool = False) -> object:
    """Register a model family `build(num_classes, in_channels, width_mult) -> nn.Module` (or decorate one).
    width="prune" for a builder without a width knob (it is then called with width_mult=1.0 and pruned)."""
    if width not in ("knob", "prune"):
        raise UserError(f"register_model({name!r}): width must be knob or prune (got {width!r}).")

    def add(fn: ModelFactory) -> ModelFactory:
        MODELS.register(name, ModelSpec(fn, width, "python"), overwrite=overwrite)
        return fn

    return add if build is None else add(build)


def _pair(t: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's (H, W) setting (stored as tuple[int, ...]) as the pair its constructor takes."""
    return (t[0], t[1])


def adapt_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Give the model's first Conv2d `in_channels` inputs (grey images for an RGB family); weights, where the
    conv has any worth keeping, are averaged over the old channels and repeated (timm's adapt_input_conv)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels:
                    return model
                if child.groups != 1:
                    raise UserError(f"cannot change the first convolution to {in_channels} input channels (it is "
                                    "grouped); give the data set the channel count the model expects.")
                padding = child.padding if isinstance(child.padding, str) else _pair(child.padding)
                new = nn.Conv2d(in_channels, child.out_channels, _pair(child.kernel_size), _pair(child.stride),
                                padding, _pair(child.dilation), 1, child.bias is not None, child.padding_mode)
                with torch.no_grad():
                    new.weight.copy_(adapt_conv_weight(child.weight, in_channels))
                    if child.bias is not None and new.bias is not None:
                        new.bias.copy_(child.bias)
                setattr(parent, child_name, new)
                return model
    return model


def adapt_conv_weight(weight: Tensor, in_channels: int) -> Tensor:
    """A (O, I, kh, kw) conv weight for `in_channels` inputs: summed over I for one channel, else repeated and
    rescaled by I / in_channels, so the layer's response to a grey image matches that to its RGB copy."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def model_names() -> list[str]:
    """Registered model names, in registry order (prefixed families are resolved on demand)."""
    return list(MODELS)


def model_spec(name: str) -> ModelSpec:
    """The ModelSpec of a registered or python: family name; UserError listing the valid names otherwise."""
    return MODELS.resolve(name)


def build_dense(name: str, num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """The family's model before any width pruning: width_mult applied by a knob family's builder, ignored
    (1.0) by a prune family (checkpoints of those are rebuilt dense and resized to their saved shapes)."""
    spec = MODELS.resolve(name)
    if width_mult <= 0:
        raise UserError(f"width_mult must be > 0, got {width_mult}; fix the model width in the config.")
    model = spec.build(num_classes=num_classes, in_channels=in_channels,
                       width_mult=width_mult if spec.width == "knob" else 1.0)
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r}: its builder returned {type(model).__name__}, not a torch.nn.Module; fix "
                        "the builder.")
    return model


def build_model(name: str, num_classes: int, in_channels: int = 3, width_mult: float = 1.0,
                input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """Build a model family; `width_mult` scales its channels (a knob, or uniform pruning: see ModelSpec)."""
    model = build_dense(name, num_classes, in_channels, width_mult)
    return prune_to_width(model, name, width_mult, input_shape or (in_channels, 32, 32))


def prune_to_width(model: nn.Module, name: str, width_mult: float, input_shape: tuple[int, int, int]) -> nn.Module:
    """A prune family's width: remove (1 - width_mult) of the channels of every prunable layer (L1, uniform,
    classifier kept); a knob family is returned as it is."""
    if MODELS.resolve(name).width != "prune" or width_mult == 1.0:
        return model
    if width_mult > 1.0:
        raise UserError(f"model {name!r} has no width knob, so its width is scaled by pruning channels: "
                        f"width_mult must be <= 1 (got {width_mult}).")
    prune_model(model, "l1_structured", 1.0 - width_mult, torch.randn(1, *input_shape))
    return model


__all__ = ["MODELS", "BasicBlock", "ModelSpec", "ResNet", "WideBlock", "WideResNet", "adapt_conv_weight",
           "adapt_input_channels", "build_dense", "build_model", "classifier_layers", "model_names", "model_spec",
           "prune_to_width", "register_model", "scale_width"]
