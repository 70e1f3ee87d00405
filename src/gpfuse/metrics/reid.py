"""Person re-identification metrics with torchreid conventions (Market-1501 rule).

``evaluate_rank`` reproduces ``eval_market1501`` of torchreid (``torchreid/metrics/rank.py``) plus
fast-reid's mINP; ``evaluate_features`` gives the same numbers from features, query chunk by query
chunk, without a Python loop per query. Re-ranking is in :mod:`gpfuse.metrics.re_ranking`.

Ties: torchreid ranks with ``np.argsort`` (quicksort, not stable), so equal distances come in an
unspecified order. Here both evaluators break ties by gallery index (stable sort semantics), so they
agree with each other exactly and with torchreid whenever the distances of a query are distinct.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gpfuse.metrics.reid_inputs import all_ids, as_features, as_tensor, check_choice, check_positive_int, feature_pair

__all__ = ["compute_distance_matrix", "evaluate_features", "evaluate_rank"]

_METRICS = ("euclidean", "cosine")
_AP_RULES = ("standard", "trapezoid")
_RANK_CHUNK = 256  # query rows per chunk in evaluate_rank
_TIE_BLOCK = 1024  # tied (query, match) pairs resolved per block


# -------------------------------------------------------------------------------------- distances
def _prepare(x: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row preprocessing: (features, squared norms) for euclidean, (L2-normalised, None) for cosine."""
    if metric == "cosine":
        return F.normalize(x, p=2, dim=1), None
    return x, x.pow(2).sum(dim=1)


def _pairwise(a: torch.Tensor, a_sq: torch.Tensor | None, b: torch.Tensor, b_sq: torch.Tensor | None) -> torch.Tensor:
    """Distances of prepared rows: ``||a||^2 + ||b||^2 - 2ab`` (euclidean) or ``1 - ab`` (cosine)."""
    if a_sq is None or b_sq is None:
        return 1 - torch.mm(a, b.t())
    return torch.addmm(a_sq.unsqueeze(1) + b_sq.unsqueeze(0), a, b.t(), beta=1, alpha=-2)


def compute_distance_matrix(a: Any, b: Any, metric: str = "euclidean") -> torch.Tensor:
    """Distance matrix between two sets of features (torchreid's ``compute_distance_matrix``).

    Args:
        a: features of shape (M, D), numpy array or torch tensor.
        b: features of shape (N, D), on the device of ``a`` when tensors.
        metric: ``"euclidean"``: squared euclidean distance ``||a||^2 + ||b||^2 - 2ab`` (not clamped,
            so it can be slightly negative for identical rows, as torchreid); ``"cosine"``:
            ``1 - cos``, computed on L2-normalised features.

    Returns:
        Tensor of shape (M, N), dtype of the features (integer features become float32).

    Example:
        >>> import torch
        >>> from gpfuse.metrics import compute_distance_matrix
        >>> a, b = torch.rand(10, 2048), torch.rand(100, 2048)
        >>> compute_distance_matrix(a, b).shape
        torch.Size([10, 100])
        >>> compute_distance_matrix(torch.eye(2), torch.eye(2), metric="cosine")
        tensor([[0., 1.],
                [1., 0.]])
    """
    check_choice(metric, "metric", _METRICS)
    a_t, b_t = as_features(a, "a"), as_features(b, "b")
    if a_t.shape[1] != b_t.shape[1]:
        raise ValueError(f"a and b must have the same feature dim, got {a_t.shape[1]} and {b_t.shape[1]}")
    if a_t.dtype != b_t.dtype:
        dtype = torch.promote_types(a_t.dtype, b_t.dtype)
        a_t, b_t = a_t.to(dtype), b_t.to(dtype)
    return _pairwise(*_prepare(a_t, metric), *_prepare(b_t.to(a_t.device), metric))


# ------------------------------------------------------------------------------------ rank engine
def _sort_rows(dist: torch.Tensor) -> torch.Tensor:
    """Row-wise sorted values (numpy's SIMD sort on CPU is several times faster than torch's)."""
    if dist.device.type == "cpu" and dist.dtype in (torch.float16, torch.float32, torch.float64):
        return torch.from_numpy(np.sort(dist.numpy(), axis=1))
    return torch.sort(dist, dim=1).values


