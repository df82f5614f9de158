"""tnn.methods.krr: the kernel ridge classifier posterior of tnn-label (closed form, checked
against the dual form of kernel ridge regression) and its selection on validation rows."""

import numpy as np
import pytest
import torch

from tnn.data.sources import uci_mfeat
from tnn.errors import ConfigError
from tnn.methods.krr import (KRRConfig, KRRProbs, KRRSetting, global_scaler, krr_probs, pick_krr,
                             view_features)
from tnn.methods.readout import posterior_map, probs_of


def small_pairs(per_class=12):
    pairs = uci_mfeat("fac", "pix")
    rows = np.concatenate([np.flatnonzero(pairs.labels == c)[:per_class] for c in range(10)])
    return pairs.subset(np.sort(rows))


@pytest.mark.parametrize("scaling", ["feature", "global"])
def test_scores_equal_the_dual_kernel_ridge_regression_with_all_rows_as_landmarks(scaling):
    """m = n landmarks: s(x) = kc(x, X) (Kc + r n I)^-1 (Y - mean Y) + mean Y, with the kernel
    centred in feature space (Hardoon-style dual), on held-out rows."""
    pairs = small_pairs()
    train, test = pairs.subset(np.arange(0, pairs.n, 2)), pairs.subset(np.arange(1, pairs.n, 2))
    ridge, n = 1e-2, train.n
    feats = view_features(train.audio, KRRConfig(rank=10_000), 1.0, scaling)
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
    a, v = krr_probs(pairs, KRRConfig(rank=50), KRRSetting(1.0, 1e-3, 20.0))
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
    assert cfg.scalings == ("feature", "global")
    lines = []
    setting, a, v = pick_krr(fit, val, cfg, lines.append)
    assert isinstance(setting, KRRSetting) and setting.scaling in cfg.scalings
    assert "krr val MAP" in lines[0] and "best of 16" in lines[0]
    assert f"{setting.scaling} scaling" in lines[0]
    got = posterior_map(probs_of(a, val.audio), probs_of(v, val.visual), val.labels)
    assert f"{got:.4f}" in lines[0] and a.scale == setting.scale
    maps = {}
    for other in [KRRSetting(b, r, t, sc) for sc in cfg.scalings for b in (0.5, 1.0)
                  for r in (1e-3, 1e-1) for t in (5.0, 40.0)]:
        oa, ov = krr_probs(fit, cfg, other)
        maps[other] = posterior_map(probs_of(oa, val.audio), probs_of(ov, val.visual), val.labels)
        assert maps[other] <= got + 1e-9
    assert abs(maps[setting] - got) < 1e-9
    assert len({round(m, 9) for m in maps.values()}) > 2  # the grid is not flat
    one, _, _ = pick_krr(fit, val, KRRConfig(bandwidth_scales=(0.5, 1.0), ridges=(1e-3, 1e-1),
                                             scales=(5.0, 40.0), rank=60, scalings=("global",)),
                         lines.append)
    assert one.scaling == "global" and "best of 8" in lines[-1]


def test_global_scaler_centres_and_divides_by_one_rms():
    x = np.random.default_rng(0).normal(3.0, 1.0, size=(50, 4)) * np.array([1.0, 2.0, 5.0, 0.1])
    with torch.no_grad():
        z = global_scaler(x)(torch.from_numpy(x.astype(np.float32))).double().numpy()
    c = x - x.mean(0)
    np.testing.assert_allclose(z, c / np.sqrt((c ** 2).mean()), rtol=1e-5, atol=1e-5)
    assert np.isclose((z ** 2).mean(), 1.0, rtol=1e-4)
    with torch.no_grad():  # a constant view is only centred
        flat = global_scaler(np.ones((5, 3)))(torch.ones(2, 3)).numpy()
    assert np.array_equal(flat, np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("scaling", ["feature", "global"])
def test_which_rescalings_of_a_view_leave_the_scores_unchanged(scaling):
    """Both scalings ignore one offset and one factor for the whole view; only "feature"
    ignores a factor on one feature, which "global" keeps as part of the view's geometry."""
    pairs = small_pairs()
    x, y = pairs.audio.astype(np.float64), pairs.labels

    def scores(rows):
        mod = view_features(rows.astype(np.float32), KRRConfig(rank=60), 1.0, scaling) \
            .solve(y, 10, 1e-3)
        with torch.no_grad():
            return mod.scores(torch.from_numpy(rows.astype(np.float32))).double().numpy()

    base = scores(x)
    np.testing.assert_allclose(scores(7.0 * x + 2.0), base, atol=2e-3)
    one = x.copy()
    one[:, 0] *= 100.0
    moved = np.abs(scores(one) - base).max()
    assert (moved < 2e-3) if scaling == "feature" else (moved > 0.05)


def test_config_checks():
    for bad in (dict(ridges=()), dict(scales=(0.0,)), dict(bandwidth_scales=(-1.0,)),
                dict(rank=0), dict(rank=True), dict(scalings=()),
                dict(scalings=("feature", "feature")), dict(scalings=("per-view",))):
        with pytest.raises(ConfigError, match="tnn_label.krr"):
            KRRConfig(**bad)
