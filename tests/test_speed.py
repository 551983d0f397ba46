"""The fast trial loop (optimiser, precision rule, layout) and `python -m devbench.speed` end to end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRIAL

from study.config import make_config
from study.data.datasets import load_dataset
from study.data.streaming import make_resident
from study.models.families import build_model
from study.training.loop import resolve_precision, train_phase

REPO = Path(__file__).resolve().parents[1]


def test_optimizer_is_torch_sgd_with_the_documented_schedule():
    """torch.optim.SGD (nesterov, fused on the CPU) stepping through lr_at: warm-up to the peak, then to 0."""
    from study.training.loop import lr_at, make_optimizer

    model = build_model("resnet8", 10, 1, 0.25)
    opt, sched = make_optimizer(model, lr=0.2, weight_decay=5e-4, total=20, warm=3)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9 and opt.defaults["fused"]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0]  # no decay on BN / bias
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        sched.step()
    assert lrs == pytest.approx([lr_at(i, 0.2, 20, 3) for i in range(20)])
    assert max(lrs) == pytest.approx(0.2) and opt.param_groups[0]["lr"] == 0.0


def test_a_resumed_train_phase_equals_an_uninterrupted_one(tmp_path):
    """The optimiser and LR-schedule state saved after epoch 1 (torch.save, loaded weights_only) continue the
    run exactly: the same weights as training both epochs in one go."""
    cfg = make_config(TINY_TRIAL)
    data = make_resident(load_dataset("digits", "data"), cfg.val_size, cfg.seed, torch.device("cpu"))
    kw = dict(epochs=2, first_epoch=0, seed=0, lr=0.05, batch_size=256, weight_decay=5e-4, teacher=None,
              temperature=1.0, alpha=1.0, precision="fp32")
    torch.manual_seed(0)
    whole = build_model("resnet8", 10, 1, 0.5)
    start = copy.deepcopy(whole)
    train_phase(whole, data, **kw)

    saved = {}

    def stop_after_first(epoch, val_acc, log, state):
        torch.save(state, tmp_path / "opt.pt")
        saved["model"] = copy.deepcopy(model.state_dict())
        raise KeyboardInterrupt  # the trial is killed after epoch 1

    model = start
    with pytest.raises(KeyboardInterrupt):
        train_phase(model, data, on_epoch=stop_after_first, **kw)
    resumed = build_model("resnet8", 10, 1, 0.5)
    resumed.load_state_dict(saved["model"])
    logs = train_phase(resumed, data, skip_epochs=1, resume_opt=torch.load(tmp_path / "opt.pt", weights_only=True),
                       **kw)
    assert [r["epoch"] for r in logs] == [1] and logs[0]["lr"] == 0.0
    for p, q in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_precision_rule():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == ("fp32", True)  # fp32 numerics, the faster NHWC kernels
    assert resolve_precision("bf16", cpu) == ("bf16", True)
    assert resolve_precision("auto", cpu) in (("fp32", True), ("bf16", True))
    assert resolve_precision("auto", torch.device("meta")) == ("fp32", False)
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16"):
        resolve_precision("fp16", cpu)


def test_train_phase_hands_the_model_back_in_the_default_layout():
    cfg = make_config(TINY_TRIAL)
    data = make_resident(load_dataset("digits", "data"), cfg.val_size, cfg.seed, torch.device("cpu"))
    model = build_model("resnet8", 10, 1)
    logs = train_phase(model, data, epochs=1, first_epoch=0, seed=0, lr=0.05, batch_size=256, weight_decay=5e-4,
                       teacher=None, temperature=1.0, alpha=1.0, precision="bf16")
    assert logs[0]["val_acc"] > 10 and logs[0]["lr"] == 0.0  # linear decay to 0 at the last step
    assert all(p.is_contiguous() for p in model.parameters())


def test_speed_benchmark_quick_writes_the_table_and_json(tmp_path):
    out = tmp_path / "speed.json"
    r = subprocess.run([sys.executable, "-m", "devbench.speed", "--quick", "--json", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "c/a" in r.stdout and "images/s" in r.stdout
    res = json.loads(out.read_text())
    assert set(res["students"]) == {"resnet20", "resnet8"}
    assert res["cache_build_s"] >= 0 and res["images"] > 0
    for s in res["students"].values():
        for key in ("ratio_ours_vs_plain", "ratio_cache_vs_live", "ratio_live_vs_plain"):
            assert s[key] > 0
        for loop in ("plain", "live", "cache"):
            assert s[loop]["images_per_s"] > 0 and s[loop]["peak_mem_mib"] > 0
            assert 0 <= s[loop]["teacher_share"] < 1
        assert s["live"]["teacher_share"] > 0 and s["cache_lookups_live_fallback"] == 0


def test_crop_flip_equals_per_image_slicing():
    from study.data.streaming import crop_flip

    g = torch.Generator().manual_seed(0)
    pad, n = 4, 12
    xp = torch.randint(0, 256, (n, 3, 32 + 2 * pad, 32 + 2 * pad), generator=g, dtype=torch.uint8)
    dy, dx = torch.randint(0, 2 * pad + 1, (n,), generator=g), torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.randint(0, 2, (n,), generator=g).bool()
    out = crop_flip(xp, dy, dx, flip, pad)
    for i in range(n):
        want = xp[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        assert torch.equal(out[i], want.flip(-1) if flip[i] else want), i


@pytest.mark.parametrize("n,batch,want", [(1150, 128, 9), (1281, 128, 10), (1290, 128, 10), (100, 128, 1),
                                          (1, 128, 1), (256, 128, 2), (33, 16, 2), (40, 16, 3), (5, 4, 1)])
def test_batches_per_epoch_drops_only_a_tiny_tail(n, batch, want):
    from study.training.loop import batches_per_epoch

    assert batches_per_epoch(n, batch) == want  # a tail under max(2, batch // 4) goes, unless it is all there is


def test_the_learning_rate_reaches_zero_at_the_last_step_taken():
    """33 images in batches of 16: the 1-image tail is dropped, so an epoch is 2 steps, and the schedule must end
    at lr 0 after them (counting 3 left it at a third of the peak)."""
    from study.data.streaming import ResidentData
    from study.models.families import build_model
    from study.training.loop import train_phase

    n = 33
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)
    val = torch.zeros(4, 1, 8, 8)
    data = ResidentData(x, torch.randint(0, 2, (n,)), val, torch.zeros(4, dtype=torch.int64), val,
                        torch.zeros(4, dtype=torch.int64), 0, False, 2, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    logs = train_phase(build_model("resnet8", 2, 1, 0.25), data, epochs=2, first_epoch=0, seed=0, lr=0.1,
                       batch_size=16, weight_decay=0.0, teacher=None, temperature=1.0, alpha=1.0)
    assert logs[-1]["lr"] == 0.0 and logs[0]["lr"] > 0
