"""GPF-Net's fusion stack on frozen CUHK01 features: post-LN (paper) vs pre-LN (``norm_first``) vs no stack.

Pooled EfficientNet-Lite0 ImageNet features of every CUHK01 image (and of its mirror image) are computed
once; then only GPF-Net's bottleneck, fusion stack, encoder and classifier train on them (ID + batch-hard
triplet losses, P x K = 8 x 4, AdamW, one warm-up epoch then cosine per step), image-only, on split 0
with the 50 validation identities of ``configs/gpf_net_cuhk01.yaml``. Seconds per epoch instead of a
minute: the tool that separated the fusion stack's own behaviour from the image encoder's
(docs/results.md, CUHK01).

    python benchmarks/gpf_frozen_features.py [--epochs 20] [--lrs 2.5e-4 1e-3] [--split 0]

Prints validation and test mAP / Rank-1 (%) of each variant at each learning rate.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.nn import functional as F

from bench_utils import print_environment
from gpfuse.data.cuhk01 import load_cuhk01
from gpfuse.data.reid import ImageTransform, ReIDImageDataset, ReIDItem
from gpfuse.encoders.image import EfficientNetLite0Encoder, get_image_encoder, global_pool
from gpfuse.losses import batch_hard_triplet_loss
from gpfuse.metrics.reid import evaluate_features
from gpfuse.models import create_model

VARIANTS = {
    "post-LN stack (paper)": {"norm_first": False},
    "pre-LN stack (norm_first)": {"norm_first": True},
    "no stack (bottleneck only)": None,
}


@torch.no_grad()
def cache_features(items: list[ReIDItem], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 320) pooled features of the images and of their mirror images."""
    encoder = get_image_encoder("efficientnet_lite0", weights="imagenet").eval()
    dataset = ReIDImageDataset(
        items, ImageTransform(size, mean=EfficientNetLite0Encoder.input_mean, std=EfficientNetLite0Encoder.input_std)
    )
    plain, mirrored = [], []
    for start in range(0, len(dataset), 128):
        x = torch.stack([dataset[i]["image"] for i in range(start, min(start + 128, len(dataset)))])
        plain.append(global_pool(encoder(x)))
        mirrored.append(global_pool(encoder(x.flip(-1))))
    return torch.cat(plain), torch.cat(mirrored)


def train_and_rank(
    split,
    feats: dict[str, torch.Tensor],
    flips: torch.Tensor,
    options: dict | None,
    lr: float,
    epochs: int,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    torch.manual_seed(seed)
    pids = torch.tensor([it.pid for it in split.train])
    num_ids = int(pids.max()) + 1
    net = create_model(
        "gpf_net", num_classes=num_ids, image_encoder="efficientnet_lite0", text_model=None, **(options or {})
    )
    embed = (lambda t: net.fuse(t)[0]) if options is not None else (lambda t: t)
    params = [p for n, p in net.named_parameters() if not n.startswith("image_encoder.")]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
    steps, p, k = len(pids) // 32, 8, 4
    total, warmup = epochs * steps, steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    by_id = [torch.nonzero(pids == i).squeeze(1) for i in range(num_ids)]
    net.train()
    for _ in range(epochs):
        order = torch.randperm(num_ids)
        for step in range(steps):
            rows = torch.cat([by_id[i][torch.randperm(len(by_id[i]))[:k]] for i in order[step * p : (step + 1) * p]])
            x = torch.where(torch.rand(len(rows), 1) < 0.5, feats["train"][rows], flips[rows])
            emb = embed(net.bottleneck(x))
            loss = F.cross_entropy(net.classifier(emb), pids[rows]) + batch_hard_triplet_loss(emb, pids[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    net.eval()
    results = {}
    with torch.no_grad():
        for stage, (q, g) in {"valid": ("val_query", "val_gallery"), "test": ("query", "gallery")}.items():
            qi, gi = getattr(split, q), getattr(split, g)
            cmc, mAP, _ = evaluate_features(
                embed(net.bottleneck(feats[q])),
                embed(net.bottleneck(feats[g])),
                [it.pid for it in qi],
                [it.pid for it in gi],
                [it.camid for it in qi],
                [it.camid for it in gi],
                max_rank=10,
            )
            results[stage] = (100 * mAP, 100 * cmc[0])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/cuhk01")
    parser.add_argument("--size", type=int, nargs=2, default=(160, 64))
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lrs", type=float, nargs="+", default=(2.5e-4, 1e-3))
    args = parser.parse_args()
    print_environment()
    split = load_cuhk01(args.root, args.split, val_ids=50, seed=42)
    feats, flips = {}, None
    for name in ("train", "val_query", "val_gallery", "query", "gallery"):
        feats[name], mirrored = cache_features(getattr(split, name), tuple(args.size))
        flips = mirrored if name == "train" else flips
    print(f"CUHK01 split {args.split}, frozen ImageNet EfficientNet-Lite0 features, {args.epochs} epochs")
    print(f"{'variant':<28} | {'lr':>7} | {'valid mAP':>9} | {'valid R1':>8} | {'test mAP':>8} | {'test R1':>7}")
    for name, options in VARIANTS.items():
        for lr in args.lrs:
            r = train_and_rank(split, feats, flips, options, lr, args.epochs)
            print(
                f"{name:<28} | {lr:>7.1e} | {r['valid'][0]:>9.2f} | {r['valid'][1]:>8.2f} | {r['test'][0]:>8.2f} | "
                f"{r['test'][1]:>7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
