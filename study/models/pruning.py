"""Weight pruning by name: structured channel pruning (torch-pruning DepGraph) or global unstructured magnitude.

The two ratios mean different things, and results say which:
- structured (`l1_structured`, `l2_structured`): `ratio` is the fraction of CHANNELS removed in every prunable group;
  parameters and MACs drop by about 1 - (1 - ratio)^2. The classifier `fc` keeps its outputs (its inputs shrink).
- unstructured (`l1_unstructured`): `ratio` is the fraction of conv WEIGHTS set to zero, ranked globally by |w|.
  Shapes, `params` and dense MACs stay the same; only `nonzero_params` drops, and dense kernels run no faster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from study.core.errors import UserError
from study.core.registry import Registry
from study.models.costs import count_macs, count_nonzero_params, count_params

Pruner = Callable[[nn.Module, float, Tensor, int], None]  # (model, ratio, example_input, round_to), in place


@dataclass(frozen=True)
class PruneMethod:
    """A prune_method entry: how it prunes, and what its ratio counts."""

    apply: Pruner  # prunes the model in place; called only with 0 < ratio < 1
    ratio_unit: str  # what `prune_ratio` is a fraction of: "channels" or "weights"
    structured: bool  # True: channels removed (shapes change); False: zeros kept in dense tensors


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The layers whose outputs are the class scores (Linear, or a 1x1 Conv2d as in SqueezeNet): pruning keeps
    their outputs, so a pruned model still predicts every class."""
    return [m for m in model.modules()
            if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1))]


def _structured(p: int) -> Pruner:
    def apply(model: nn.Module, ratio: float, example_input: Tensor, round_to: int) -> None:
        # Group magnitude: Lp norm over every weight coupled to a channel (conv, BN, shortcut, next conv's input).
        importance = tp.importance.MagnitudeImportance(p=p, group_reduction="mean", normalizer="mean")
        with torch.no_grad():
            num_classes = int(model(example_input).shape[1])
        pruner = tp.pruner.BasePruner(
            model,
            example_input,
            importance=importance,
            pruning_ratio=ratio,  # channel fraction per group
            ignored_layers=classifier_layers(model, num_classes),  # every class keeps its score
            round_to=round_to if round_to > 1 else None,
        )
        # torch-pruning skips any group whose pruning would leave a layer with no channels.
        pruner.step()

    return apply


def _l1_unstructured(model: nn.Module, ratio: float, example_input: Tensor, round_to: int) -> None:
    # Conv weights only: the classifier stays dense, as in the structured methods.
    targets = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d)]
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=ratio)
    # Masked modules rebuild `weight` every forward (slower) and break deepcopy: bake the zeros in.
    for module, name in targets:
        torch_prune.remove(module, name)


def _none(model: nn.Module, ratio: float, example_input: Tensor, round_to: int) -> None:
    return None


def _python_method(obj: object, name: str) -> PruneMethod:
    if isinstance(obj, PruneMethod):
        return obj
    raise UserError(f"prune method {name!r}: the import string must name a study.models.pruning.PruneMethod (got "
                    f"{type(obj).__name__}); wrap the function as PruneMethod(apply, ratio_unit, structured).")


PRUNE_METHODS: Registry[PruneMethod] = Registry("prune method", _python_method)
PRUNE_METHODS.register("none", PruneMethod(_none, "channels", structured=True))
PRUNE_METHODS.register("l1_structured", PruneMethod(_structured(1), "channels", structured=True))
PRUNE_METHODS.register("l2_structured", PruneMethod(_structured(2), "channels", structured=True))
PRUNE_METHODS.register("l1_unstructured", PruneMethod(_l1_unstructured, "weights", structured=False))


def register_prune_method(name: str, method: PruneMethod, *, overwrite: bool = False) -> PruneMethod:
    """Register a PruneMethod (apply(model, ratio, example_input, round_to) in place, its unit, structured)."""
    return PRUNE_METHODS.register(name, method, overwrite=overwrite)


def get_prune_method(name: str) -> PruneMethod:
    """Registered pruning method; unknown name -> UserError listing the valid ones."""
    return PRUNE_METHODS.resolve(name)


def is_structured(name: str) -> bool:
    """Whether `name` removes channels (shapes change) rather than zeroing weights in dense tensors."""
    return get_prune_method(name).structured


class PruneError(UserError):
    """torch-pruning could not trace or prune a model (the trial fails with this sentence before training)."""


def prune_model(model: nn.Module, method: str, ratio: float, example_input: Tensor, round_to: int = 1) -> dict:
    """Prune `model` in place and report params/MACs before and after (see module docstring for `ratio`).

    `example_input` is a (B, C, H, W) batch used to trace the model; train/eval modes are left as they were.
    """
    spec = get_prune_method(method)
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"prune_ratio must be in [0, 1), got {ratio}; fix prune_ratio in the config or search space.")
    if round_to < 1:
        raise UserError(f"round_to must be >= 1, got {round_to}; fix round_to in the config.")
    input_shape = tuple(example_input.shape[1:])
    result = {
        "prune_method": method,
        "prune_ratio": float(ratio),
        "params_before": count_params(model),
        "macs_before": count_macs(model, input_shape),
    }
    if method != "none" and ratio > 0:
        param = next(model.parameters())
        x = example_input.to(device=param.device, dtype=param.dtype)
        modes = {m: m.training for m in model.modules()}
        # Eval: tracing must not update BatchNorm running statistics. Grad on: tp traces the autograd graph.
        model.eval()
        try:
            with torch.enable_grad():
                spec.apply(model, ratio, x, round_to)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001  tp fails on graphs it cannot follow, in many ways
            raise PruneError(f"{method} pruning failed on {type(model).__name__} ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); torch-pruning cannot follow this model's graph: choose another "
                             "family or prune_method l1_unstructured.") from exc
        finally:
            for m, training in modes.items():
                m.training = training
    result.update(
        params_after=count_params(model),
        nonzero_params_after=count_nonzero_params(model),
        macs_after=count_macs(model, input_shape),
    )
    return result


def sparsity_mask(model: nn.Module) -> dict[str, Tensor]:
    """Boolean masks (weight != 0) for conv/linear weights that contain zeros; capture right after pruning."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            mask = module.weight.detach() != 0
            if not bool(mask.all()):
                masks[f"{name}.weight" if name else "weight"] = mask
    return masks


@torch.no_grad()
def reapply_mask(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zero the pruned weights again in place (call after each optimizer step while fine-tuning)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device))
