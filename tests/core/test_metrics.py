"""tnn.core.metrics against hand-computed cases, sklearn, the naive loops and its own dense path."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from tests.reference import metrics as ref
from tnn.core import metrics
from tnn.errors import DataError

DTYPES = [np.float32, np.float64]


def random_case(seed, dtype, ties, n_q=40, n_g=70):
    """sim (n_q, n_g) with integer-valued scores when ties; query label 9 is absent from g."""
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 4, (n_q, n_g)) if ties else rng.standard_normal((n_q, n_g))
    q, g = rng.integers(0, 4, n_q), rng.integers(0, 4, n_g)
    q[0] = 9
    return sim.astype(dtype), q, g


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- hand-computed cases

@pytest.mark.parametrize("scores, relevant, expected", [
    ([3.0, 2.0, 1.0], [1, 0, 1], (1 + 2 / 3) / 2),   # ranking R N R
    ([3.0, 2.0, 1.0], [0, 1, 0], 1 / 2),             # N R N
    ([1.0, 2.0, 3.0], [1, 1, 1], 1.0),               # every item relevant
    ([3.0, 3.0, 1.0], [1, 0, 1], (1 / 2 + 2 / 3) / 2),  # tied top pair is one step: P = 1/2
    ([2.0, 2.0, 2.0], [1, 1, 0], 2 / 3),             # all tied: P = 2/3 for both
])
def test_average_precision_hand_cases(scores, relevant, expected):
    g = np.array(relevant)
    for sim in (np.array([scores]), np.array([scores], dtype=np.int64)):  # integer sims accepted
        ap = metrics.average_precision(sim, np.array([1]), g)
        assert ap[0] == pytest.approx(expected, abs=1e-15)
    assert average_precision_score(g, scores) == pytest.approx(expected, abs=1e-15)


def test_precision_at_k_and_mrr_hand_cases():
    sim = np.array([[5.0, 5.0, 5.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    q, g = np.array([1, 1]), np.array([1, 0, 0, 1])
    # query 0: top block of 3 holds 1 relevant -> P@1 = 1/3, P@2 = (2/3)/2, P@4 = 2/4
    # query 1: ranking R N N R -> P@1 = 1, P@2 = 1/2, P@4 = 2/4
    assert metrics.mrr_at_1(sim, q, g) == pytest.approx((1 / 3 + 1) / 2)
    p = metrics.precision_at_k(sim, q, g, ks=(2, 4))
    assert p == pytest.approx({2: (1 / 3 + 1 / 2) / 2, 4: 1 / 2})


def test_pr_curve_hand_case():
    # ranking R N R N: points (recall 1/2, P 1), (recall 1, P 2/3)
    sim, q, g = np.array([[4.0, 3.0, 2.0, 1.0]]), np.array([0]), np.array([0, 1, 0, 1])
    levels, precision = metrics.pr_curve(sim, q, g, n_levels=5)
    np.testing.assert_allclose(levels, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(precision, [1, 1, 1, 2 / 3, 2 / 3])


# ---------------------------------------------------------------- sklearn and the naive loops

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [True, False])
def test_average_precision_matches_sklearn(dtype, ties):
    sim, q, g = random_case(0, dtype, ties)
    ap = metrics.average_precision(sim, q, g)
    assert np.isnan(ap[0])  # label 9 has no relevant gallery item
    expected = [average_precision_score(g == q[i], sim[i]) for i in range(1, len(q))]
    np.testing.assert_allclose(ap[1:], expected, rtol=0, atol=1e-12)
    assert metrics.mean_average_precision(sim, q, g) == pytest.approx(np.mean(expected), abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [True, False])
def test_metrics_match_reference(dtype, ties):
    sim, q, g = random_case(1, dtype, ties)
    np.testing.assert_allclose(metrics.average_precision(sim, q, g),
                               ref.average_precision(sim, q, g), atol=1e-12)
    p = metrics.precision_at_k(sim, q, g, ks=(1, 3, 10))
    for k in (1, 3, 10):
        assert p[k] == pytest.approx(ref.nan_mean(ref.precision_at_k(sim, q, g, k)), abs=1e-12)
    assert metrics.mrr_at_1(sim, q, g) == pytest.approx(p[1], abs=1e-15)
    expected = np.nanmean(np.array(ref.pr_curve(sim, q, g, 11)), axis=0)
    np.testing.assert_allclose(metrics.pr_curve(sim, q, g)[1], expected, atol=1e-12)


def test_pr_curve_is_monotone_and_ends_at_last_relevant_rank():
    sim, q, g = random_case(2, np.float64, ties=False)
    levels, precision = metrics.pr_curve(sim, q, g, n_levels=11)
    np.testing.assert_allclose(levels, np.linspace(0, 1, 11))
    assert np.all(np.diff(precision) <= 0)
    # at recall 1: R / (rank of the lowest-scored relevant item), averaged over queries
    last = [(g == q[i]).sum() / (sim[i] >= sim[i][g == q[i]].min()).sum() for i in range(1, len(q))]
    assert precision[-1] == pytest.approx(np.mean(last), abs=1e-12)


# ---------------------------------------------------------------- chunked == dense

@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_equals_unchunked(dtype):
    sim, q, g = random_case(3, dtype, ties=True, n_q=50)
    whole = metrics._sim_stats(sim, q, g, (1, 5), 11, chunk_size=50, n_threads=1)
    for chunk, threads in [(7, 1), (7, 2), (1, 3), (None, 2)]:
        part = metrics._sim_stats(sim, q, g, (1, 5), 11, chunk_size=chunk, n_threads=threads)
        for a, b in zip(whole[1], part[1]):
            np.testing.assert_array_equal(a, b)


def test_memory_budget_sets_the_chunk_rows():
    sim, q, g = random_case(4, np.float32, ties=False)
    tiny = metrics.average_precision(sim, q, g, memory_gib=1e-9, n_threads=2)  # 1 row per chunk
    np.testing.assert_array_equal(tiny, metrics.average_precision(sim, q, g))


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_cross_modal_scores_equal_the_dense_computation(dtype, atol):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 50)
    audio = (rng.standard_normal((4, 6))[labels] + rng.standard_normal((50, 6))).astype(dtype)
    visual = (audio + rng.standard_normal((50, 6))).astype(dtype)
    got = metrics.cross_modal_scores(audio, visual, labels, ks=(1, 5), chunk_size=7, n_threads=2)
    sim = unit(audio.astype(np.float64)) @ unit(visual.astype(np.float64)).T
    for name, s in (("a2v", sim), ("v2a", sim.T)):
        assert got[f"{name}_map"] == pytest.approx(
            metrics.mean_average_precision(s, labels, labels), abs=atol)
        assert got[f"mrr1_{name}"] == pytest.approx(metrics.mrr_at_1(s, labels, labels), abs=atol)
        assert got[f"{name}_p@5"] == pytest.approx(
            metrics.precision_at_k(s, labels, labels, (5,))[5], abs=atol)
        np.testing.assert_allclose(got[f"{name}_pr"], metrics.pr_curve(s, labels, labels)[1],
                                   atol=atol)


def test_identical_views_retrieve_perfectly():
    labels = np.repeat(np.arange(3), 5)
    emb = np.eye(3)[labels] + 0.01 * np.random.default_rng(6).standard_normal((15, 3))
    out = metrics.retrieval_metrics(emb, labels, emb, labels, ks=(1, 5))
    assert out["map"] == pytest.approx(1.0) and out["mrr1"] == 1.0 and out["p@5"] == 1.0
    np.testing.assert_allclose(out["pr_precision"], 1.0)


def test_core_module_imports_only_numpy():
    code = "import sys, tnn.core.metrics; print(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- bad input

SIM, Q, G = np.ones((2, 3)), np.array([0, 1]), np.array([0, 1, 1])


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.average_precision(np.ones(3), Q, G), r"sim must be a non-empty 2-D"),
    (lambda: metrics.average_precision(SIM.astype(complex), Q, G), r"sim must be real-valued"),
    (lambda: metrics.average_precision(np.array([[1, np.nan, 0], [0, 0, 0]]), Q, G, n_threads=1),
     r"sim contains NaN or inf in rows 0\.\.1"),
    (lambda: metrics.average_precision(np.array([[1, 0, 0], [0, -np.inf, 0]]), Q, G, chunk_size=1),
     r"sim contains NaN or inf in rows 1\.\.1"),
    (lambda: metrics.average_precision(SIM, Q.astype(float), G), r"q_labels must be a 1-D integer"),
    (lambda: metrics.average_precision(SIM, Q, G[:2]), r"g_labels has 2 entries but sim \(col"),
    (lambda: metrics.average_precision(SIM, Q + 5, G), r"no query has a relevant gallery item"),
    (lambda: metrics.average_precision(SIM, Q, G, chunk_size=0), r"chunk_size must be a positive"),
    (lambda: metrics.average_precision(SIM, Q, G, memory_gib=0), r"memory_gib must be positive"),
    (lambda: metrics.precision_at_k(SIM, Q, G, ks=(0, 2)), r"ks must be integers >= 1, got \(0, 2\)"),
    (lambda: metrics.precision_at_k(SIM, Q, G, ks=(True,)), r"ks must be integers >= 1"),
    (lambda: metrics.pr_curve(SIM, Q, G, n_levels=1), r"n_levels must be >= 2"),
    (lambda: metrics.cross_modal_scores(np.array([[1.0, 0], [np.inf, 0]]), SIM[:, :2], Q),
     r"audio_emb: row 1 has NaN or inf values"),
    (lambda: metrics.cross_modal_scores(SIM[:, :2], np.zeros((2, 2)), Q), r"visual_emb: row 0 is all zeros"),
    (lambda: metrics.cross_modal_scores(SIM, SIM[:, :2], Q), r"audio_emb has shape \(2, 3\) but"),
    (lambda: metrics.cross_modal_scores(SIM, SIM, Q[:1]), r"labels has 1 entries but audio_emb"),
    (lambda: metrics.retrieval_metrics(SIM, Q, SIM[:, :2], Q), r"query dim 3 differs from galle"),
])
def test_bad_input_raises_data_error(call, match):
    with pytest.raises(DataError, match=match):
        call()


def test_a_cutoff_above_the_gallery_is_left_out_with_a_note():
    """precision@10 on an 8-clip test fold: no error; p@10 is absent and named in ks_left_out,
    the other cutoffs are those of the same call without 10."""
    rng = np.random.default_rng(3)
    audio, visual, labels = rng.normal(size=(8, 4)), rng.normal(size=(8, 4)), np.arange(8) % 3
    got = metrics.cross_modal_scores(audio, visual, labels, ks=(1, 5, 10))
    same = metrics.cross_modal_scores(audio, visual, labels, ks=(1, 5))
    assert got["ks_left_out"] == (10,) and "a2v_p@10" not in got and "v2a_p@10" not in got
    assert {k: v for k, v in got.items() if k != "ks_left_out" and np.isscalar(v)} == \
        {k: v for k, v in same.items() if np.isscalar(v)}
    assert "ks_left_out" not in same
    assert metrics.precision_at_k(SIM, Q, G, ks=(1, 4)) == metrics.precision_at_k(SIM, Q, G, ks=(1,))
