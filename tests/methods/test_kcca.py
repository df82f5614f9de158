"""tnn.methods.kcca: Nystrom (cluster-)KCCA against the exact dual solution and linear CCA."""
import dataclasses
import io

import numpy as np
import pytest
import torch

from tests.reference import cca as ref_cca
from tests.reference import kcca as ref
from tnn.methods import BASELINES, BaselinesConfig
from tnn.methods.kcca import KCCAConfig, fit_kernel_cca, median_distance
from tnn.config import from_dict
from tnn.errors import ConfigError
from tnn.methods.linear import CCAConfig, fit_linear
from tnn.data.pairs import make_pairs


def views(n=48, classes=4, seed=0):
    """Non-linearly related views with class structure; (x (n, 3), y (n, 4), labels)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    z = rng.standard_normal((classes, 2))[labels] + 0.6 * rng.standard_normal((n, 2))
    x = np.c_[z, rng.standard_normal((n, 1))] @ rng.standard_normal((3, 3))
    y = np.c_[np.sin(z), rng.standard_normal((n, 2))] @ rng.standard_normal((4, 4))
    return x, y, labels


def aligned(got, want):
    """got with each column's sign matched to want (CCA directions have a sign freedom)."""
    return got * np.sign((got * want).sum(0))


@pytest.mark.parametrize("beta", [1.0, 0.2])
def test_full_rank_nystrom_equals_exact_kcca(beta):
    x, y, labels = views()
    rng = np.random.default_rng(1)
    xt, yt = rng.standard_normal((10, 3)), rng.standard_normal((10, 4))
    cfg = KCCAConfig(rank=len(x), bandwidth=1.5)
    fit = fit_kernel_cca(x, y, labels, 4, cfg, k=3, ridge=1e-2, beta=beta)
    kernel = ref.rbf(1 / (2 * 1.5 ** 2))
    corrs, pa, pv = ref.kcca(x, y, labels, 3, 1e-2, beta, kernel, kernel, xt, yt)
    np.testing.assert_allclose(fit.corrs, corrs, atol=1e-6)
    ta, tv = fit.transform_audio(xt), fit.transform_visual(yt)
    sign = np.sign((ta * pa).sum(0))  # one sign per component, shared by both views
    np.testing.assert_allclose(ta * sign, pa, atol=1e-6)
    np.testing.assert_allclose(tv * sign, pv, atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 0.2])
def test_linear_kernel_equals_linear_cca(beta):
    """Nystrom features of a linear kernel are an isometry of the inputs, for any m >= rank."""
    x, y, labels = views()
    fit = fit_kernel_cca(x, y, labels, 4, KCCAConfig(kernel="linear", rank=10), k=3,
                         ridge=1e-2, beta=beta)
    xt, yt = np.random.default_rng(1).standard_normal((10, 3)), y[:5]
    corrs, pa, _ = ref.kcca(x, y, labels, 3, 1e-2, beta, ref.linear, ref.linear, xt, yt)
    np.testing.assert_allclose(fit.corrs, corrs, atol=1e-6)
    np.testing.assert_allclose(aligned(fit.transform_audio(xt), pa), pa, atol=1e-6)
    if beta == 1.0:
        np.testing.assert_allclose(fit.corrs, ref_cca.linear_cca(x, y, 3, 1e-2)[0], atol=1e-10)


@pytest.mark.parametrize("method,beta", [("kcca", 1.0), ("c-kcca", 0.2)])
def test_linear_kcca_encoder_retrieves_like_linear_cca(method, beta):
    x, y, labels = views(n=120)
    pairs = make_pairs(x, y, labels)
    cca = CCAConfig(dim=2, ridge=1e-3, beta=0.2)
    cfg = BaselinesConfig(kcca=KCCAConfig(kernel="linear", rank=30, ridge=None))
    enc = BASELINES[method](pairs, cfg, cca, lambda s: None)
    lin = fit_linear(pairs, cca, beta=beta)
    sim = enc.embed_audio(x) @ enc.embed_visual(y).T
    np.testing.assert_allclose(sim, lin.embed_audio(x) @ lin.embed_visual(y).T, atol=2e-4)


