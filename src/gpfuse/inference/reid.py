"""Re-identification from a saved run: images (with their reports) -> embeddings, and gallery rankings
through the evaluator's distance code, with the run's resize, normalisation and tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from gpfuse.config import ReIDDataConfig
from gpfuse.data.reid import ImageTransform
from gpfuse.encoders.image import IMAGE_ENCODERS
from gpfuse.encoders.text import tokenize
from gpfuse.inference.inputs import ImageInput, as_rgb
from gpfuse.inference.saved_run import SavedRun
from gpfuse.metrics.reid import compute_distance_matrix

__all__ = ["ReIDPredictor"]


class ReIDPredictor:
    """A re-identification run's model with its preprocessing (``gpfuse.load`` builds it).

    Example::

        reid = gpfuse.load("runs/gpf_net_cuhk01/fold_0/seed_42")
        emb = reid.embed(["a.jpg", "b.jpg"])                # (2, D), L2-normalised
        order, dist = reid.rank(["q.jpg"], gallery_paths, top_k=5)   # (1, 5) gallery indices, distances
    """

    def __init__(self, run: SavedRun, batch_size: int | None = None) -> None:
        self.run = run
        m, d = run.config.model, run.config.data_as(ReIDDataConfig)
        encoder = IMAGE_ENCODERS[m["image_encoder"]][0]
        self.transform = ImageTransform(tuple(d.image_size), mean=encoder.input_mean, std=encoder.input_std)
        self.text_model, self.max_text_len = m["text_model"], m["max_text_len"]
        self.metric = d.metric
        #: the protocol the run reports and selects checkpoints on (``data.select_protocol``): what ``rank`` uses
        self.protocol = d.select_protocol
        self.batch_size = batch_size or d.eval_batch_size

    def _report_tokens(self, reports: Sequence[str] | None, n: int) -> dict[str, torch.Tensor]:
        if reports is None or self.text_model is None:
            if reports is not None:
                raise ValueError("this model is image-only (model.text_model is None): give no reports")
            return {}
        if len(reports) != n:
            raise ValueError(f"{len(reports)} reports for {n} images: give one report per image ('' for none)")
        ids, mask = tokenize([r or "" for r in reports], self.text_model, self.max_text_len)
        mask[[i for i, r in enumerate(reports) if not (r or "").strip()]] = False  # no report: image-only
        return {"text_ids": torch.from_numpy(ids), "text_mask": torch.from_numpy(mask)}

    @torch.no_grad()
    def embed(
        self, images: Sequence[ImageInput], reports: Sequence[str] | None = None, normalize: bool = True
    ) -> np.ndarray:
        """(N, D) float32 embeddings, each image fused with its own report when the model reads reports (an
        empty report: image-only); L2-normalised unless ``normalize=False`` (the raw features evaluation ranks)."""
        pixels = self._pixels(images)
        emb = self._embed_pixels(pixels, self._report_tokens(reports, len(pixels)))
        return (F.normalize(emb, dim=1) if normalize else emb).cpu().numpy()

    def _pixels(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """(N, 3, H, W) model inputs: the run's resize and normalisation."""
        return torch.stack([self.transform(as_rgb(im, f"image {i}")) for i, im in enumerate(images)])

    def _embed_pixels(self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(pixels), self.batch_size):
            end = start + self.batch_size
            batch = {
                "image": pixels[start:end].to(self.run.device),
                **{k: v[start:end].to(self.run.device) for k, v in tokens.items()},
            }
            with self.run.autocast():
                chunks.append(self.run.model(batch).embedding.float())
        return torch.cat(chunks).cpu()

    def _query_protocol_distances(
        self, query: np.ndarray, gallery: Sequence[ImageInput], query_reports: Sequence[str] | None
    ) -> np.ndarray:
        """(Nq, Ng) distances with the gallery embedded under each query's report (GPF-Net's protocol, as
        evaluation computes it: once per distinct report)."""
        if self.text_model is None or query_reports is None:
            raise ValueError(
                "the query protocol embeds the gallery with each query's report: a model that reads reports and "
                "query_reports are needed (protocol='own' ranks without them)"
            )
        pixels = self._pixels(gallery)
        reports = [r or "" for r in query_reports]
        dist = np.empty((len(query), len(pixels)), np.float32)
        for report in dict.fromkeys(reports):
            rows = [i for i, r in enumerate(reports) if r == report]
            tokens = {k: v.repeat(len(pixels), 1) for k, v in self._report_tokens([report], 1).items()}
            g = self._embed_pixels(pixels, tokens)
            dist[rows] = compute_distance_matrix(torch.from_numpy(query[rows]), g, metric=self.metric).numpy()
        return dist

    def rank(
        self,
        query: Sequence[ImageInput] | np.ndarray,
        gallery: Sequence[ImageInput] | np.ndarray,
        top_k: int = 10,
        query_reports: Sequence[str] | None = None,
        gallery_reports: Sequence[str] | None = None,
        protocol: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``top_k`` nearest gallery entries of each query: (Nq, k) gallery indices and their distances,
        by the run's metric (``data.metric``) on raw embeddings, as evaluation ranks (the fast evaluator's
        ``compute_distance_matrix``). ``query`` / ``gallery``: images, or embeddings from :meth:`embed`
        (``normalize=False`` to rank exactly as evaluation).

        ``protocol``: ``"own"`` (every image with its own report) or ``"query"`` (each query against the gallery
        embedded with that query's report, GPF-Net's protocol: needs gallery images and ``query_reports``);
        default :attr:`protocol`, the one the run reports."""
        protocol = protocol or self.protocol
        if protocol not in ("own", "query"):
            raise ValueError(f"protocol must be 'own' or 'query', got {protocol!r}")
        q = query if isinstance(query, np.ndarray) else self.embed(query, query_reports, normalize=False)
        if protocol == "query":
            if isinstance(gallery, np.ndarray):
                raise ValueError("the query protocol embeds the gallery under each query's report: give its images")
            dist = self._query_protocol_distances(q, gallery, query_reports)
        else:
            g = gallery if isinstance(gallery, np.ndarray) else self.embed(gallery, gallery_reports, normalize=False)
            dist = compute_distance_matrix(torch.from_numpy(q), torch.from_numpy(g), metric=self.metric).numpy()
        k = min(top_k, dist.shape[1])
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(dist, order, axis=1)
