"""Probe for the embedding collapse of image-only GPF-Net (docs/results.md, CUHK01 section).

No images: each identity is a random 320-d "backbone feature" centre, a sample is centre + noise. The
bottleneck, the gated progressive fusion stack, the encoder and the classifier are trained with GPF-Net's
ID + batch-hard triplet losses (AdamW), then 50 held-out pairs are ranked with the fused embedding and
with the bottleneck token it is computed from.

    python benchmarks/gpf_collapse_probe.py [--steps 300] [--noise 3.0] [--lr 2.5e-4]

Prints, per architecture variant, the relative spread of the fused embeddings (mean pairwise distance /
mean norm; near 0 = collapsed) and Rank-1 of the fused embedding vs the input token.
"""
from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from gpfuse.losses import batch_hard_triplet_loss
from gpfuse.models import create_model

VARIANTS = {
    "paper (4 fusion + 4 encoder layers, shared)": {},
    "unshared fusion layers": {"share_layers": False},
    "1 fusion + 1 encoder layer": {"num_fusion_layers": 1, "final_layers": 1},
}


def probe(options: dict, steps: int, noise: float, lr: float, classes: int = 400) -> tuple[float, float, float]:
    torch.manual_seed(0)
    net = create_model("gpf_net", num_classes=classes, image_encoder="efficientnet_lite0", text_model=None, **options)
    params = [p for n, p in net.named_parameters() if not n.startswith("image_encoder.")]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
    centres = torch.randn(classes, net.image_encoder.feature_dim)
    net.train()
    for _ in range(steps):
        pids = torch.randperm(classes)[:8].repeat_interleave(4)
        embedding, _ = net.fuse(net.bottleneck(centres[pids] + noise * torch.randn(32, centres.shape[1])))
        loss = F.cross_entropy(net.classifier(embedding), pids) + batch_hard_triplet_loss(embedding, pids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        token = net.bottleneck(centres[:50].repeat_interleave(2, 0) + noise * torch.randn(100, centres.shape[1]))
        fused, _ = net.fuse(token)

        def rank1(x: torch.Tensor) -> float:
            return (torch.cdist(x[0::2], x[1::2]).argmin(1) == torch.arange(50)).float().mean().item()

        spread = (torch.cdist(fused, fused).mean() / fused.norm(dim=1).mean()).item()
    return spread, rank1(fused), rank1(token)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--noise", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2.5e-4)
    args = parser.parse_args()
    print(f"{args.steps} steps, noise {args.noise}, lr {args.lr}")
    print(f"{'variant':<45} | {'spread':>7} | {'R1 fused':>8} | {'R1 input':>8}")
    for name, options in VARIANTS.items():
        spread, fused, token = probe(options, args.steps, args.noise, args.lr)
        print(f"{name:<45} | {spread:>7.4f} | {fused:>8.2f} | {token:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
