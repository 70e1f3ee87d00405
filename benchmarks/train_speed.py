"""Training speed of the five systems on this CPU: fp32 against bf16-mixed (autocast, fp32 weights: what
Lightning's ``precision: bf16-mixed`` does), and channels_last against the default layout for the
convolutional models, on 1 and 2 threads.

Each system trains through its own task's ``training_step`` (the loss the runs use) at the size of its CPU
config (``configs/*.yaml``) on a fixed synthetic batch, from the same seed in every setting: one warm-up
step, then ``--steps`` timed steps (forward, loss, backward, AdamW step). Printed per setting: training
samples/s and the loss after the timed steps (the same steps from the same start: a large change in this
loss would mean the setting changes training, not only its speed).

    python benchmarks/train_speed.py [--steps 4] [--threads 1 2] [--systems grf pgf_net gpf_net ea_dk bipvl_seg]
                                     [--bf16 auto|yes|no]

Prints one table; nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
import warnings

import torch
import transformers

from bench_utils import print_environment
from gpfuse.encoders.text import tokenize
from gpfuse.models import create_model
from gpfuse.tasks.regression import RegressionTask
from gpfuse.tasks.retrieval import RetrievalTask
from gpfuse.tasks.segmentation import SegmentationTask
from gpfuse.tasks.segmentation3d import Segmentation3DTask
from gpfuse.utils.environment import cpu_native_bf16

warnings.filterwarnings("ignore", message=".*self.trainer` reference is not registered")  # self.log outside a Trainer
transformers.utils.logging.disable_progress_bar()
logging.getLogger("gpfuse.encoders.image").setLevel(logging.ERROR)  # "random init": speed needs no weights


def _sentiment_batch(n: int, text: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {
        "audio": torch.randn(n, 1, 73, generator=g),
        "audio_mask": torch.ones(n, 1, dtype=torch.bool),
        "label": torch.empty(n).uniform_(-3, 3, generator=g),
    }
    if text:
        words = ["the", "movie", "was", "really", "not", "good", "bad", "and", "i", "think"]
        texts = [" ".join(words[(i + k) % 10] for k in range(40)) for i in range(n)]
        ids, mask = tokenize(texts, "minilm", 50)
        batch.update(text_ids=torch.from_numpy(ids), text_mask=torch.from_numpy(mask))
    else:
        batch.update(text=torch.randn(n, 50, 384, generator=g), text_mask=torch.ones(n, 50, dtype=torch.bool))
    return batch


def grf():
    """GRF, configs/grf_mosi.yaml: batch 32, 50 MiniLM text states + 1 audio step."""
    model = create_model("grf", input_dims={"text": 384, "audio": 73}, order=["text", "audio"])
    return RegressionTask(model, max_epochs=1), _sentiment_batch(32, text=False), None


def pgf_net():
    """PGF-Net, configs/pgf_net_mosi.yaml: batch 32, 50 MiniLM tokens + 1 audio step, LoRA."""
    model = create_model("pgf_net", input_dims={"audio": 73})
    return RegressionTask(model, lr=5e-4, max_epochs=1), _sentiment_batch(32, text=True), None


def gpf_net():
    """GPF-Net, configs/gpf_net_cuhk01.yaml: EfficientNet-Lite0, P x K = 8 x 4 images of 160 x 64, image only."""
    model = create_model(
        "gpf_net",
        num_classes=8,
        image_encoder="efficientnet_lite0",
        image_weights=None,
        text_model=None,
        dim=256,
        norm_first=True,
    )
    batch = {
        "image": torch.randn(32, 3, 160, 64),
        "pid": torch.arange(8).repeat_interleave(4),
        "camid": torch.zeros(32, dtype=torch.long),
    }
    return RetrievalTask(model, max_epochs=1), batch, torch.channels_last


def ea_dk():
    """EA-DK, configs/ea_dk_kvasir.yaml: EfficientNet-Lite0, batch 16 of 256 x 256."""
    model = create_model("ea_dk", encoder="efficientnet_lite0", encoder_weights=None)
    image = torch.randn(16, 3, 256, 256)
    batch = {"image": image, "mask": (image[:, :1] > 0.5).float()}
    return SegmentationTask(model, optimizer="adamw", lr=1e-3, max_epochs=1), batch, torch.channels_last


def bipvl_seg():
    """BiPVL-Seg, configs/bipvl_seg_hippocampus.yaml: Swin UNETR feature size 12, 2 patches of 32 x 64 x 32,
    MiniLM class texts, alignment losses."""
    names = ("background", "anterior hippocampus", "posterior hippocampus")
    texts = [
        [f"A medical image of the {n}."] + [f"The {n} is described by concept {k}." for k in range(5)] for n in names
    ]
    model = create_model("bipvl_seg", num_classes=3, class_texts=texts, feature_size=12, fusion_heads=4, fusion_mlp=256)
    image = torch.randn(2, 1, 32, 64, 32)
    batch = {"image": image, "label": (image > 0.8).long() + (image > 1.6).long()}
    return Segmentation3DTask(model, names, roi_size=(32, 64, 32), max_epochs=1), batch, torch.channels_last_3d


SYSTEMS = {f.__name__: f for f in (grf, pgf_net, gpf_net, ea_dk, bipvl_seg)}


def measure(name: str, bf16: bool, channels_last: bool, steps: int) -> tuple[float, float] | None:
    """(training samples/s, loss after the timed steps), or None where the setting does not apply."""
    torch.manual_seed(0)
    task, batch, memory_format = SYSTEMS[name]()
    if channels_last and memory_format is None:
        return None
    if channels_last:
        task = task.to(memory_format=memory_format)
        batch = {k: v.contiguous(memory_format=memory_format) if k == "image" else v for k, v in batch.items()}
    task.train()
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> float:
        optimizer.zero_grad()
        with autocast:
            loss = task.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    size = len(next(iter(batch.values())))
    return steps * size / (time.perf_counter() - start), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument(
        "--bf16",
        choices=["auto", "yes", "no"],
        default="auto",
        help="measure bf16 autocast: auto = only on a CPU with native bf16 (emulated, it takes minutes a step)",
    )
    args = parser.parse_args()
    print_environment()
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and cpu_native_bf16())
    if not bf16:
        why = "--bf16 no" if args.bf16 == "no" else "no native bf16 on this CPU (--bf16 yes measures it anyway)"
        print(f"bf16 columns skipped: {why}")
    print(
        f"training samples/s (loss after {args.steps} timed steps), torch {torch.__version__}, "
        f"bf16 = autocast bfloat16 with fp32 weights; '-' where channels_last does not apply"
    )
    settings = [(b, cl) for cl in (False, True) for b in ((False, True) if bf16 else (False,))]
    header = " | ".join(f"{('bf16' if b else 'fp32') + (' + CL' if c else ''):>17}" for b, c in settings)
    print(f"{'system':<10} | {'threads':>7} | {header}")
    for name in args.systems:
        for threads in args.threads:
            torch.set_num_threads(threads)
            cells = []
            for bf16, cl in settings:
                result = measure(name, bf16, cl, args.steps)
                cells.append(f"{'-':>17}" if result is None else f"{result[0]:>8.2f} ({result[1]:6.3f})")
            print(f"{name:<10} | {threads:>7} | {' | '.join(cells)}", flush=True)


if __name__ == "__main__":
    main()
