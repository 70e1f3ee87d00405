"""ReID evaluation speed: torchreid's pure-Python ``eval_market1501`` vs ``gpfuse.metrics.evaluate_features``.

Random features shaped like Market-1501 (3368 query, 15913 gallery, 2048-d, 751 ids, 6 cameras; a sixth
of the gallery are distractors with pid -1). Both paths run in the same process; their mAP, CMC and
mINP are checked against each other.

    python benchmarks/reid_eval.py [--small] [--device cpu|cuda] [--chunk-size 256] [--threads N]
                                   [--no-tracemalloc] [--seed 0]

The torchreid loop runs twice: timed, then under tracemalloc for its peak memory (several times slower;
``--no-tracemalloc`` skips it). Torch runs on one thread by default, like the Python loop: a
like-for-like single-core comparison that also avoids OpenMP spin contention on a shared machine.

Prints one table; nothing here is part of the test suite.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import torch

from bench_utils import peak_rss_mib, print_environment
from gpfuse.metrics import compute_distance_matrix, evaluate_features, evaluate_rank


def eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid ``eval_market1501`` (torchreid/metrics/rank.py) verbatim, plus fast-reid's mINP lines."""
    num_q, num_g = distmat.shape

    if num_g < max_rank:
        max_rank = num_g
        print(f"Note: number of gallery samples is quite small, got {num_g}")

    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)

    # compute cmc curve for each query
    all_cmc = []
    all_AP = []
    all_INP = []
    num_valid_q = 0.0  # number of valid query

    for q_idx in range(num_q):
        # get query pid and camid
        q_pid = q_pids[q_idx]
        q_camid = q_camids[q_idx]

        # remove gallery samples that have the same pid and camid with query
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)

        # compute cmc curve
        raw_cmc = matches[q_idx][keep]  # binary vector, positions with value 1 are correct matches
        if not np.any(raw_cmc):
            # this condition is true when query identity does not appear in gallery
            continue

        cmc = raw_cmc.cumsum()

        pos_idx = np.where(raw_cmc == 1)  # fast-reid mINP
        max_pos_idx = np.max(pos_idx)
        inp = cmc[max_pos_idx] / (max_pos_idx + 1.0)
        all_INP.append(inp)

        cmc[cmc > 1] = 1

        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0

        # compute average precision
        # reference: https://en.wikipedia.org/wiki/Evaluation_measures_(information_retrieval)#Average_precision
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
        AP = tmp_cmc.sum() / num_rel
        all_AP.append(AP)

    assert num_valid_q > 0, "Error: all query identities do not appear in gallery"

    all_cmc = np.asarray(all_cmc).astype(np.float32)
    all_cmc = all_cmc.sum(0) / num_valid_q
    mAP = np.mean(all_AP)
    mINP = np.mean(all_INP)

    return all_cmc, mAP, mINP


