"""`python -m devbench.families [ARCH ...]`: which student families the whole pipeline works for.

For each family, at width 0.5 (a knob, or uniform pruning for families without one) and for structured
(l1_structured 30 %) and unstructured (l1_unstructured 30 %) pruning: build, prune, save a checkpoint and load it
back at the pruned shapes (outputs compared), export to ONNX (checked against PyTorch by onnx_backend) and
torch.export. One row per family and method; a failure is printed with its reason.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

DEFAULT = ("torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:mobilenet_v2",
           "torchvision:efficientnet_b0", "torchvision:regnet_y_400mf", "torchvision:shufflenet_v2_x1_0",
           "timm:resnet18", "timm:mobilenetv3_small_050", "resnet8")


def check(arch: str, method: str, shape: tuple[int, int, int] = (3, 32, 32)) -> str:
    from study.measure import onnx as onnx_backend
    from study.models.checkpoint import load_model, save_model
    from study.models.families import build_model
    from study.models.pruning import prune_model

    torch.manual_seed(0)
    model = build_model(arch, 10, shape[0], 0.5, shape).eval()
    prune_model(model, method, 0.3, torch.randn(1, *shape))
    x = torch.randn(4, *shape)
    with tempfile.TemporaryDirectory() as tmp:
        meta = {"arch": arch, "num_classes": 10, "in_channels": shape[0], "width_mult": 0.5, "input_shape": list(shape)}
        save_model(Path(tmp) / "m.pt", model, meta)
        back, _ = load_model(Path(tmp) / "m.pt")
        with torch.no_grad():
            if not torch.allclose(back(x), model(x), atol=1e-4):
                return "checkpoint reload differs"
        exporter, _, _ = onnx_backend.export_checked(model, shape, Path(tmp) / "m.onnx", x, 1)
        torch.export.export(model, (x,))
    return f"ok (reload, ONNX via {exporter}, torch.export)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devbench.families", description=__doc__.splitlines()[0])
    p.add_argument("archs", nargs="*", default=list(DEFAULT))
    args = p.parse_args(argv)
    from study.models.families import model_spec

    print("| family | width by | l1_structured 30 % | l1_unstructured 30 % |")
    print("| --- | --- | --- | --- |")
    for arch in args.archs:
        try:
            width = model_spec(arch).width
        except Exception as e:  # noqa: BLE001  e.g. timm not installed
            print(f"| `{arch}` | - | {e} | |")
            continue
        cells = []
        for method in ("l1_structured", "l1_unstructured"):
            t = time.time()
            try:
                cells.append(f"{check(arch, method)}, {time.time() - t:.1f} s")
            except Exception as e:  # noqa: BLE001  the reason is the result
                cells.append(f"FAIL: {type(e).__name__}: {str(e).splitlines()[0][:90]}")
        print(f"| `{arch}` | {width} | {cells[0]} | {cells[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
