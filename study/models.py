"""CIFAR-style classifiers picked by name: ResNets (CIFAR and ImageNet-depth with a CIFAR stem) and WideResNets.

Every model works for any input size (adaptive average pooling) and any channel count, and names its final
classifier `fc` (the pruner leaves it alone). Shortcuts that change shape are 1x1 conv (+ BN) ("option B"),
which torch-pruning follows through its dependency graph; zero-padding shortcuts ("option A") do not prune well.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn

from study.errors import UserError


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

MODELS: dict[str, ModelFactory] = {
    **{f"resnet{d}": partial(_cifar_resnet, d) for d in (8, 14, 20, 32, 44, 56, 110)},
    # RepDistiller's x4 variants: stem 32, stages 64/128/256.
    "resnet8x4": partial(_cifar_resnet, 8, stem=32, widths=(64, 128, 256)),
    "resnet32x4": partial(_cifar_resnet, 32, stem=32, widths=(64, 128, 256)),
    "resnet18": partial(_imagenet_depth_resnet, [2, 2, 2, 2]),
    "resnet34": partial(_imagenet_depth_resnet, [3, 4, 6, 3]),
    **{f"wrn_{d}_{k}": partial(WideResNet, d, k) for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
}


def model_names() -> list[str]:
    """Registered model names, in registry order."""
    return list(MODELS)


def build_model(name: str, num_classes: int, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """Build a registered model; `width_mult` scales the stem and every stage (min 4 channels)."""
    if name not in MODELS:
        raise UserError(f"Unknown model {name!r}; valid names: {', '.join(MODELS)}.")
    if width_mult <= 0:
        raise UserError(f"width_mult must be > 0, got {width_mult}; fix the model width in the config.")
    model = MODELS[name](num_classes=num_classes, in_channels=in_channels, width_mult=width_mult)
    return model


__all__ = ["MODELS", "BasicBlock", "ResNet", "WideBlock", "WideResNet", "build_model", "model_names", "scale_width"]
