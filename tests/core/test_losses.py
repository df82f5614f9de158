"""Distances and triplet losses against explicit loops (tests/reference/triplets.py), values and
gradients in float64 and float32; the fused batch-all path against the index path."""

import sys
import types

import pytest
import torch

from tests.reference import triplets as ref
from tnn.core.distances import pairwise_distance, pairwise_distance_chunked
from tnn.errors import ConfigError, DataError
from tnn.core.losses import (batch_all_triplet_loss, combined_loss, proxy_cross_entropy,
                             proxy_logits, proxy_loss, triplet_loss)
from tnn.core.mining import batch_all

LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 1, 1, 0, 1])  # class 2 has a single item
DTYPES = [torch.float64, torch.float32]
KINDS = ["sqeuclidean", "cosine"]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}
REF_MINERS = {
    "batch_all": lambda q, r, m, k, ex, si: ref.batch_all(q, LABELS, r, LABELS, m, k, ex, si),
    "semi_hard": lambda q, r, m, k, ex, si: ref.semi_hard(q, LABELS, r, LABELS, m, k, ex, si),
    "batch_hard": lambda q, r, m, k, ex, si: ref.batch_hard(q, LABELS, r, LABELS, k, ex, si),
}


def embeddings(dtype=torch.float64, n=len(LABELS), dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    visual = 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return audio.to(dtype).requires_grad_(True), visual.to(dtype).requires_grad_(True)


def value_and_grads(loss, *inputs):
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    return (loss.detach(), *grads)


def assert_close_all(got, want, dtype):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[dtype])


# --- distances -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_distance_matches_definition(dtype, kind):
    x, y = embeddings(dtype, n=7)
    got = value_and_grads(pairwise_distance(x, y[:5], kind).pow(2).sum(), x, y)
    table = ref.distance_table(x, y[:5], kind)
    want = value_and_grads(sum(d ** 2 for row in table for d in row), x, y)
    assert_close_all(got, want, dtype)


def test_sqeuclidean_nonnegative_with_exact_diagonal():
    x = torch.full((5, 3), 1e3, dtype=torch.float32) + 1e-4 * torch.randn(5, 3)
    d = pairwise_distance(x, x)
    assert (d >= 0).all() and (d.diagonal() == 0).all()
    assert (pairwise_distance(x, x, "cosine").diagonal() == 0).all()


def test_cosine_zero_row_is_finite():
    x = torch.zeros(2, 3, requires_grad=True)
    d = pairwise_distance(x, torch.ones(4, 3), "cosine")
    d.sum().backward()
    assert torch.equal(d, torch.ones(2, 4)) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 64])
def test_chunked_distance_equals_simple(kind, chunk_size):
    x, y = embeddings(n=10)
    w = torch.randn(10, 10, dtype=torch.float64)
    for other in (y, x):  # a ref set, and x itself (exact diagonal)
        chunked = pairwise_distance_chunked(x, other, kind, chunk_size)
        got = value_and_grads((chunked * w).sum(), x, y)
        want = value_and_grads((pairwise_distance(x, other, kind) * w).sum(), x, y)
        assert_close_all(got, want, torch.float64)


def test_distance_errors():
    with pytest.raises(ConfigError, match="unknown distance"):
        pairwise_distance(torch.ones(2, 3), torch.ones(2, 3), "euclidean")
    with pytest.raises(DataError, match="got"):
        pairwise_distance(torch.ones(2, 3), torch.ones(2, 4))


# --- triplet loss vs loops -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("miner", list(REF_MINERS))
@pytest.mark.parametrize("exclude", [False, True])
def test_triplet_loss_matches_loops(dtype, kind, miner, exclude):
    q, r = embeddings(dtype)
    out = triplet_loss(q, LABELS, r, LABELS, 0.5, distance=kind, miner=miner,
                       exclude_self_pair=exclude)
    trip = REF_MINERS[miner](q, r, 0.5, kind, exclude, None)
    want = value_and_grads(ref.loss(q, r, trip, 0.5, kind), q, r)
    assert_close_all(value_and_grads(out.loss, q, r), want, dtype)
    assert int(out.num_triplets) == len(trip) > 0
    assert 0 < int(out.num_active) <= len(trip)