def _pack(mask: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pack the masked entries of each row: distances, gallery indices (ascending), validity; (c, K).

    The validity mask's row sums are the numbers of masked entries.
    """
    c, g = mask.shape
    rows, cols = mask.nonzero(as_tuple=True)  # row-major, so columns ascend within a row
    counts = torch.bincount(rows, minlength=c)  # cheaper than a bool sum over (c, g)
    k = int(counts.max()) if c else 0
    slot = torch.arange(rows.numel(), device=dist.device) - (torch.cumsum(counts, 0) - counts)[rows]
    vals = dist.new_zeros(c, k)
    vals[rows, slot] = dist[rows, cols]
    idx = torch.full((c, k), g, dtype=torch.int64, device=dist.device)
    idx[rows, slot] = cols
    return vals, idx, torch.arange(k, device=dist.device).unsqueeze(0) < counts.unsqueeze(1)


def _match_ranks(
    dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor, g_pids: torch.Tensor, g_camids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks of each query's true matches once same-pid-same-camera entries are removed.

    The order is torchreid's ranking with ties broken by gallery index. Computed without sorting indices:
    the rank of a match is the number of entries with a smaller (distance, index) key, found by a binary
    search in the sorted row, minus the removed entries before it.

    Args:
        dist: (c, G) distances of a chunk of queries. Other arguments: (c,) and (G,) int64 ids.

    Returns:
        ranks (c, M) int64, ascending in each row, ``G`` beyond the query's matches; n_rel (c,) matches.
    """
    _c, g = dist.shape
    srt = _sort_rows(dist)
    if g and bool(torch.isnan(srt[:, -1]).any()):  # sorting puts NaN last
        raise ValueError("distances contain NaN")
    match = g_pids.unsqueeze(0) == q_pids.unsqueeze(1)
    same_cam = g_camids.unsqueeze(0) == q_camids.unsqueeze(1)
    good, junk = match & ~same_cam, match & same_cam
    gd, gi, gvalid = _pack(good, dist)
    n_rel = gvalid.sum(dim=1)
    if gd.shape[1] == 0:
        return gi, n_rel
    pos = torch.searchsorted(srt, gd)  # entries strictly closer than the match
    tied = gvalid & (torch.searchsorted(srt, gd, right=True) - pos > 1)
    if bool(tied.any()):  # equal distances: entries with a smaller gallery index come first
        r_all, s_all = tied.nonzero(as_tuple=True)
        cols = torch.arange(g, device=dist.device)
        for i in range(0, r_all.numel(), _TIE_BLOCK):
            r, s = r_all[i : i + _TIE_BLOCK], s_all[i : i + _TIE_BLOCK]
            earlier = (dist[r] == gd[r, s].unsqueeze(1)) & (cols < gi[r, s].unsqueeze(1))
            pos[r, s] += earlier.sum(dim=1)
    jd, ji, jvalid = _pack(junk, dist)
    if jd.shape[1]:  # removed entries before each match, same (distance, index) order
        jd, ji, jvalid = jd.unsqueeze(1), ji.unsqueeze(1), jvalid.unsqueeze(1)
        gdu, giu = gd.unsqueeze(2), gi.unsqueeze(2)
        before = jvalid & ((jd < gdu) | ((jd == gdu) & (ji < giu)))
        pos = pos - before.sum(dim=2)
    ranks = torch.where(gvalid, pos, torch.full_like(pos, g))
    return torch.sort(ranks, dim=1).values, n_rel


class _RankAccumulator:
    """Per-query AP / INP (float64) and a histogram of first-match ranks, summed over chunks."""

    def __init__(self, max_rank: int, ap: str) -> None:
        self.max_rank, self.ap = max_rank, ap
        self.aps: list[np.ndarray] = []
        self.inps: list[np.ndarray] = []
        self.hist = np.zeros(max_rank + 1, dtype=np.int64)

    def update(self, ranks: torch.Tensor, n_rel: torch.Tensor) -> None:
        valid = n_rel > 0
        ranks, n = ranks[valid], n_rel[valid]
        if n.numel() == 0:
            return
        slot = torch.arange(ranks.shape[1], device=ranks.device)
        inside = slot.unsqueeze(0) < n.unsqueeze(1)
        r = ranks.double()
        hits = (slot + 1).double().unsqueeze(0)  # matches up to and including this one
        nd = n.double().unsqueeze(1)
        precision = hits / (r + 1)
        if self.ap == "standard":
            terms = precision / nd
        else:  # Market-1501 MATLAB / compute_mAP: trapezoid between precision before and at the hit
            old = torch.where(r != 0, (hits - 1) / r.clamp(min=1), torch.ones_like(r))
            terms = (1.0 / nd) * (old + precision) / 2
        ap = torch.where(inside, terms, torch.zeros_like(terms)).sum(dim=1)
        last = ranks.gather(1, (n - 1).unsqueeze(1)).squeeze(1)
        self.aps.append(ap.cpu().numpy())
        self.inps.append((n.double() / (last.double() + 1)).cpu().numpy())
        first = ranks[:, 0].clamp(max=self.max_rank)
        self.hist += torch.bincount(first, minlength=self.max_rank + 1).cpu().numpy()

    def result(self) -> tuple[np.ndarray, float, float]:
        num_valid = int(sum(a.size for a in self.aps))
        if num_valid == 0:
            raise ValueError(
                "no query has a match in the gallery: every query's pid is absent from the gallery "
                "or appears only under the query's own camera"
            )
        cmc = np.cumsum(self.hist[: self.max_rank]).astype(np.float32) / float(num_valid)
        return cmc, float(np.mean(np.concatenate(self.aps))), float(np.mean(np.concatenate(self.inps)))


def _check_eval_args(max_rank: Any, ap: str, num_g: int) -> int:
    max_rank = check_positive_int(max_rank, "max_rank")
    check_choice(ap, "ap", _AP_RULES)
    if num_g == 0:
        raise ValueError("the gallery is empty (0 gallery samples)")
    if num_g < max_rank:
        warnings.warn(
            f"max_rank={max_rank} is larger than the gallery ({num_g} samples); using max_rank={num_g}",
            UserWarning,
            stacklevel=3,
        )
        max_rank = num_g
    return max_rank


_EVAL_DOC = """
    Market-1501 rule (torchreid ``eval_market1501``): for each query the gallery is ranked by ascending
    distance, ties broken by gallery index (torchreid's unstable ``np.argsort`` leaves them unspecified);
    gallery samples with the query's pid AND camid are removed; queries left without a match are
    skipped. CMC(k) is 1 when a match is within the first k kept entries; a query with fewer than
    ``max_rank`` kept entries keeps its last value (torchreid fails on such ragged lists).
    AP, ``ap="standard"``: mean over the matches of the precision at each match,
    ``sum_k k / (r_k + 1) / n_rel`` with r_k the 0-based kept rank of the k-th match (torchreid).
    AP, ``ap="trapezoid"``: the Market-1501 MATLAB / ``compute_mAP`` rule of older public ReID code,
    ``sum_k (1 / n_rel) * (p_{k-1} + p_k) / 2`` with ``p_k = k / (r_k + 1)`` and
    ``p_{k-1} = (k - 1) / r_k`` (1 when ``r_k == 0``); it reads slightly higher than the standard AP.
    INP (fast-reid): ``n_rel / (r_last + 1)``, r_last the rank of the hardest match.
"""


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    max_rank: int = 50,
    ap: str = "standard",
) -> tuple[np.ndarray, float, float]:
    """CMC, mAP and mINP from a query-gallery distance matrix (torchreid's ``evaluate_rank``).

    Args:
        distmat: distances of shape (num_q, num_g), numpy array or torch tensor (CPU or CUDA); no NaN.
        q_pids, q_camids: (num_q,) integer person / camera ids of the queries.
        g_pids, g_camids: (num_g,) integer ids of the gallery.
        max_rank: length of the CMC curve; a smaller gallery warns and uses the gallery size (torchreid).
        ap: ``"standard"`` (default, torchreid) or ``"trapezoid"`` (see below).

    Returns:
        ``(cmc, mAP, mINP)``: cmc float32 of shape (max_rank,), ``cmc[k-1]`` = Rank-k; mAP and mINP as
        Python floats in [0, 1], means over the queries that have a match.
    {rules}
    Raises:
        ValueError: bad shapes or lengths, NaN distances, bad ``max_rank`` / ``ap``, or no query with a
        match in the gallery (torchreid asserts).
    """
    dist = as_tensor(distmat, "distmat")
    if dist.dim() != 2:
        raise ValueError(f"distmat must be 2-D (num_q, num_g), got shape {tuple(dist.shape)}")
    if not dist.is_floating_point():
        dist = dist.double()
    num_q, num_g = dist.shape
    dev = dist.device
    qp, gp, qc, gc = all_ids(q_pids, g_pids, q_camids, g_camids, num_q, num_g, "distmat rows", "distmat columns", dev)
    max_rank = _check_eval_args(max_rank, ap, num_g)
    acc = _RankAccumulator(max_rank, ap)
    for i in range(0, num_q, _RANK_CHUNK):
        sl = slice(i, i + _RANK_CHUNK)
        acc.update(*_match_ranks(dist[sl].contiguous(), qp[sl], qc[sl], gp, gc))
    return acc.result()


