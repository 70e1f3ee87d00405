"""ReID metrics: hand-computed cases, torchreid's loop as reference, chunked == full, re-ranking == classic."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch

from gpfuse.metrics import compute_distance_matrix, evaluate_features, evaluate_rank, re_ranking


# --------------------------------------------------------------------------------------- references
def torchreid_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, ap="standard"):
    """torchreid ``eval_market1501`` (loop per query) + fast-reid mINP + compute_mAP trapezoid AP.

    Only change: ``np.argsort(..., kind="stable")`` so that ties are ordered by gallery index.
    """
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        pos_idx = np.where(raw_cmc == 1)
        max_pos_idx = np.max(pos_idx)
        all_inp.append(cmc[max_pos_idx] / (max_pos_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_rel = raw_cmc.sum()
        if ap == "standard":
            tmp_cmc = raw_cmc.cumsum()
            tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
            tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
            all_ap.append(tmp_cmc.sum() / num_rel)
        else:
            rows_good = np.flatnonzero(raw_cmc)
            ngood, ap_q = len(rows_good), 0.0
            for i in range(ngood):
                d_recall = 1.0 / ngood
                precision = (i + 1) * 1.0 / (rows_good[i] + 1)
                old_precision = i * 1.0 / rows_good[i] if rows_good[i] != 0 else 1.0
                ap_q = ap_q + d_recall * (old_precision + precision) / 2
            all_ap.append(ap_q)
    assert all_cmc, "Error: all query identities do not appear in gallery"
    all_cmc = np.asarray(all_cmc).astype(np.float32)
    return all_cmc.sum(0) / len(all_cmc), np.mean(all_ap), np.mean(all_inp)


def classic_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The widely copied numpy k-reciprocal re-ranking (Zhong et al. / torchreid utils/rerank.py)."""
    original_dist = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0
    )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, : k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            cand_forward = initial_rank[candidate, : int(np.around(k1 / 2.0)) + 1]
            cand_backward = initial_rank[cand_forward, : int(np.around(k1 / 2.0)) + 1]
            fi_candidate = np.where(cand_backward == candidate)[0]
            cand_k_reciprocal_index = cand_forward[fi_candidate]
            if len(np.intersect1d(cand_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
                cand_k_reciprocal_index
            ):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, cand_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1.0 * weight / np.sum(weight)
    original_dist = original_dist[:query_num,]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]]
            )
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def random_split(seed: int, num_q: int = 37, num_g: int = 211, dim: int = 16, ids: int = 15):
    """Clustered features; a few queries with an identity absent from the gallery."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(ids, dim))
    g_pids = rng.integers(0, ids, num_g)
    q_pids = rng.integers(0, ids, num_q)
    q_pids[:3] = ids + 7  # no match at all
    g_feats = centers[g_pids] + rng.normal(scale=0.9, size=(num_g, dim))
    q_feats = centers[q_pids % ids] + rng.normal(scale=0.9, size=(num_q, dim))
    return q_feats, g_feats, q_pids, g_pids, rng.integers(0, 4, num_q), rng.integers(0, 4, num_g)


def assert_same(got, want, rtol=1e-12):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1:], want[1:], rtol=rtol, atol=0)


# ------------------------------------------------------------------------------- the hand example
# Gallery  g0   g1   g2   g3   g4
#   pid     1    2    1    2    1
#   cam     0    0    1    1    2
# q0 (pid 1, cam 0), distances .1 .2 .3 .4 .5 -> order g0 g1 g2 g3 g4; g0 is removed (same pid and
#   cam): kept g1 g2 g3 g4 = miss hit miss hit -> match ranks 1, 3 (0-based).
#   AP = (1/2 + 2/4) / 2 = 1/2; CMC = 0 1 1 1; INP = 2 / (3 + 1) = 1/2.
#   trapezoid: (1/2)(0/1 + 1/2)/2 + (1/2)(1/3 + 2/4)/2 = 1/8 + 5/24 = 1/3.
# q1 (pid 2, cam 1), distances .5 .4 .3 .1 .2 -> order g3 g4 g2 g1 g0; g3 removed: kept g4 g2 g1 g0 =
#   miss miss hit miss -> match rank 2. AP = 1/3; CMC = 0 0 1 1; INP = 1/3;
#   trapezoid: 1 * (0/2 + 1/3) / 2 = 1/6.
# Means: mAP = 5/12, CMC = 0 .5 1 1, mINP = 5/12, trapezoid mAP = 1/4.
HAND = dict(
    distmat=np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.1, 0.2]]),
    q_pids=np.array([1, 2]),
    g_pids=np.array([1, 2, 1, 2, 1]),
    q_camids=np.array([0, 1]),
    g_camids=np.array([0, 0, 1, 1, 2]),
)


def test_hand_example():
    cmc, m_ap, m_inp = evaluate_rank(**HAND, max_rank=4)
    assert cmc.dtype == np.float32
    np.testing.assert_array_equal(cmc, [0.0, 0.5, 1.0, 1.0])
    assert m_ap == pytest.approx(5 / 12, abs=1e-15)
    assert m_inp == pytest.approx(5 / 12, abs=1e-15)
    _, ap_trap, inp_trap = evaluate_rank(**HAND, max_rank=4, ap="trapezoid")
    assert ap_trap == pytest.approx(1 / 4, abs=1e-15)
    assert inp_trap == pytest.approx(5 / 12, abs=1e-15)


def test_hand_example_matches_torchreid_loop():
    d = HAND
    for ap in ("standard", "trapezoid"):
        want = torchreid_eval(d["distmat"], d["q_pids"], d["g_pids"], d["q_camids"], d["g_camids"], 4, ap)
        assert_same(evaluate_rank(**d, max_rank=4, ap=ap), want)


def test_max_rank_larger_than_gallery_warns_and_pads():
    with pytest.warns(UserWarning, match="max_rank=50"):
        cmc, _, _ = evaluate_rank(**HAND)
    # q1 keeps only 4 entries; its CMC stays at 1 for rank 5
    np.testing.assert_array_equal(cmc, [0.0, 0.5, 1.0, 1.0, 1.0])


def test_same_pid_same_camera_removed():
    # the only same-pid entry shares the query's camera: without removal it would be rank 1
    cmc, m_ap, _ = evaluate_rank(
        np.array([[0.0, 0.5, 0.9]]), np.array([3]), np.array([3, 3, 4]), np.array([1]), np.array([1, 2, 1]), max_rank=2
    )
    np.testing.assert_array_equal(cmc, [1.0, 1.0])  # g1 is rank 1 once g0 is gone
    assert m_ap == 1.0


def test_queries_without_match_skipped():
    d = dict(HAND)
    d["distmat"] = np.vstack([HAND["distmat"], [0.3, 0.3, 0.3, 0.3, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5]])
    d["q_pids"] = np.array([1, 2, 9, 2])  # pid 9 is not in the gallery
    d["q_camids"] = np.array([0, 1, 0, 0])  # the last query (pid 2, cam 0) sees pid 2 only under camera 0
    d["g_pids"] = HAND["g_pids"].copy()
    d["g_camids"] = HAND["g_camids"].copy()
    d["g_camids"][3] = 0  # so both pid-2 gallery images are in camera 0
    # q1 (pid 2, cam 1) now sees g3 too: order g3 g4 g2 g1 g0, hits at 0 and 3 -> AP (1 + 2/4) / 2
    cmc, m_ap, m_inp = evaluate_rank(**d, max_rank=4)
    want = torchreid_eval(d["distmat"], d["q_pids"], d["g_pids"], d["q_camids"], d["g_camids"], 4)
    assert_same((cmc, m_ap, m_inp), want)
    assert m_ap == pytest.approx((0.5 + 0.75) / 2)


def test_no_query_with_match_raises():
    with pytest.raises(ValueError, match="no query has a match"):
        evaluate_rank(np.ones((2, 3)), [5, 6], [1, 2, 3], [0, 0], [0, 1, 2], max_rank=3)
    with pytest.raises(ValueError, match="no query has a match"):  # only same-camera matches
        evaluate_features(np.ones((1, 2)), np.ones((2, 2)), [1], [1, 1], [0], [0, 0], max_rank=2)


@pytest.mark.parametrize("ap", ["standard", "trapezoid"])
def test_ties_broken_by_gallery_index(ap):
    # binary features: exact integer distances, many ties
    rng = np.random.default_rng(3)
    q_feats = rng.integers(0, 2, (23, 4)).astype(np.float64)
    g_feats = rng.integers(0, 2, (97, 4)).astype(np.float64)
    q_pids, g_pids = rng.integers(0, 5, 23), rng.integers(0, 5, 97)
    q_cams, g_cams = rng.integers(0, 3, 23), rng.integers(0, 3, 97)
    dist = compute_distance_matrix(q_feats, g_feats).numpy()
    assert len(np.unique(dist)) <= 5
    want = torchreid_eval(dist, q_pids, g_pids, q_cams, g_cams, 10, ap)
    assert_same(evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10, ap=ap), want)
    for chunk in (1, 4, 64):
        got = evaluate_features(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, max_rank=10, chunk_size=chunk, ap=ap)
        assert_same(got, want)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ap", ["standard", "trapezoid"])
def test_evaluate_rank_equals_torchreid_loop(seed, ap):
    q_feats, g_feats, *ids = random_split(seed)
    dist = compute_distance_matrix(q_feats, g_feats).numpy()
    assert_same(evaluate_rank(dist, *ids, max_rank=20, ap=ap), torchreid_eval(dist, *ids, 20, ap))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("ap", ["standard", "trapezoid"])
def test_evaluate_features_equals_evaluate_rank(metric, ap):
    q_feats, g_feats, *ids = random_split(5)
    want = evaluate_rank(compute_distance_matrix(q_feats, g_feats, metric), *ids, max_rank=20, ap=ap)
    assert 0.0 < want[1] < 1.0 and 0.0 < want[2] < 1.0
    for chunk in (1, 7, 37, 256):
        got = evaluate_features(q_feats, g_feats, *ids, metric=metric, max_rank=20, chunk_size=chunk, ap=ap)
        assert_same(got, want)


def test_float32_torch_and_numpy_inputs_agree():
    q_feats, g_feats, q_pids, g_pids, q_cams, g_cams = random_split(2)
    qf, gf = torch.as_tensor(q_feats, dtype=torch.float32), torch.as_tensor(g_feats, dtype=torch.float32)
    dist = compute_distance_matrix(qf, gf)
    assert dist.dtype == torch.float32 and dist.shape == (37, 211)
    want = evaluate_rank(dist.numpy(), q_pids, g_pids, q_cams, g_cams, max_rank=20)
    ids_t = [torch.as_tensor(x) for x in (q_pids, g_pids, q_cams, g_cams)]
    assert_same(evaluate_rank(dist, *ids_t, max_rank=20), want)
    assert_same(evaluate_features(qf, gf, *ids_t, max_rank=20, chunk_size=16), want, rtol=1e-6)
    assert_same(evaluate_features(qf.numpy(), gf.numpy(), q_pids.tolist(), g_pids, q_cams, g_cams, max_rank=20), want)


def test_compute_distance_matrix_values():
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    want = ((a[:, None] - b[None]) ** 2).sum(-1)
    torch.testing.assert_close(compute_distance_matrix(a, b), want)
    cos = torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=-1)
    torch.testing.assert_close(compute_distance_matrix(a, b, metric="cosine"), 1 - cos)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    q_feats, g_feats, *ids = random_split(4)
    want = evaluate_features(q_feats, g_feats, *ids, max_rank=20)
    got = evaluate_features(torch.as_tensor(q_feats).cuda(), torch.as_tensor(g_feats).cuda(), *ids, max_rank=20)
    assert_same(got, want)
    dist = compute_distance_matrix(torch.as_tensor(q_feats).cuda(), torch.as_tensor(g_feats).cuda())
    assert_same(evaluate_rank(dist, *ids, max_rank=20), want)


def test_errors():
    d = HAND
    with pytest.raises(ValueError, match="q_pids has 3 values but distmat rows has 2"):
        evaluate_rank(d["distmat"], [1, 2, 3], d["g_pids"], d["q_camids"], d["g_camids"])
    with pytest.raises(ValueError, match="g_camids has 4 values but distmat columns has 5"):
        evaluate_rank(d["distmat"], d["q_pids"], d["g_pids"], d["q_camids"], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="g_pids has 4 values but g_feats has 5"):
        evaluate_features(np.ones((2, 3)), np.ones((5, 3)), [1, 2], [1, 2, 3, 4], [0, 0], [0] * 5)
    with pytest.raises(ValueError, match="same feature dim"):
        evaluate_features(np.ones((2, 3)), np.ones((5, 4)), [1, 2], [1] * 5, [0, 0], [0] * 5)
    with pytest.raises(ValueError, match="distmat must be 2-D"):
        evaluate_rank(np.ones(5), [1], [1] * 5, [0], [0] * 5)
    with pytest.raises(ValueError, match=r"ap must be one of: \['standard', 'trapezoid'\], got 'mean'"):
        evaluate_rank(**d, max_rank=4, ap="mean")
    with pytest.raises(ValueError, match=r"metric must be one of: \['euclidean', 'cosine'\], got 'l1'"):
        compute_distance_matrix(np.ones((2, 3)), np.ones((2, 3)), metric="l1")
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        evaluate_features(np.ones((2, 3)), np.ones((5, 3)), [1, 2], [1] * 5, [0, 0], [1] * 5, chunk_size=0)
    with pytest.raises(ValueError, match="max_rank must be a positive integer"):
        evaluate_rank(**d, max_rank=0)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(np.full((2, 5), np.nan), d["q_pids"], d["g_pids"], d["q_camids"], d["g_camids"], max_rank=4)
    with pytest.raises(ValueError, match="integer ids"):
        evaluate_rank(d["distmat"], [1.5, 2], d["g_pids"], d["q_camids"], d["g_camids"], max_rank=4)
    with pytest.raises(ValueError, match="lambda_value must be in"):
        re_ranking(np.ones((2, 3)), np.ones((4, 3)), lambda_value=1.5)


# -------------------------------------------------------------------------------------- re-ranking
@pytest.mark.parametrize(
    "k1,k2,lam,seed",
    [(20, 6, 0.3, 0), (4, 3, 0.3, 1), (5, 1, 0.5, 2), (6, 2, 0.0, 3), (3, 6, 1.0, 4)],
)
def test_re_ranking_equals_classic(k1, k2, lam, seed):
    q_feats, g_feats, *_ = random_split(seed, num_q=6, num_g=10, dim=8, ids=3)
    want = classic_re_ranking(
        euclidean(q_feats, g_feats), euclidean(q_feats, q_feats), euclidean(g_feats, g_feats), k1, k2, lam
    )
    for chunk in (3, 512):
        got = re_ranking(q_feats, g_feats, k1=k1, k2=k2, lambda_value=lam, chunk_size=chunk)
        assert got.dtype == np.float32 and got.shape == (6, 10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_re_ranking_larger_and_torch_input():
    q_feats, g_feats, *_ = random_split(7, num_q=20, num_g=60, dim=8, ids=6)
    want = classic_re_ranking(
        euclidean(q_feats, g_feats), euclidean(q_feats, q_feats), euclidean(g_feats, g_feats), 8, 3, 0.3
    )
    got = re_ranking(torch.as_tensor(q_feats), torch.as_tensor(g_feats), k1=8, k2=3, chunk_size=16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, 0.3 * euclidean(q_feats, g_feats) ** 2)  # the Jaccard term did something


@pytest.mark.parametrize("ap", ["standard", "trapezoid"])
def test_ties_of_exactly_two_entries_are_ordered_by_gallery_index(ap):
    """Every distance taken by two gallery entries: each match's rank depends on the one tie it is in."""
    rng = np.random.default_rng(4)
    num_q, num_g = 9, 40
    dist = np.stack([rng.permutation(np.repeat(np.arange(num_g // 2, dtype=float), 2)) for _ in range(num_q)])
    q_pids, g_pids = rng.integers(0, 4, num_q), rng.integers(0, 4, num_g)
    q_cams, g_cams = rng.integers(0, 2, num_q), rng.integers(0, 2, num_g)
    want = torchreid_eval(dist, q_pids, g_pids, q_cams, g_cams, 10, ap)
    assert_same(evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10, ap=ap), want)


def test_integer_distances_rank_as_their_float_values():
    q_feats, g_feats, *ids = random_split(2)
    dist = np.round(compute_distance_matrix(q_feats, g_feats).numpy() * 10).astype(np.int64)
    assert_same(evaluate_rank(dist, *ids, max_rank=20), evaluate_rank(dist.astype(np.float64), *ids, max_rank=20))


def test_max_rank_defaults_to_50_and_a_gallery_of_exactly_max_rank_does_not_warn():
    q_feats, g_feats, *ids = random_split(3)
    cmc, _, _ = evaluate_rank(compute_distance_matrix(q_feats, g_feats), *ids)
    assert cmc.shape == (50,)
    dist = compute_distance_matrix(q_feats, g_feats)[:, :20]
    q_pids, g_pids, q_cams, g_cams = ids[0], ids[1][:20], ids[2], ids[3][:20]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cmc, _, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    assert cmc.shape == (20,)


def test_re_ranking_defaults_are_the_papers_and_a_small_pair_budget_gives_the_same_distances(monkeypatch):
    """k1 = 20, k2 = 6, lambda = 0.3 (Zhong et al.); the Jaccard step split into many blocks (a pair budget
    of 64 instead of 2^23) computes the same distances."""
    module = importlib.import_module("gpfuse.metrics.re_ranking")  # the package exports the function by that name
    q_feats, g_feats, *_ = random_split(8, num_q=12, num_g=40, dim=8, ids=4)
    want = classic_re_ranking(
        euclidean(q_feats, g_feats), euclidean(q_feats, q_feats), euclidean(g_feats, g_feats), 20, 6, 0.3
    )
    whole = re_ranking(q_feats, g_feats)
    np.testing.assert_allclose(whole, want, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(module, "_PAIR_BUDGET", 64)
    for chunk in (5, 512):
        np.testing.assert_array_equal(re_ranking(q_feats, g_feats, chunk_size=chunk), whole)


def test_re_ranking_names_the_argument_at_fault():
    feats = np.ones((3, 2))
    for name in ("k1", "k2", "chunk_size"):
        with pytest.raises(ValueError, match=f"^{name} must be a positive integer, got 0$"):
            re_ranking(feats, feats, **{name: 0})
    with pytest.raises(ValueError, match=r"q_feats and g_feats must be non-empty, got 0 and 3 rows"):
        re_ranking(np.ones((0, 2)), feats)
    with pytest.raises(ValueError, match=r"got 3 and 0 rows"):
        re_ranking(feats, np.ones((0, 2)))
