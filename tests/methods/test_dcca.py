"""tnn.methods.dcca: the DCCA / C-DCCA objectives, training loop and final projection."""
import dataclasses

import numpy as np
import pytest
import torch

from tnn.methods import BASELINES, BaselinesConfig
from tnn.methods.dcca import DCCAConfig, correlation_loss, train_net, validation_map
from tnn.core.cca import CCAStats, fit_cca
from tnn.errors import ConfigError
from tnn.core.cca_loss import dcca_loss
from tnn.core.model import TwoBranchNet
from tnn.methods.linear import CCAConfig
from tnn.data.pairs import make_pairs

SMALL = DCCAConfig(hidden=(16,), epochs=4, batch_size=40, lr=1e-2, optimizer="adam")


def pairs(n=160, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    z = rng.standard_normal((classes, 3))[labels] + 0.5 * rng.standard_normal((n, 3))
    audio = np.tanh(z @ rng.standard_normal((3, 6))) + 0.1 * rng.standard_normal((n, 6))
    visual = (z ** 2) @ rng.standard_normal((3, 8)) + 0.1 * rng.standard_normal((n, 8))
    return make_pairs(audio, visual, labels)


def test_dcca_loss_of_identical_views_is_minus_k():
    z = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert abs(dcca_loss(z, z, k=4, ridge=0.0).item() + 4) < 1e-8
    labels = torch.arange(50) % 3
    loss = correlation_loss(z, z @ torch.randn(4, 4, dtype=torch.float64), labels, k=3,
                            ridge=0.0, beta=1.0, num_classes=3)
    assert abs(loss.item() + 3) < 1e-8  # invertible maps of one view are perfectly correlated


def test_c_dcca_objective_at_beta_one_is_dcca_objective():
    g = torch.Generator().manual_seed(1)
    za, zv = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g)
    labels = torch.randint(0, 4, (64,), generator=g)
    ours = correlation_loss(za, zv, labels, k=3, ridge=1e-3, beta=1.0, num_classes=4)
    assert abs(ours.item() - dcca_loss(za, zv, k=3, ridge=1e-3).item()) < 1e-6
    blended = correlation_loss(za, zv, labels, k=3, ridge=1e-3, beta=0.2, num_classes=4)
    assert abs(blended.item() - ours.item()) > 1e-3  # the cluster term does change it


def test_c_dcca_with_beta_one_trains_the_dcca_model():
    data, cca = pairs(), CCAConfig(dim=3, beta=1.0)
    cfg = BaselinesConfig(dcca=SMALL, c_dcca=SMALL)
    a = BASELINES["dcca"](data, cfg, cca, lambda s: None)
    b = BASELINES["c-dcca"](data, cfg, cca, lambda s: None)
    np.testing.assert_array_equal(a.embed_audio(data.audio), b.embed_audio(data.audio))


@pytest.mark.parametrize("method", ["dcca", "c-dcca"])
def test_encoder_is_the_cca_of_the_network_outputs(method):
    data, cca = pairs(), CCAConfig(dim=3, beta=0.2)
    enc = BASELINES[method](data, BaselinesConfig(dcca=SMALL, c_dcca=SMALL), cca, lambda s: None)
    ea, ev = enc.embed_audio(data.audio), enc.embed_visual(data.visual)
    assert ea.shape == ev.shape == (160, 3)
    np.testing.assert_allclose(np.linalg.norm(ea, axis=1), 1.0, atol=1e-5)
    enc.eval()
    with torch.no_grad():
        xa = enc.audio_in(torch.from_numpy(data.audio))
        xv = enc.visual_in(torch.from_numpy(data.visual))
        oa, ov = (z.double().numpy() for z in enc.net.net(xa, xv).values())  # network outputs
        pa = enc.net.encode_audio(xa).double().numpy()  # after the fitted projection
        pv = enc.net.encode_visual(xv).double().numpy()
    beta = 1.0 if method == "dcca" else 0.2
    proj = fit_cca(CCAStats.from_arrays(oa, ov, data.labels, 4), 3, ridge=cca.ridge, beta=beta)
    np.testing.assert_allclose(pa, proj.transform_audio(oa), atol=1e-4)
    np.testing.assert_allclose(pv, proj.transform_visual(ov), atol=1e-4)
    if beta == 1.0:  # A' S12 B = diag(corrs): projected views are pairwise uncorrelated
        cross = (pa - pa.mean(0)).T @ (pv - pv.mean(0)) / (len(pa) - 1)
        np.testing.assert_allclose(cross, np.diag(proj.corrs), atol=1e-4)


def test_training_lowers_the_loss_and_keeps_the_best_validation_epoch():
    data, cca = pairs(n=240), CCAConfig(dim=3)
    cfg = dataclasses.replace(SMALL, epochs=12, patience=12)
    torch.manual_seed(0)
    x = [torch.from_numpy((m - m.mean(0)) / m.std(0)) for m in (data.audio, data.visual)]
    net = TwoBranchNet(6, 8, cfg.branch(3), shared=False)
    fit_idx, val_idx = np.arange(0, 200), np.arange(200, 240)
    hist = train_net(net, *x, torch.from_numpy(data.labels), fit_idx, val_idx, 4, cfg, cca,
                     0.2, lambda s: None)
    assert len(hist) == 12 and hist[-1]["loss"] < hist[0]["loss"] - 0.3
    score = validation_map(net, *x, data.labels, fit_idx, val_idx, 4, cca, 0.2)
    assert abs(score - max(h["val_map"] for h in hist)) < 1e-9


def test_fit_is_deterministic_and_defaults_follow_the_paper_architectures():
    data, cca = pairs(), CCAConfig(dim=3)
    cfg = BaselinesConfig(dcca=SMALL)
    one = BASELINES["dcca"](data, cfg, cca, lambda s: None).embed_visual(data.visual)
    two = BASELINES["dcca"](data, cfg, cca, lambda s: None).embed_visual(data.visual)
    np.testing.assert_array_equal(one, two)
    d, c = BaselinesConfig().dcca.branch(10), BaselinesConfig().c_dcca.branch(10)
    assert (d.hidden, d.activation, d.dropout, d.input_norm, d.head_activation) == \
        ((100, 100, 100), "sigmoid", 0.1, "batchnorm", False)
    assert (c.hidden, c.activation, c.input_norm, c.head_activation, c.out_dim) == \
        ((20, 20), "sigmoid", "batchnorm", True, 10)


@pytest.mark.parametrize("bad", [{"optimizer": "sgd"}, {"hidden": (0,)}, {"activation": "x"},
                                 {"dropout": 1.0}, {"batch_size": 2}, {"out_dim": 0},
                                 {"ridge": -1.0}, {"lr": 0.0}])
def test_config_refuses_bad_values(bad):
    with pytest.raises(ConfigError):
        DCCAConfig(**bad)
    with pytest.raises(ConfigError):
        DCCAConfig(out_dim=2).branch(3)
