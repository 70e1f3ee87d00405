"""Mixed precision for all five systems, through their tasks: `bf16-mixed` training with Lightning on this CPU
lowers the loss with no NaN or inf in any module's output (masked attention fills, InfoNCE logits, gates);
fp16 autocast (the GPU recipes' `16-mixed`; CPU autocast as the stand-in) keeps every output finite."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import test_models_bipvl_seg as bipvl
import test_models_gpf_net as gpf
import test_models_grf as grf
import test_models_pgf_net as pgf
from gpfuse.models import create_model
from gpfuse.tasks.regression import RegressionTask
from gpfuse.tasks.retrieval import RetrievalTask
from gpfuse.tasks.segmentation import SegmentationTask
from gpfuse.tasks.segmentation3d import Segmentation3DTask


def _grf():
    batch = grf._batch(n=8)
    batch["label"] = batch["text"][:, 0, 0] * 2  # learnable from the first text step
    model = create_model("grf", **{**grf.MODELS["grf"], "dropout": 0.0})
    return RegressionTask(model, lr=1e-2, warmup_epochs=0, max_epochs=1), batch


def _pgf():
    return RegressionTask(
        create_model("pgf_net", input_dims=pgf.DIMS, fusion_heads=4), lr=3e-3, warmup_epochs=0, max_epochs=1
    ), pgf._batch()


def _gpf():
    model = create_model("gpf_net", **{**gpf.SMALL, "bottleneck_dropout": 0.0, "dropout": 0.0})
    return RetrievalTask(model, lr=1e-3, lr_backbone=1e-3, max_epochs=1, margin=0.3), {
        **gpf._batch(),
        "camid": torch.zeros(4, dtype=torch.long),
    }


def _ea_dk():
    torch.manual_seed(0)
    image = torch.randn(2, 3, 64, 64)
    mask = (image[:, :1] > 0.3).float()
    model = create_model("ea_dk", encoder="efficientnet_lite0", encoder_weights=None, channels=16)
    return SegmentationTask(model, optimizer="adamw", lr=3e-3, schedule="warmup_cosine", max_epochs=1), {
        "image": image,
        "mask": mask,
    }


def _bipvl():
    torch.manual_seed(0)
    x = torch.randn(1, 1, *bipvl.PATCH)
    label = (x > 0.5).long() + (x > 1.5).long()
    model = create_model("bipvl_seg", **bipvl.SMALL)  # alignment on: InfoNCE and class CE in reduced precision
    names = ("background", "bright organ", "dark organ")
    return Segmentation3DTask(model, names, roi_size=bipvl.PATCH, lr=3e-3, max_epochs=1), {"image": x, "label": label}


SYSTEMS = {
    "grf": (_grf, 30),
    "pgf_net": (_pgf, 5),
    "gpf_net": (_gpf, 5),
    "ea_dk": (_ea_dk, 6),
    "bipvl_seg": (_bipvl, 2),  # few steps: bf16 is emulated (slow) on CPUs without AVX512-BF16
}


def _watch_finite(model: torch.nn.Module) -> tuple[list[str], list]:
    """Forward hooks that record every module whose output holds a NaN or inf."""
    bad: list[str] = []

    def hook(name):
        def check(module, inputs, output):
            tensors = output if isinstance(output, (tuple, list)) else [output]
            tensors = [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
            if any(not torch.isfinite(t).all() for t in tensors):
                bad.append(f"{name} ({type(module).__name__})")

        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    return bad, handles


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_bf16_mixed_training_lowers_the_loss_with_finite_values(system):
    build, steps = SYSTEMS[system]
    task, batch = build()
    bad, handles = _watch_finite(task)
    losses = _Losses()
    loader = torch.utils.data.DataLoader([batch] * steps, batch_size=None)  # the same batch, `steps` times
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
        gradient_clip_val=1.0,
    )
    trainer.fit(task, train_dataloaders=loader)
    for h in handles:
        h.remove()
    assert not bad, f"non-finite outputs under bf16-mixed: {bad[:5]}"
    assert all(torch.isfinite(torch.tensor(losses.losses))) and len(losses.losses) == steps
    assert min(losses.losses[-3:]) < losses.losses[0], losses.losses
    assert all(p.dtype == torch.float32 for p in task.parameters())  # mixed: the weights stay fp32


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_fp16_autocast_outputs_are_finite(system):
    task, batch = SYSTEMS[system][0]()
    bad, handles = _watch_finite(task)
    task.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        out = task(batch)
    for h in handles:
        h.remove()
    assert not bad, f"non-finite outputs under fp16 autocast: {bad[:5]}"
    first = out[0] if isinstance(out, tuple) else out.logits
    assert torch.isfinite(first.float()).all()