def evaluate_features(
    q_feats: Any,
    g_feats: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    metric: str = "euclidean",
    max_rank: int = 50,
    chunk_size: int = 256,
    ap: str = "standard",
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, float, float]:
    """``evaluate_rank(compute_distance_matrix(q_feats, g_feats, metric), ...)`` in query chunks.

    Only a (chunk_size, num_g) block of distances lives at a time; per-query AP / INP and a CMC
    histogram are accumulated, with no Python loop per query. The numbers equal those of
    ``evaluate_rank`` on the full matrix; the only possible difference is BLAS giving a chunk's matrix
    product last-bit differences from the full one, which can swap two near-equal distances.

    Args:
        q_feats: (num_q, D) query features, numpy array or torch tensor.
        g_feats: (num_g, D) gallery features.
        q_pids, g_pids, q_camids, g_camids: integer ids, (num_q,) / (num_g,).
        metric: ``"euclidean"`` (squared) or ``"cosine"``, as ``compute_distance_matrix``.
        max_rank, ap: as ``evaluate_rank``.
        chunk_size: queries per chunk.
        device: where to compute (``"cuda"`` works); default: the device of ``q_feats`` (CPU for numpy).

    Returns:
        ``(cmc, mAP, mINP)`` as ``evaluate_rank``.
    {rules}
    Raises:
        ValueError: bad shapes or lengths, bad ``metric`` / ``ap`` / ``max_rank`` / ``chunk_size``, or
        no query with a match in the gallery.
    """
    check_choice(metric, "metric", _METRICS)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    q, g, device = feature_pair(q_feats, g_feats, device)
    num_q, num_g = q.shape[0], g.shape[0]
    qp, gp, qc, gc = all_ids(q_pids, g_pids, q_camids, g_camids, num_q, num_g, "q_feats", "g_feats", device)
    max_rank = _check_eval_args(max_rank, ap, num_g)
    g_prep = _prepare(g, metric)
    acc = _RankAccumulator(max_rank, ap)
    with torch.no_grad():
        for i in range(0, num_q, chunk_size):
            sl = slice(i, i + chunk_size)
            dist = _pairwise(*_prepare(q[sl], metric), *g_prep)
            acc.update(*_match_ranks(dist, qp[sl], qc[sl], gp, gc))
    return acc.result()


evaluate_rank.__doc__ = (evaluate_rank.__doc__ or "").replace("{rules}", _EVAL_DOC)
evaluate_features.__doc__ = (evaluate_features.__doc__ or "").replace("{rules}", _EVAL_DOC)