@pytest.mark.parametrize("miner", list(REF_MINERS))
@pytest.mark.parametrize("reduction", ["mean", "mean_positive", "sum"])
def test_reductions_match_loops(miner, reduction):
    q, r = embeddings()
    out = triplet_loss(q, LABELS, r, LABELS, 0.5, miner=miner, reduction=reduction)
    trip = REF_MINERS[miner](q, r, 0.5, "sqeuclidean", False, None)
    want = value_and_grads(ref.loss(q, r, trip, 0.5, "sqeuclidean", reduction), q, r)
    assert_close_all(value_and_grads(out.loss, q, r), want, torch.float64)
    active = sum(ref.loss(q, r, [t], 0.5, "sqeuclidean").item() > 0 for t in trip)
    assert int(out.num_active) == active
    torch.testing.assert_close(float(out.frac_active), active / len(trip))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size", [None, 1, 3, 4])
@pytest.mark.parametrize("reduction", ["mean", "mean_positive", "sum"])
def test_fused_batch_all_equals_index_path_equals_loops(dtype, kind, chunk_size, reduction):
    q, r = embeddings(dtype)
    kw = dict(distance=kind, exclude_self_pair=True, reduction=reduction)
    fused = batch_all_triplet_loss(q, LABELS, r, LABELS, 0.5, chunk_size=chunk_size, **kw)
    idx = triplet_loss(q, LABELS, r, LABELS, 0.5, triplets=batch_all(LABELS, LABELS, True), **kw)
    trip = ref.valid_triplets(LABELS, LABELS, True)
    want = value_and_grads(ref.loss(q, r, trip, 0.5, kind, reduction), q, r)
    assert_close_all(value_and_grads(fused.loss, q, r), want, dtype)
    assert_close_all(value_and_grads(idx.loss, q, r), want, dtype)
    assert fused.num_triplets == idx.num_triplets == len(trip)
    assert fused.num_active == idx.num_active


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exclude", [False, True])
def test_fused_batch_all_on_a_bigger_batch(dtype, exclude):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (60,), generator=g)
    q = torch.rand(60, 10, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    r = torch.rand(60, 10, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    fused = batch_all_triplet_loss(q, labels, r, labels, 0.5, exclude_self_pair=exclude,
                                   chunk_size=5)
    idx = triplet_loss(q, labels, r, labels, 0.5, triplets=batch_all(labels, labels, exclude))
    assert_close_all(value_and_grads(fused.loss, q, r), value_and_grads(idx.loss, q, r), dtype)
    assert fused.num_active == idx.num_active and 0 < fused.frac_active < 1


@pytest.mark.parametrize("miner", list(REF_MINERS))
@pytest.mark.parametrize("exclude", [False, True])
def test_subset_of_queries_against_all_refs(miner, exclude):
    # local anchors vs the global (gathered) refs: same per-triplet values as the full batch
    q, r = embeddings()
    rows = torch.tensor([2, 3, 5, 9])
    out = triplet_loss(q[rows], LABELS[rows], r, LABELS, 0.5, miner=miner,
                       exclude_self_pair=exclude, self_index=rows, reduction="sum")
    trip = [t for t in REF_MINERS[miner](q, r, 0.5, "sqeuclidean", exclude, None) if t[0] in rows]
    want = value_and_grads(ref.loss(q, r, trip, 0.5, "sqeuclidean", "sum"), q, r)
    assert_close_all(value_and_grads(out.loss, q, r), want, torch.float64)
    assert int(out.num_triplets) == len(trip) > 0


@pytest.mark.parametrize("miner", list(REF_MINERS))
@pytest.mark.parametrize("reduction", ["mean", "mean_positive", "sum"])
@pytest.mark.parametrize("labels,exclude", [(torch.zeros(6, dtype=torch.long), False),
                                            (torch.arange(6), True)])
def test_no_valid_triplet_gives_zero_with_gradient(miner, reduction, labels, exclude):
    q, r = embeddings(n=6)
    out = triplet_loss(q, labels, r, labels, 0.5, miner=miner, exclude_self_pair=exclude,
                       reduction=reduction)
    gq, gr = torch.autograd.grad(out.loss, (q, r))
    assert out.loss.item() == 0 and int(out.num_triplets) == 0 and float(out.frac_active) == 0
    assert torch.equal(gq, torch.zeros_like(q)) and torch.equal(gr, torch.zeros_like(r))


def test_loss_argument_errors():
    q, r = embeddings()
    with pytest.raises(ConfigError, match="unknown reduction"):
        triplet_loss(q, LABELS, r, LABELS, reduction="max")
    with pytest.raises(ConfigError, match="unknown miner"):
        triplet_loss(q, LABELS, r, LABELS, miner="hardest")
    with pytest.raises(DataError, match="labels"):
        triplet_loss(q, LABELS[:5], r, LABELS)
    with pytest.raises(ConfigError, match="self_index"):
        triplet_loss(q[:4], LABELS[:4], r, LABELS, exclude_self_pair=True)


# --- combined loss ---------------------------------------------------------------------------

def fake_cca(x, x_labels, y, y_labels, scale=1.0):
    return -scale * (x * y).sum() / len(x)


def test_combined_loss_named_terms_and_weighted_total():
    audio, visual = embeddings()
    out = combined_loss(audio, visual, LABELS, directions=("a2v", "v2a"), w_triplet=0.7, w_cca=0.3,
                        cca=fake_cca, cca_kwargs={"scale": 2.0}, margin=0.5, exclude_self_pair=True)
    a2v = triplet_loss(audio, LABELS, visual, LABELS, 0.5, exclude_self_pair=True)
    v2a = triplet_loss(visual, LABELS, audio, LABELS, 0.5, exclude_self_pair=True)
    torch.testing.assert_close(out["triplet_a2v"], a2v.loss.detach())
    torch.testing.assert_close(out["triplet"], (a2v.loss + v2a.loss) / 2)
    torch.testing.assert_close(out["cca"], fake_cca(audio, LABELS, visual, LABELS, 2.0))
    torch.testing.assert_close(out["total"], 0.7 * out["triplet"] + 0.3 * out["cca"])
    assert int(out["num_triplets_v2a"]) == int(v2a.num_triplets)
    assert {"frac_active_a2v", "num_active_v2a"} <= set(out)
    gq, gr = torch.autograd.grad(out["total"], (audio, visual))
    assert gq.abs().sum() > 0 and gr.abs().sum() > 0


def test_combined_loss_local_queries_against_global_refs():
    audio, visual = embeddings()
    rows = torch.tensor([4, 5, 6])
    out = combined_loss(audio[rows], visual[rows], LABELS[rows], ref_audio_emb=audio,
                        ref_visual_emb=visual, ref_labels=LABELS, self_index=rows,
                        directions=("a2v", "v2a"), exclude_self_pair=True, reduction="sum")
    want = triplet_loss(visual[rows], LABELS[rows], audio, LABELS, exclude_self_pair=True,
                        self_index=rows, reduction="sum")
    torch.testing.assert_close(out["triplet_v2a"], want.loss.detach())


def test_combined_loss_cca_is_optional_and_lazy(monkeypatch):
    audio, visual = embeddings()
    boom = lambda *a, **k: pytest.fail("cca must not run when w_cca == 0")  # noqa: E731
    out = combined_loss(audio, visual, LABELS, cca=boom)
    assert out["cca"].item() == 0 and torch.equal(out["total"], out["triplet"])
    fake = types.ModuleType("tnn.core.cca_loss")
    fake.cluster_cca_loss = lambda x, xl, y, yl=None, *, k, ridge, beta: torch.tensor(-float(k))
    monkeypatch.setitem(sys.modules, "tnn.core.cca_loss", fake)
    out = combined_loss(audio, visual, LABELS, w_cca=1.0,
                        cca_kwargs=dict(k=3, ridge=1e-4, beta=0.2))
    assert out["cca"].item() == -3
    monkeypatch.setitem(sys.modules, "tnn.core.cca_loss", None)  # the module is not there
    with pytest.raises(ConfigError, match="cca_loss"):
        combined_loss(audio, visual, LABELS, w_cca=1.0)
    with pytest.raises(ConfigError, match="directions"):
        combined_loss(audio, visual, LABELS, directions=())


def test_combined_loss_with_the_real_cluster_cca():
    losses_cca = pytest.importorskip("tnn.core.cca_loss")
    audio, visual = embeddings()
    kw = dict(k=2, ridge=1e-3, beta=0.2)
    out = combined_loss(audio, visual, LABELS, w_cca=0.5, cca_kwargs=kw)
    want = losses_cca.cluster_cca_loss(audio, LABELS, visual, LABELS, **kw)
    torch.testing.assert_close(out["cca"], want)
    torch.testing.assert_close(out["total"], out["triplet"] + 0.5 * want)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out["total"], (audio, visual)))