def test_encoder_matches_float64_fit_and_survives_state_dict():
    x, y, labels = views(n=80)
    pairs = make_pairs(x, y, labels)
    cca = CCAConfig(dim=3)
    enc = BASELINES["c-kcca"](pairs, BaselinesConfig(kcca=KCCAConfig(rank=50)), cca, lambda s: None)
    ea, ev = enc.embed_audio(x), enc.embed_visual(y)
    assert ea.shape == (80, 3) and ev.shape == (80, 3)
    np.testing.assert_allclose(np.linalg.norm(ea, axis=1), 1.0, atol=1e-5)
    za = enc.audio_in[0](torch.from_numpy(pairs.audio)).numpy()  # the standardised inputs
    fit = fit_kernel_cca(za, enc.visual_in[0](torch.from_numpy(pairs.visual)).numpy(), labels, 4,
                         KCCAConfig(rank=50), 3, KCCAConfig().ridge, 0.2)
    want = fit.transform_audio(za)
    np.testing.assert_allclose(ea, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-4)
    buf = io.BytesIO()
    torch.save(enc, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    np.testing.assert_array_equal(again.embed_audio(x), ea)


def test_chunked_statistics_equal_one_pass():
    x, y, labels = views(n=61)
    one = fit_kernel_cca(x, y, labels, 4, KCCAConfig(rank=40), 3, 1e-3, 0.2)
    chunked = fit_kernel_cca(x, y, labels, 4, KCCAConfig(rank=40, chunk_rows=7), 3, 1e-3, 0.2)
    np.testing.assert_allclose(chunked.corrs, one.corrs, atol=1e-10)
    np.testing.assert_allclose(chunked.transform_visual(y), one.transform_visual(y), atol=1e-8)


def test_landmarks_are_seeded_training_rows_and_bandwidth_is_median_heuristic():
    x, y, labels = views(n=50)
    cfg = KCCAConfig(rank=20, bandwidth_scale=0.5, median_sample=50, seed=3)
    fit = fit_kernel_cca(x, y, labels, 4, cfg, 2, 1e-3, 1.0)
    lm = fit.map_a.landmarks.numpy()
    assert lm.shape == (20, 3) and all((np.abs(x - row).sum(1) == 0).any() for row in lm)
    dist = [np.linalg.norm(x[i] - x[j]) for i in range(50) for j in range(i + 1, 50)]
    sigma = 0.5 * np.median(dist)
    assert abs(float(fit.map_a.gamma) - 1 / (2 * sigma ** 2)) < 1e-9
    assert abs(median_distance(x, 50, np.random.default_rng(0)) - np.median(dist)) < 1e-9
    again = fit_kernel_cca(x, y, labels, 4, cfg, 2, 1e-3, 1.0)
    np.testing.assert_array_equal(again.transform_audio(x), fit.transform_audio(x))
    other = fit_kernel_cca(x, y, labels, 4, dataclasses.replace(cfg, seed=4), 2, 1e-3, 1.0)
    assert not np.array_equal(other.map_a.landmarks.numpy(), lm)


@pytest.mark.parametrize("bad", [{"kernel": "poly"}, {"rank": 0}, {"ridge": -1.0},
                                 {"bandwidth": 0.0}, {"bandwidth_scale": -1.0},
                                 {"median_sample": 1}, {"eig_floor": 1.0}])
def test_config_refuses_bad_values(bad):
    with pytest.raises(ConfigError):
        KCCAConfig(**bad)


def test_baselines_config_loads_from_dict():
    cfg = from_dict(BaselinesConfig, {"kcca": {"rank": 50, "bandwidth": None},
                                      "c_dcca": {"hidden": [8, 8]}})
    assert cfg.kcca.rank == 50 and cfg.c_dcca.hidden == (8, 8) and cfg.dcca.hidden == (100,) * 3
    with pytest.raises(ConfigError):
        from_dict(BaselinesConfig, {"kcca": {"rnak": 5}})
    with pytest.raises(ConfigError):
        BaselinesConfig(kcca={"rank": 5})
    assert set(BASELINES) == {"kcca", "c-kcca", "dcca", "c-dcca"}
