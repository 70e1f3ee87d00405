"""Re-identification as a LightningModule: identity + triplet losses, ranked evaluation under the text
pairing protocols, gate statistics, optimiser with a slower backbone."""

from __future__ import annotations

from typing import Protocol, cast

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gpfuse.losses import batch_hard_triplet_loss
from gpfuse.metrics.re_ranking import re_ranking
from gpfuse.metrics.reid import compute_distance_matrix, evaluate_features, evaluate_rank
from gpfuse.tasks.gather import SampleCollector, gate_moments, pooled_mean_std
from gpfuse.tasks.schedules import per_step_schedule

__all__ = ["PROTOCOLS", "RetrievalTask"]

#: ``own``: every image embedded once with its own report; ``query``: the gallery embedded with the
#: report of each query's patient (GPF-Net's protocol; needs a model whose output has ``image`` and that
#: has ``text_tokens``/``fuse``).
PROTOCOLS = ("own", "query")


class _QueryProtocolModel(Protocol):
    """What the ``query`` protocol calls on the model (GPF-Net)."""

    def text_tokens(self, ids: Tensor, mask: Tensor) -> Tensor: ...

    def fuse(
        self, image: Tensor, text: Tensor | None = None, text_mask: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]: ...


class RetrievalTask(L.LightningModule):
    """Trains a model returning ``(embedding, logits, gates)`` on ``batch["pid"]``.

    Loss: ``id_weight * CE(logits, pid; label_smoothing) + triplet_weight * batch-hard triplet(margin)``.
    Validation and test take two loaders (query, gallery) and log ``{stage}/{protocol}/{mAP,rank1,rank5,
    rank10,mINP}``; ``{stage}/mAP`` is the ``select_protocol`` figure that checkpoints are chosen on.
    ``ap="trapezoid"`` switches to the old trapezoid AP of the GPF-Net code; ``rerank`` adds the
    ``own+rerank`` figures (k-reciprocal re-ranking, Zhong et al. 2017, on the own-protocol embeddings).
    Query and gallery are gathered from every process (each image once) before anything is ranked.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-4,
        lr_backbone: float | None = 1e-5,
        weight_decay: float = 1e-4,
        max_epochs: int = 50,
        warmup_epochs: int = 0,
        min_lr: float = 1e-7,
        margin: float = 0.3,
        label_smoothing: float = 0.0,
        id_weight: float = 1.0,
        triplet_weight: float = 1.0,
        metric: str = "euclidean",
        protocols: tuple[str, ...] = PROTOCOLS,
        select_protocol: str = "own",
        ap: str = "standard",
        rerank: bool = False,
    ) -> None:
        super().__init__()
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown or select_protocol not in protocols:
            raise ValueError(
                f"protocols must be a subset of {list(PROTOCOLS)} containing select_protocol "
                f"({select_protocol!r}), got {list(protocols)}"
            )
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self._eval: list[SampleCollector | None] = [None, None]
        #: after a test: ``{"test": {...}}``: the query and gallery ``*_index``, ``*_pid``, ``*_camid`` and
        #: the own-protocol ``distances`` (Nq, Ng) (what :func:`gpfuse.tasks.samples.write_samples` ranks)
        self.test_samples: dict[str, dict[str, np.ndarray]] = {}

    def forward(self, batch: dict[str, Tensor]):
        return self.model(batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        hp = self.hparams
        out = self(batch)
        id_loss = F.cross_entropy(out.logits, batch["pid"], label_smoothing=hp["label_smoothing"])
        triplet = batch_hard_triplet_loss(out.embedding, batch["pid"], hp["margin"])
        loss = hp["id_weight"] * id_loss + hp["triplet_weight"] * triplet
        n = len(batch["pid"])
        self.log_dict(
            {"train/loss": loss, "train/id_loss": id_loss, "train/triplet": triplet},
            on_step=False,
            on_epoch=True,
            prog_bar=False,
            batch_size=n,
            sync_dist=True,
        )
        return loss

    # ---- evaluation --------------------------------------------------------------------------------
    def _collect(self, batch: dict[str, Tensor], dataloader_idx: int) -> None:
        out = self(batch)
        values = {"embedding": out.embedding.float(), "pid": batch["pid"], "camid": batch["camid"]}
        values.update({f"gate{i}": gate_moments(gate) for i, gate in enumerate(out.gates)})
        if "query" in self.hparams["protocols"] and "text_ids" in batch and hasattr(out, "image"):
            values.update(image=out.image.float(), text_ids=batch["text_ids"], text_mask=batch["text_mask"].long())
        collector = self._eval[dataloader_idx]
        if collector is None:
            collector = self._eval[dataloader_idx] = SampleCollector(values).to(self.device)
        collector.update(batch["index"], **values)

    def _query_protocol_distances(self, query: dict[str, Tensor], gallery: dict[str, Tensor]) -> Tensor:
        """Distances (Nq, Ng) with the gallery embedded under each query's report (one pass per report)."""
        distances = torch.empty(len(query["pid"]), len(gallery["pid"]), device=self.device)
        reports = torch.cat([query["text_ids"], query["text_mask"]], dim=1)
        unique, inverse = torch.unique(reports, dim=0, return_inverse=True)
        model = cast(_QueryProtocolModel, self.model)
        for r in range(len(unique)):
            rows = (inverse == r).nonzero().squeeze(1)
            ids, mask = query["text_ids"][rows[:1]], query["text_mask"][rows[:1]].bool()
            text = model.text_tokens(ids, mask)
            chunks = []
            for start in range(0, len(gallery["pid"]), 256):
                image = gallery["image"][start : start + 256]
                emb, _ = model.fuse(image, text.expand(len(image), -1, -1), mask.expand(len(image), -1))
                chunks.append(emb)
            g = torch.cat(chunks).float()
            distances[rows] = compute_distance_matrix(query["embedding"][rows], g, self.hparams["metric"])
        return distances

    def _evaluate(self, stage: str) -> None:
        query_collector, gallery_collector = self._eval
        if query_collector is None or gallery_collector is None:  # (`None in` would call Metric.__eq__)
            self._eval = [None, None]
            return
        query, gallery = query_collector.compute(), gallery_collector.compute()
        self._eval = [None, None]
        args = (
            query["pid"].cpu().numpy(),
            gallery["pid"].cpu().numpy(),
            query["camid"].cpu().numpy(),
            gallery["camid"].cpu().numpy(),
        )
        max_rank = min(50, len(gallery["pid"]))
        ap = self.hparams["ap"]
        results = {
            "own": evaluate_features(
                query["embedding"], gallery["embedding"], *args, metric=self.hparams["metric"], max_rank=max_rank, ap=ap
            )
        }
        if self.hparams["rerank"]:
            k1 = min(20, len(gallery["pid"]) - 1)  # the usual k1=20, k2=6, shrunk for tiny galleries
            distmat = re_ranking(query["embedding"], gallery["embedding"], k1=k1, k2=min(6, k1))
            results["own+rerank"] = evaluate_rank(distmat, *args, max_rank=max_rank, ap=ap)
        select = self.hparams["select_protocol"]
        distances = compute_distance_matrix(query["embedding"], gallery["embedding"], self.hparams["metric"])
        if "query" in self.hparams["protocols"] and "text_ids" in query:
            with torch.no_grad():
                query_distances = self._query_protocol_distances(query, gallery)
            results["query"] = evaluate_rank(query_distances.cpu().numpy(), *args, max_rank=max_rank, ap=ap)
            if select == "query":
                distances = query_distances
        if select not in results:
            raise ValueError(
                f"data.select_protocol is {select!r}, but this model gave no {select}-protocol figures: the query "
                "protocol needs a model that reads reports (model.text_model) and outputs its image tokens "
                "(GPF-Net); select 'own'"
            )
        if stage == "test":
            self.test_samples = {
                "test": {
                    "protocol": np.array(select),
                    "distances": distances.cpu().numpy(),
                    **{
                        f"{side}_{k}": v[k].cpu().numpy()
                        for side, v in (("query", query), ("gallery", gallery))
                        for k in ("index", "pid", "camid")
                    },
                }
            }
        for protocol, (cmc, mAP, mINP) in results.items():
            figures = {
                "mAP": mAP,
                "rank1": cmc[0],
                "rank5": cmc[min(4, len(cmc) - 1)],
                "rank10": cmc[min(9, len(cmc) - 1)],
                "mINP": mINP,
            }
            for key, value in figures.items():
                self.log(f"{stage}/{protocol}/{key}", float(value))
        self.log(f"{stage}/mAP", float(results[select][1]), prog_bar=True)
        for key in sorted(k for k in query if k.startswith("gate")):
            mean, std = pooled_mean_std(torch.cat([query[key], gallery[key]]))
            self.log(f"gate/{key.replace('gate', 'step')}_mean", mean)
            self.log(f"gate/{key.replace('gate', 'step')}_std", std)

    def on_validation_epoch_start(self) -> None:
        self._eval = [None, None]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._evaluate("valid")

    def on_test_epoch_start(self) -> None:
        self._eval = [None, None]

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    def configure_optimizers(self):
        hp = self.hparams
        backbone = [
            p
            for n, p in self.model.named_parameters()
            if p.requires_grad and n.startswith(("image_encoder.", "text_encoder."))
        ]
        ids = {id(p) for p in backbone}
        head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": head, "lr": hp.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": hp.lr_backbone if hp.lr_backbone is not None else hp.lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
        schedule = per_step_schedule(
            optimizer,
            self.trainer.estimated_stepping_batches,
            "warmup_cosine",
            hp.warmup_epochs,
            hp.max_epochs,
            hp.lr,
            hp.min_lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": schedule}