# --- tnn-label's proxy loss ------------------------------------------------------------------

def _proxies(classes=3, dim=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (0.7 * torch.randn(classes, dim, generator=g, dtype=torch.float64)).requires_grad_(True)


@pytest.mark.parametrize("w_proxy, w_triplet", [(1.0, 1.0), (0.3, 2.0), (1.0, 0.0), (0.0, 1.0)])
def test_proxy_loss_matches_the_loop_reference(w_proxy, w_triplet):
    from tests.reference import proxies as ref_proxies
    audio_u, visual_u = (torch.nn.functional.normalize(x.detach(), dim=1).requires_grad_(True)
                         for x in embeddings())  # unit rows, as the network gives
    proxies = _proxies()
    out = proxy_loss(audio_u, visual_u, LABELS, proxies, 8.0, w_proxy=w_proxy,
                     w_triplet=w_triplet, margin=0.2)
    want = ref_proxies.proxy_loss(audio_u, visual_u, LABELS, proxies, 8.0, w_proxy, w_triplet, 0.2)
    got_grads = value_and_grads(out["total"], audio_u, visual_u, proxies)
    assert_close_all(got_grads, value_and_grads(want, audio_u, visual_u, proxies), torch.float64)
    assert got_grads[3].abs().sum() > 0 if w_proxy else True  # the proxies learn from the CE
    ce = ref_proxies.cross_entropy(audio_u, LABELS, proxies, 8.0)
    torch.testing.assert_close(proxy_cross_entropy(audio_u, LABELS, audio_u, LABELS,
                                                   proxies=proxies, scale=8.0), ce)
    if w_proxy:
        torch.testing.assert_close(out["proxy"], out["cca"])
        torch.testing.assert_close(out["proxy"], (ce + ref_proxies.cross_entropy(
            visual_u, LABELS, proxies, 8.0)) / 2)


def test_proxy_loss_local_queries_against_global_refs_take_the_ce_on_the_refs():
    audio, visual = embeddings()
    proxies, rows = _proxies(), torch.tensor([4, 5, 6])
    out = proxy_loss(audio[rows], visual[rows], LABELS[rows], proxies, 4.0, ref_audio_emb=audio,
                     ref_visual_emb=visual, ref_labels=LABELS, self_index=rows)
    whole = proxy_loss(audio, visual, LABELS, proxies, 4.0)
    assert torch.equal(out["proxy"], whole["proxy"])  # a batch-level term, like the CCA one
    logits = proxy_logits(audio, proxies, 4.0)
    torch.testing.assert_close(logits, 4.0 * audio @ torch.nn.functional.normalize(proxies, dim=1).T)
