"""Person re-identification metrics with torchreid conventions (Market-1501 rule).

``evaluate_rank`` reproduces ``eval_market1501`` of torchreid (``torchreid/metrics/rank.py``) plus
fast-reid's mINP; ``evaluate_features`` gives the same numbers from features, query chunk by query
chunk, without a Python loop per query; ``re_ranking`` is Zhong et al.'s k-reciprocal re-ranking
(CVPR 2017) in torch.

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

__all__ = ["compute_distance_matrix", "evaluate_features", "evaluate_rank", "re_ranking"]

_METRICS = ("euclidean", "cosine")
_AP_RULES = ("standard", "trapezoid")
_RANK_CHUNK = 256  # query rows per chunk in evaluate_rank
_TIE_BLOCK = 1024  # tied (query, match) pairs resolved per block
_PAIR_BUDGET = 1 << 23  # (query entry, gallery entry) pairs per block in the Jaccard step of re_ranking


# ----------------------------------------------------------------------------------------- inputs
def _as_tensor(x: Any, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """numpy array, torch tensor or sequence -> tensor (no copy when already a tensor on ``device``)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a numeric array, got {type(x).__name__} ({err})") from err
    return t if device is None else t.to(device)


def _as_features(x: Any, name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """(N, D) floating tensor; integer features are cast to float32."""
    t = _as_tensor(x, name, device)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (num_samples, dim), got shape {tuple(t.shape)}")
    return t if t.is_floating_point() else t.float()


def _as_ids(x: Any, name: str, n: int, what: str, device: torch.device | str) -> torch.Tensor:
    """(n,) int64 ids (pids or camids); ``what`` names where ``n`` comes from, for the error."""
    t = _as_tensor(x, name).reshape(-1)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} values but {what} has {n}")
    if t.is_floating_point():
        if not bool(torch.all(t == torch.round(t))):
            raise ValueError(f"{name} must hold integer ids, got non-integral values")
    elif t.is_complex():
        raise ValueError(f"{name} must hold integer ids, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64)



def _feature_pair(q_feats, g_feats, device) -> tuple[torch.Tensor, torch.Tensor, torch.device | str]:
    """Query and gallery features as 2-D tensors on one device (the queries' by default), of one dtype and
    one feature size."""
    if device is None:
        device = q_feats.device if isinstance(q_feats, torch.Tensor) else "cpu"
    q = _as_features(q_feats, "q_feats", device)
    g = _as_features(g_feats, "g_feats", device)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q_feats and g_feats must have the same feature dim, got {q.shape[1]} and {g.shape[1]}")
    dtype = torch.promote_types(q.dtype, g.dtype)
    return q.to(dtype), g.to(dtype), device


def _all_ids(q_pids, g_pids, q_camids, g_camids, num_q: int, num_g: int, q_what: str, g_what: str, device):
    """Identity and camera ids of queries and gallery as tensors on ``device``, each checked for length."""
    return (_as_ids(q_pids, "q_pids", num_q, q_what, device), _as_ids(g_pids, "g_pids", num_g, g_what, device),
            _as_ids(q_camids, "q_camids", num_q, q_what, device), _as_ids(g_camids, "g_camids", num_g, g_what, device))

def _check_choice(value: str, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of: {list(allowed)}, got {value!r}")


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# -------------------------------------------------------------------------------------- distances
def _prepare(x: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row preprocessing: (features, squared norms) for euclidean, (L2-normalised, None) for cosine."""
    if metric == "cosine":
        return F.normalize(x, p=2, dim=1), None
    return x, x.pow(2).sum(dim=1)


def _pairwise(
    a: torch.Tensor, a_sq: torch.Tensor | None, b: torch.Tensor, b_sq: torch.Tensor | None
) -> torch.Tensor:
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
    _check_choice(metric, "metric", _METRICS)
    a_t, b_t = _as_features(a, "a"), _as_features(b, "b")
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
    c, g = dist.shape
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
    max_rank = _check_positive_int(max_rank, "max_rank")
    _check_choice(ap, "ap", _AP_RULES)
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
    dist = _as_tensor(distmat, "distmat")
    if dist.dim() != 2:
        raise ValueError(f"distmat must be 2-D (num_q, num_g), got shape {tuple(dist.shape)}")
    if not dist.is_floating_point():
        dist = dist.double()
    num_q, num_g = dist.shape
    dev = dist.device
    qp, gp, qc, gc = _all_ids(q_pids, g_pids, q_camids, g_camids, num_q, num_g, "distmat rows", "distmat columns", dev)
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
    _check_choice(metric, "metric", _METRICS)
    chunk_size = _check_positive_int(chunk_size, "chunk_size")
    q, g, device = _feature_pair(q_feats, g_feats, device)
    num_q, num_g = q.shape[0], g.shape[0]
    qp, gp, qc, gc = _all_ids(q_pids, g_pids, q_camids, g_camids, num_q, num_g, "q_feats", "g_feats", device)
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


# ------------------------------------------------------------------------------------- re-ranking
def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_rows: int):
    """CSR arrays from row-sorted COO entries: (row pointers (n_rows + 1,), cols, vals)."""
    ptr = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return ptr, cols, vals


def _gather_rows(ptr: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries of the CSR rows ``which``: (position in ``which`` of each entry, entry index)."""
    start, count = ptr[which], ptr[which + 1] - ptr[which]
    owner = torch.repeat_interleave(torch.arange(which.numel(), device=ptr.device), count)
    offset = torch.arange(owner.numel(), device=ptr.device) - (torch.cumsum(count, 0) - count)[owner]
    return owner, start[owner] + offset


def _reciprocal(nb: torch.Tensor, k: int) -> torch.Tensor:
    """(n, k) mask: is ``i`` among the first k neighbours of its own j-th neighbour ``nb[i, j]``."""
    idx = torch.arange(nb.shape[0], device=nb.device).view(-1, 1, 1)
    return (nb[nb[:, :k], :k] == idx).any(dim=2)


def re_ranking(
    q_feats: Any,
    g_feats: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 512,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017), the classic ``re_ranking`` in chunked torch.

    Same steps and float32 arithmetic as the widely copied numpy version (torchreid
    ``utils/rerank.py``): original distance = squared euclidean distance between all query and
    gallery features, each row divided by its maximum; k-reciprocal neighbours R(i, k1+1), expanded by
    the R(c, round(k1/2)+1) of each candidate that shares more than 2/3 of its members with R(i);
    V(i) = exp(-distance) weights on the expanded set, normalised; query expansion averages V over
    the k2 nearest neighbours (skipped when k2 == 1); Jaccard distance ``1 - m / (2 - m)`` with
    ``m = sum min(V_q, V_g)``; result = ``(1 - lambda) * jaccard + lambda * original``.
    The classic takes euclidean (not squared) distance matrices and squares them; feeding it
    torchreid's squared ``compute_distance_matrix`` would square twice. Neighbour sets are equal to
    the classic's barring exactly tied distances; the rest agrees to float32 rounding.
    Memory is O(chunk_size * N + N * k1^2) with N = num_q + num_g, not the classic's dense N x N.

    Args:
        q_feats: (num_q, D) query features, numpy array or torch tensor.
        g_feats: (num_g, D) gallery features.
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).
        chunk_size: rows of the (N, N) distance computed at a time.
        device: where to compute; default: the device of ``q_feats`` (CPU for numpy).

    Returns:
        float32 numpy array of shape (num_q, num_g): re-ranked distances (smaller is closer).

    Raises:
        ValueError: bad shapes, k1 / k2 / chunk_size not positive integers, lambda_value outside [0, 1].
    """
    k1 = _check_positive_int(k1, "k1")
    k2 = _check_positive_int(k2, "k2")
    chunk_size = _check_positive_int(chunk_size, "chunk_size")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    q, g, device = _feature_pair(q_feats, g_feats, device)
    num_q, num_g = q.shape[0], g.shape[0]
    if num_q == 0 or num_g == 0:
        raise ValueError(f"q_feats and g_feats must be non-empty, got {num_q} and {num_g} rows")
    feats = torch.cat([q, g])
    n = feats.shape[0]
    dev = feats.device
    sq = feats.pow(2).sum(dim=1)
    kh = int(round(k1 / 2))
    kf, kr, kq = min(k1 + 1, n), min(kh + 1, n), min(k2, n)

    def rows(i: int) -> torch.Tensor:  # (c, n) float32 squared euclidean, row-normalised by its max
        d = torch.addmm(sq[i : i + chunk_size, None] + sq[None], feats[i : i + chunk_size], feats.t(), beta=1, alpha=-2)
        d = d.clamp_(min=0).float()
        return d / d.max(dim=1, keepdim=True).values.clamp_min(1e-12)  # guard: a row of identical features

    with torch.no_grad():
        # pass 1: nearest neighbours of every sample
        k = max(kf, kr, kq)
        nb = torch.cat([torch.topk(rows(i), k, dim=1, largest=False).indices for i in range(0, n, chunk_size)])
        fwd, half = nb[:, :kf], nb[:, :kr]
        rec = _reciprocal(nb, kf)  # (n, kf): fwd[i, j] is a k-reciprocal neighbour of i
        rec_h = _reciprocal(nb, kr)  # (n, kr) the same with round(k1 / 2)
        size_h = rec_h.sum(dim=1).double()

        # pass 2: expanded k-reciprocal sets -> sparse V (CSR); keep the query rows of the distance
        original = torch.empty(num_q, num_g, dtype=torch.float32, device=dev)
        v_rows, v_cols, v_vals = [], [], []
        for i in range(0, n, chunk_size):
            b = rows(i)
            c = b.shape[0]
            f, r = fwd[i : i + c], rec[i : i + c]
            cand = half[f]  # (c, kf, kr): R(candidate, kh) members, masked by rec_h
            cand_ok = rec_h[f]
            in_r = ((cand.unsqueeze(3) == f.view(c, 1, 1, kf)) & r.view(c, 1, 1, kf)).any(dim=3)
            overlap = (in_r & cand_ok).sum(dim=2).double()
            grow = r & (overlap > (2.0 / 3) * size_h[f])
            members = torch.full((c, n + 1), False, device=dev)
            members.scatter_(1, torch.where(r, f, n), True)
            members.scatter_(1, torch.where(grow.unsqueeze(2) & cand_ok, cand, n).view(c, -1), True)
            members = members[:, :n]
            w = torch.where(members, torch.exp(-b), torch.zeros_like(b))
            w = w / w.sum(dim=1, keepdim=True)
            rr, cc = members.nonzero(as_tuple=True)
            v_rows.append(rr + i)
            v_cols.append(cc)
            v_vals.append(w[rr, cc])
            if i < num_q:
                original[i : i + c] = b[: num_q - i, num_q:]
        ptr, cols, vals = _csr(torch.cat(v_rows), torch.cat(v_cols), torch.cat(v_vals), n)
        del v_rows, v_cols, v_vals

        # query expansion: V(i) <- mean of V over the k2 nearest neighbours of i
        if k2 != 1:
            q_rows, q_cols, q_vals = [], [], []
            for i in range(0, n, chunk_size):
                src = nb[i : i + chunk_size, :kq].reshape(-1)
                c = src.numel() // kq
                owner, ent = _gather_rows(ptr, src)
                acc = torch.zeros(c * n, dtype=torch.float32, device=dev)
                acc.index_add_(0, torch.div(owner, kq, rounding_mode="floor") * n + cols[ent], vals[ent])
                acc = acc.view(c, n) / kq
                rr, cc = acc.nonzero(as_tuple=True)
                q_rows.append(rr + i)
                q_cols.append(cc)
                q_vals.append(acc[rr, cc])
            ptr, cols, vals = _csr(torch.cat(q_rows), torch.cat(q_cols), torch.cat(q_vals), n)
            del q_rows, q_cols, q_vals

        # inverted index over the gallery rows: for each column l, the gallery rows j with V[j, l] != 0
        row_of = torch.repeat_interleave(torch.arange(n, device=dev), ptr[1:] - ptr[:-1])
        gal = row_of >= num_q
        order = torch.argsort(cols[gal], stable=True)
        t_rows, t_vals = (row_of[gal] - num_q)[order], vals[gal][order]
        t_ptr, _, _ = _csr(cols[gal][order], t_rows, t_vals, n)

        # Jaccard: m[i, j] = sum_l min(V[i, l], V[j, l]) over the shared columns, blocks of queries
        out = torch.empty(num_q, num_g, dtype=torch.float32, device=dev)
        q_entries = ptr[1 : num_q + 1] - ptr[:num_q]
        # pairs each query creates: sum over its entries of the column's gallery count
        per_entry = (t_ptr[cols[: int(ptr[num_q])] + 1] - t_ptr[cols[: int(ptr[num_q])]])
        q_of_entry = torch.repeat_interleave(torch.arange(num_q, device=dev), q_entries)
        pairs = torch.zeros(num_q, dtype=torch.int64, device=dev).index_add_(0, q_of_entry, per_entry)
        bounds = [0]
        cum = torch.cumsum(pairs, 0).cpu().numpy()
        while bounds[-1] < num_q:
            base = cum[bounds[-1] - 1] if bounds[-1] else 0
            stop = int(np.searchsorted(cum, base + _PAIR_BUDGET, side="right"))
            bounds.append(min(max(stop, bounds[-1] + 1), num_q, bounds[-1] + chunk_size))
        for i0, i1 in zip(bounds[:-1], bounds[1:]):
            owner, ent = _gather_rows(ptr, torch.arange(i0, i1, device=dev))
            pair_of, gent = _gather_rows(t_ptr, cols[ent])
            m = torch.zeros((i1 - i0) * num_g, dtype=torch.float32, device=dev)
            m.index_add_(0, owner[pair_of] * num_g + t_rows[gent], torch.minimum(vals[ent][pair_of], t_vals[gent]))
            m = m.view(i1 - i0, num_g)
            out[i0:i1] = (1 - m / (2.0 - m)) * (1 - lambda_value) + original[i0:i1] * lambda_value
    return out.cpu().numpy()
