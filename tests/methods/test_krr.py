"""tnn.methods.krr: the kernel ridge classifier posterior of tnn-label (closed form, checked
against the dual form of kernel ridge regression) and its selection on validation rows."""

import numpy as np
import pytest
import torch

from tnn.data.sources import uci_mfeat
from tnn.errors import ConfigError
from tnn.methods.krr import KRRConfig, KRRProbs, krr_probs, pick_krr, view_features
from tnn.methods.readout import posterior_map, probs_of


def small_pairs(per_class=12):
    pairs = uci_mfeat("fac", "pix")
    rows = np.concatenate([np.flatnonzero(pairs.labels == c)[:per_class] for c in range(10)])
    return pairs.subset(np.sort(rows))


def test_scores_equal_the_dual_kernel_ridge_regression_with_all_rows_as_landmarks():
    """m = n landmarks: s(x) = kc(x, X) (Kc + r n I)^-1 (Y - mean Y) + mean Y, with the kernel
    centred in feature space (Hardoon-style dual), on held-out rows."""
    pairs = small_pairs()
    train, test = pairs.subset(np.arange(0, pairs.n, 2)), pairs.subset(np.arange(1, pairs.n, 2))
    ridge, n = 1e-2, train.n
    feats = view_features(train.audio, KRRConfig(rank=10_000), 1.0)
    mod = feats.solve(train.labels, 10, ridge)
    with torch.no_grad():
        got = mod.scores(torch.from_numpy(test.audio)).double().numpy()
        z_tr = feats.std(torch.from_numpy(train.audio)).double().numpy()
        z_te = feats.std(torch.from_numpy(test.audio)).double().numpy()
    gamma = float(feats.kmap.gamma)
    k = lambda a, b: np.exp(-gamma * ((a[:, None] - b[None]) ** 2).sum(-1))  # noqa: E731
    k_tr, k_te = k(z_tr, z_tr), k(z_te, z_tr)
    kc = k_tr - k_tr.mean(0) - k_tr.mean(1, keepdims=True) + k_tr.mean()
    kc_te = k_te - k_tr.mean(0) - k_te.mean(1, keepdims=True) + k_tr.mean()
    y = np.eye(10)[train.labels]
    want = kc_te @ np.linalg.solve(kc + ridge * n * np.eye(n), y - y.mean(0)) + y.mean(0)
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert (got.argmax(1) == test.labels).mean() > 0.8  # fac: a good classifier


def test_posterior_rows_sum_to_one_and_scale_is_a_temperature():
    pairs = small_pairs()
    a, v = krr_probs(pairs, KRRConfig(rank=50), 1.0, 1e-3, 20.0)
    assert isinstance(a, KRRProbs) and a.scale == v.scale == 20.0
    pa = probs_of(a, pairs.audio)
    assert pa.shape == (pairs.n, 10) and np.allclose(pa.sum(1), 1, atol=1e-5)
    with torch.no_grad():
        s = a.scores(torch.from_numpy(pairs.audio))
    np.testing.assert_allclose(pa, torch.softmax(20.0 * s, 1).numpy(), atol=1e-6)


def test_pick_krr_takes_the_best_validation_setting():
    pairs = small_pairs(20)
    fit, val = pairs.subset(np.arange(0, pairs.n, 2)), pairs.subset(np.arange(1, pairs.n, 2))
    cfg = KRRConfig(bandwidth_scales=(0.5, 1.0), ridges=(1e-3, 1e-1), scales=(5.0, 40.0), rank=60)
    lines = []
    (bw, ridge, t), a, v = pick_krr(fit, val, cfg, lines.append)
    assert "krr val MAP" in lines[0] and "best of 8" in lines[0]
    got = posterior_map(probs_of(a, val.audio), probs_of(v, val.visual), val.labels)
    assert f"{got:.4f}" in lines[0] and a.scale == t
    for other in [(b, r, s) for b in (0.5, 1.0) for r in (1e-3, 1e-1) for s in (5.0, 40.0)]:
        oa, ov = krr_probs(fit, cfg, *other)
        assert posterior_map(probs_of(oa, val.audio), probs_of(ov, val.visual),
                             val.labels) <= got + 1e-9


def test_config_checks():
    for bad in (dict(ridges=()), dict(scales=(0.0,)), dict(bandwidth_scales=(-1.0,)),
                dict(rank=0), dict(rank=True)):
        with pytest.raises(ConfigError, match="tnn_label.krr"):
            KRRConfig(**bad)