def market_like(num_q: int, num_g: int, dim: int, ids: int, cams: int, seed: int):
    """Identity centre + camera bias + noise, float32; a sixth of the gallery are pid -1 distractors."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_distract = num_g // 6
    g_pids = np.concatenate([np.arange(num_g - n_distract) % ids, np.full(n_distract, -1)])
    g_camids = rng.integers(0, cams, num_g)
    q_pids = rng.integers(0, ids, num_q)
    q_camids = rng.integers(0, cams, num_q)
    scale = (4.0 / (dim / 2) ** 0.5) ** 0.5  # identity signal ~4 std of the noise in squared distance
    centers = scale * torch.randn(ids + 1, dim, generator=gen)  # row ids: the distractors' shared centre
    cam_bias = 0.5 * scale * torch.randn(cams, dim, generator=gen)

    def feats(pids: np.ndarray, camids: np.ndarray) -> torch.Tensor:
        x = torch.randn(len(pids), dim, generator=gen)
        rows, cams_t = torch.as_tensor(np.where(pids < 0, ids, pids)), torch.as_tensor(camids)
        for i in range(0, len(pids), 1024):  # in place, in blocks: keeps the RSS high-water mark low
            x[i : i + 1024] += centers[rows[i : i + 1024]] + cam_bias[cams_t[i : i + 1024]]
        return x

    return feats(q_pids, q_camids), feats(g_pids, g_camids), q_pids, g_pids, q_camids, g_camids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="quick run: 500 query x 2500 gallery x 256-d")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch's default (all cores)")
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the traced (slow) memory run")
    args = parser.parse_args()
    print_environment()
    if args.threads:
        torch.set_num_threads(args.threads)
    num_q, num_g, dim, ids, cams = (500, 2500, 256, 120, 6) if args.small else (3368, 15913, 2048, 751, 6)
    q, g, q_pids, g_pids, q_camids, g_camids = market_like(num_q, num_g, dim, ids, cams, args.seed)
    dev = torch.device(args.device)
    print(
        f"ReID evaluation, {num_q} query x {num_g} gallery x {dim}-d, {ids} ids, {cams} cameras; "
        f"float32, device {dev}, torch threads {torch.get_num_threads()}"
    )
    rss0 = peak_rss_mib()

    # gpfuse: distances + evaluation, chunked (warm-up on a slice first)
    qd, gd = q.to(dev), g.to(dev)
    ids_args = (q_pids, g_pids, q_camids, g_camids)
    evaluate_features(qd[:64], gd, q_pids[:64], g_pids, q_camids[:64], g_camids, chunk_size=args.chunk_size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    ours = evaluate_features(qd, gd, *ids_args, chunk_size=args.chunk_size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - t
    rss_ours = peak_rss_mib()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None

    # torchreid: full distance matrix, then the per-query Python loop
    t = time.perf_counter()
    distmat = compute_distance_matrix(q, g).numpy()
    t_dist = time.perf_counter() - t
    t = time.perf_counter()
    ref = eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    t_ref = time.perf_counter() - t
    rss_ref = peak_rss_mib()
    t = time.perf_counter()
    ours_rank = evaluate_rank(distmat, *ids_args)
    t_rank = time.perf_counter() - t
    trace_peak = float("nan")
    if not args.no_tracemalloc:  # second, untimed run: tracemalloc slows the Python loop several times
        tracemalloc.start()
        eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, 50)
        trace_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()

    def row(name: str, secs: float, res=None) -> str:
        if res is None:
            return f"{name:<42}{secs:>9.2f}"
        cmc, m_ap, m_inp = res
        return f"{name:<42}{secs:>9.2f}{m_ap:>9.4f}{cmc[0]:>9.4f}{cmc[4]:>9.4f}{cmc[9]:>9.4f}{m_inp:>9.4f}"

    print(f"{'path':<42}{'time [s]':>9}{'mAP':>9}{'R1':>9}{'R5':>9}{'R10':>9}{'mINP':>9}")
    print(row("torchreid: distance matrix (torch, CPU)", t_dist))
    print(row("torchreid: eval_market1501 (Python loop)", t_ref, ref))
    print(row("torchreid: distance + eval", t_dist + t_ref))
    print(row("gpfuse evaluate_rank (same distmat)", t_rank, ours_rank))
    print(row(f"gpfuse evaluate_features (dist + eval, {dev.type})", t_ours, ours))

    for name, res in (("evaluate_rank", ours_rank), ("evaluate_features", ours)):
        diffs = [abs(res[1] - ref[1]), float(np.abs(res[0][[0, 4, 9]] - ref[0][[0, 4, 9]]).max()), abs(res[2] - ref[2])]
        print(
            f"{name} vs torchreid: |dmAP| {diffs[0]:.1e}, max |dCMC@1,5,10| {diffs[1]:.1e}, |dmINP| "
            f"{diffs[2]:.1e} -> {'OK' if max(diffs) <= 1e-6 else 'MISMATCH'} (tolerance 1e-6: float32 ties "
            "are ordered by index here, arbitrarily by torchreid's quicksort)"
        )
    print(f"speed-up, evaluation given the distance matrix: {t_ref / t_rank:.1f}x (evaluate_rank vs eval_market1501)")
    print(
        f"speed-up, end to end: {(t_dist + t_ref) / t_ours:.1f}x "
        f"(evaluate_features vs distance matrix + eval_market1501); goal >= 20x"
    )
    print(
        f"peak memory: torchreid eval tracemalloc peak {trace_peak:.0f} MiB (numpy arrays; distmat "
        f"{distmat.nbytes / 2**20:.0f} MiB given); max RSS growth: evaluate_features "
        f"{rss_ours - rss0:.0f} MiB, then torchreid distance + eval {max(rss_ref - rss_ours, 0):.0f} MiB "
        f"more (process high-water mark, {rss0:.0f} MiB before)"
    )
    if gpu_peak is not None:
        print(f"evaluate_features CUDA peak allocated: {gpu_peak:.0f} MiB")


if __name__ == "__main__":
    main()
