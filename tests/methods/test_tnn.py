"""The two TNN pipelines as encoders, trained in one process (linear CCA: test_linear.py)."""

import dataclasses

import numpy as np
import pytest

from tnn.core.encoder import Encoder, Ensemble
from tnn.errors import ConfigError
from tnn.core.folds import validation_split
from tnn.core.metrics import cross_modal_scores
from tnn.methods.linear import CCAConfig, fit_linear, input_maps
from tnn.methods.tnn import TNNConfig, TrainConfig, fit_tnn, validation_map
from tnn.data.sources import load_source

QUIET = lambda s: None  # noqa: E731


@pytest.fixture(scope="module")
def uci():
    p = load_source("uci-mfeat")
    return p.subset(np.arange(0, 2000, 2))  # 1,000 clips, 100 per class


def small(pipeline="two-stage", **train):
    return TNNConfig(pipeline=pipeline, preset="paper" if pipeline == "two-stage" else "wide_bn",
                     train=TrainConfig(epochs=3, batch_size=128, **train))


def test_e2e_trains_deterministically_with_cca_dim_output(uci):
    cfg = dataclasses.replace(small("e2e", w_cca=0.1), cca=CCAConfig(dim=6))
    enc, hist = fit_tnn(uci, cfg, QUIET)
    assert enc.embed_audio(uci.audio[:4]).shape == (4, 6)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert {"total", "triplet", "cca", "val_map", "samples_per_s"} <= set(hist[0])
    assert hist[0]["cca"] < 0  # minus the sum of correlations
    again, _ = fit_tnn(uci, cfg, QUIET)
    np.testing.assert_array_equal(enc.embed_visual(uci.visual[:50]), again.embed_visual(uci.visual[:50]))


def test_training_improves_validation_map(uci):
    _, hist = fit_tnn(uci, dataclasses.replace(small("e2e"), train=TrainConfig(epochs=6)), QUIET)
    assert max(h["val_map"] for h in hist[1:]) > hist[0]["val_map"]


@pytest.mark.parametrize("epochs", [0, 4])
def test_two_stage_never_ends_below_its_first_stage_on_validation(uci, epochs):
    cfg = dataclasses.replace(small(), train=TrainConfig(epochs=epochs, batch_size=128))
    enc, _ = fit_tnn(uci, cfg, QUIET)
    fit_idx, val_idx = validation_split(uci.labels, cfg.train.val_fraction, cfg.train.seed)
    a_in, v_in = input_maps(uci.subset(fit_idx), cfg.cca, project=True)
    first = validation_map(Encoder(a_in, v_in), uci.subset(val_idx))
    assert validation_map(enc, uci.subset(val_idx)) >= first
    if epochs == 0:  # an untrained network loses to cluster-CCA, so the first stage is kept
        assert enc.net is None


def test_ensemble_cosine_is_the_mean_of_member_cosines(uci):
    enc, _ = fit_tnn(uci, dataclasses.replace(small("e2e"), ensemble=2), QUIET)
    assert isinstance(enc.net, Ensemble)
    a, v = enc.embed_audio(uci.audio[:20]), enc.embed_visual(uci.visual[:20])
    members = [Encoder(enc.audio_in, enc.visual_in, m) for m in enc.net.members]
    mean_sim = np.mean([m.embed_audio(uci.audio[:20]) @ m.embed_visual(uci.visual[:20]).T
                        for m in members], axis=0)
    np.testing.assert_allclose(a @ v.T, mean_sim, atol=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="pipeline must be one of"):
        TNNConfig(pipeline="three-stage")
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        TNNConfig(preset="huge")
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        TrainConfig(batch_size=1)


def test_deep_beats_linear_on_synthetic_nonlinear_classes():
    p = load_source("synthetic:n=3000,seed=1")
    train, test = p.subset(np.arange(2400)), p.subset(np.arange(2400, 3000))
    lin = fit_linear(train, CCAConfig(), beta=1.0)
    deep, _ = fit_tnn(train, dataclasses.replace(small("e2e", distance="cosine", margin=0.2),
                                                 train=TrainConfig(epochs=8, distance="cosine",
                                                                   margin=0.2)), QUIET)
    def score(enc):
        s = cross_modal_scores(enc.embed_audio(test.audio), enc.embed_visual(test.visual),
                               test.labels)
        return (s["a2v_map"] + s["v2a_map"]) / 2
    assert score(deep) > score(lin) + 0.2
