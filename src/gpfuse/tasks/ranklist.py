"""Rank-list picture for a re-identification run: each query with its top-k gallery matches
(same-identity-same-camera entries removed, as in evaluation), green border = same identity, red = not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gpfuse.data.images import read_image
from gpfuse.utils.files import atomic_path

__all__ = ["embed", "save_rank_list"]


@torch.no_grad()
def embed(model: torch.nn.Module, loader) -> torch.Tensor:
    """(N, D) embeddings of every item of ``loader`` (each image with its own report, when any)."""
    model.eval()
    return torch.cat([model(batch).embedding for batch in loader])


def _rankings(model: torch.nn.Module, data, top: int) -> tuple[np.ndarray, list[list[int]]]:
    """Test query x gallery distances (own protocol, squared Euclidean) and, per query, the ``top`` gallery
    indices with same-identity-same-camera entries removed (as in evaluation)."""
    query_set, gallery_set = data.datasets["query"], data.datasets["gallery"]
    q, g = embed(model, data.test_dataloader()[0]), embed(model, data.test_dataloader()[1])
    dist = torch.cdist(q, g).square().numpy()
    orders = []
    for qi, item in enumerate(query_set.items):
        orders.append(
            [
                j
                for j in np.argsort(dist[qi], kind="stable")
                if not (gallery_set.items[j].pid == item.pid and gallery_set.items[j].camid == item.camid)
            ][:top]
        )
    return dist, orders


def save_rank_list(model: torch.nn.Module, data, path: Path, num_queries: int = 6, top: int = 10) -> Path:
    """Draw ``num_queries`` test queries (spread over the query set) with their ``top`` matches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    query_set, gallery_set = data.datasets["query"], data.datasets["gallery"]
    _, orders = _rankings(model, data, top)
    rows = np.linspace(0, len(query_set) - 1, min(num_queries, len(query_set))).astype(int)
    fig, axes = plt.subplots(len(rows), top + 1, figsize=(1.3 * (top + 1), 1.9 * len(rows)), squeeze=False)
    for r, qi in enumerate(rows):
        item, order = query_set.items[qi], orders[qi]
        cells = [(item, "black", "query")] + [
            (gallery_set.items[j], "green" if gallery_set.items[j].pid == item.pid else "red", f"{k + 1}")
            for k, j in enumerate(order)
        ]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c >= len(cells):
                continue
            it, colour, title = cells[c]
            ax.imshow(read_image(it.path))
            ax.set_title(title, fontsize=8)
            ax.add_patch(
                matplotlib.patches.Rectangle(
                    (0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=colour, linewidth=4
                )
            )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path
