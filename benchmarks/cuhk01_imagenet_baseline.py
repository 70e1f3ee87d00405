"""Reference line for the CUHK01 result: ImageNet EfficientNet-Lite0 features with no ReID training.

Pooled last-stage features of the shipped ImageNet weights, cosine distance, on the same 10 random
485/486 identity splits (camera A query, camera B gallery) as ``configs/gpf_net_cuhk01.yaml``.

    python benchmarks/cuhk01_imagenet_baseline.py [--root ../shared/data/cuhk01] [--size 160 64] [--splits 10]

Prints mAP / Rank-1 / mINP per split and their mean ± std; nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench_utils import print_environment
from gpfuse.data.cuhk01 import load_cuhk01
from gpfuse.data.reid import ImageTransform, ReIDImageDataset
from gpfuse.encoders.image import EfficientNetLite0Encoder, get_image_encoder, global_pool
from gpfuse.metrics.reid import evaluate_features


@torch.no_grad()
def features(encoder: torch.nn.Module, dataset: ReIDImageDataset, batch: int = 128) -> torch.Tensor:
    out = []
    for start in range(0, len(dataset), batch):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch, len(dataset)))])
        out.append(global_pool(encoder(images)))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/cuhk01")
    parser.add_argument("--size", type=int, nargs=2, default=(160, 64))
    parser.add_argument("--splits", type=int, default=10)
    args = parser.parse_args()
    print_environment()
    encoder = get_image_encoder("efficientnet_lite0", weights="imagenet").eval()
    transform = ImageTransform(
        tuple(args.size), mean=EfficientNetLite0Encoder.input_mean, std=EfficientNetLite0Encoder.input_std
    )
    rows = []
    for split_index in range(args.splits):
        split = load_cuhk01(args.root, split_index, val_ids=50, seed=42)
        query, gallery = ReIDImageDataset(split.query, transform), ReIDImageDataset(split.gallery, transform)
        cmc, mAP, mINP = evaluate_features(
            features(encoder, query),
            features(encoder, gallery),
            query.pids,
            gallery.pids,
            [it.camid for it in query.items],
            [it.camid for it in gallery.items],
            metric="cosine",
        )
        rows.append((mAP, cmc[0], mINP))
        print(f"split {split_index}: mAP {mAP:.4f}  rank1 {cmc[0]:.4f}  mINP {mINP:.4f}", flush=True)
    values = np.array(rows)
    mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else np.zeros(3)
    print(
        f"mean ± std over {len(rows)} splits: mAP {mean[0]:.4f} ± {std[0]:.4f}  rank1 {mean[1]:.4f} ± {std[1]:.4f}"
        f"  mINP {mean[2]:.4f} ± {std[2]:.4f}"
    )


if __name__ == "__main__":
    main()
