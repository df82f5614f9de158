"""tnn.methods.pairsplit (tnn-label's pairwise re-split): each part against a brute-force
reference (the logistic regression against plain gradient descent, the re-split and the pair
selection against explicit loops, the choice against an exhaustive loop over the grid)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tnn.data.pairs import make_pairs
from tnn.errors import ConfigError
from tnn.methods import pairsplit
from tnn.methods.pairsplit import (PairSplit, SplitChoice, SplitConfig, apply_split,
                                   confused_pairs, fit_binary, mixture_split, pick_split,
                                   refit_split, split_models)
from tnn.methods.readout import posterior_map


def gd_logistic(x, y, strength, steps=20000):
    """Reference: plain gradient descent on |w|^2 / (2 C) + sum logloss over the standardised
    features (intercept free), step 1 / L with L a bound of the Hessian's largest eigenvalue."""
    mu, sd = x.mean(0), x.std(0)
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    reg = np.r_[np.full(x.shape[1], 1.0 / strength), 0.0]
    lr = 1.0 / (0.25 * np.linalg.norm(z, 2) ** 2 + reg.max())
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        w -= lr * (z.T @ (1 / (1 + np.exp(-(z @ w))) - y) + reg * w)
    return w


def resplit_loop(p, x, pairs, models, t):
    """Reference: the re-split row by row, pair by pair, in float64."""
    out = np.array(p, np.float64)
    for row in range(len(out)):
        for (i, j), (mu, w, b) in zip(pairs, models):
            g = sum((float(x[row, d]) - mu[d]) * w[d] for d in range(x.shape[1])) + b
            r = 1 / (1 + math.exp(-t * g))
            mass = out[row, i] + out[row, j]
            out[row, i], out[row, j] = mass * r, mass * (1 - r)
    return out


def confused_loop(probs, labels, max_pairs, min_confusions):
    """Reference: the confusion matrix, symmetrised; pairs i < j by count (ties: smaller pair)."""
    c = probs.shape[1]
    conf = np.zeros((c, c), int)
    for y, row in zip(labels, probs):
        conf[y, int(np.argmax(row))] += 1
    both = conf + conf.T
    ranked = sorted(((-both[i, j], i, j) for i in range(c) for j in range(i + 1, c)
                     if both[i, j] >= min_confusions))
    return [(i, j) for _, i, j in ranked[:max_pairs]]


def softmax_rows(rng, n, c, sharp=3.0):
    e = np.exp(rng.normal(size=(n, c)) * sharp)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("strength", [0.1, 1.0, 10.0])
def test_fit_binary_is_the_minimiser_gradient_descent_finds(strength):
    rng = np.random.default_rng(int(strength * 10))
    x = rng.normal(size=(40, 3)) * [1.0, 5.0, 0.2] + [0.0, 3.0, -1.0]
    y = (x @ [1.0, -0.3, 2.0] + rng.normal(size=40) > 0).astype(np.float64)
    mu, w_raw, b = fit_binary(x, y, strength)
    want = gd_logistic(x, y, strength)
    sd = x.std(0)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(w_raw * sd, want[:-1], atol=1e-6)
    assert b == pytest.approx(want[-1], abs=1e-6)
    # the raw-feature form is the standardised one: g(x) = z . w + b
    np.testing.assert_allclose((x - mu) @ w_raw + b, ((x - mu) / sd) @ want[:-1] + want[-1],
                               atol=1e-5)


def test_fit_binary_leaves_constant_features_out_and_float32_input_alike():
    rng = np.random.default_rng(1)
    x = np.c_[rng.normal(size=(30, 2)), np.full(30, 7.0)]
    y = (x[:, 0] > 0).astype(np.float64)
    mu, w, b = fit_binary(x.astype(np.float32), y, 1.0)
    assert w[2] == 0 and np.all(np.isfinite(w))
    mu2, w2, b2 = fit_binary(x[:, :2], y, 1.0)
    np.testing.assert_allclose(w[:2], w2, atol=1e-6)
    assert b == pytest.approx(b2, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_resplit_is_the_loop_and_keeps_row_mass_and_other_classes(dtype):
    rng = np.random.default_rng(2)
    p, x = softmax_rows(rng, 25, 6), rng.normal(size=(25, 4)).astype(np.float32)
    pairs = [(1, 4), (0, 2), (2, 5)]  # (0, 2) and (2, 5) share class 2: order matters
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32).astype(np.float64)  # noqa: E731
    models = [(f32(4), f32(4), float(f32(1)[0])) for _ in pairs]  # the buffers hold float32
    mod = PairSplit(pairs, models, 6, 1.5).to(dtype)
    with torch.no_grad():
        got = mod(torch.from_numpy(p).to(dtype), torch.from_numpy(x).to(dtype)).numpy()
    want = resplit_loop(p, x, pairs, models, 1.5)
    np.testing.assert_allclose(got, want, atol=1e-6 if dtype == torch.float32 else 1e-12)
    np.testing.assert_allclose(got.sum(1), p.sum(1), atol=1e-6)
    assert np.array_equal(got[:, 3], p[:, 3].astype(got.dtype))  # in no pair: untouched
    assert not np.allclose(got[:, [1, 4]], p[:, [1, 4]], atol=1e-3)


def test_t_zero_is_the_identity_and_an_off_view_gets_no_module():
    rng = np.random.default_rng(3)
    p, x = softmax_rows(rng, 10, 4), rng.normal(size=(10, 3)).astype(np.float32)
    mod = PairSplit([(0, 1)], [(np.zeros(3), np.ones(3), 0.5)], 4, 1.0)
    assert apply_split(mod, 0.0, p, x) is p and apply_split(None, 2.0, p, x) is p
    assert not np.allclose(apply_split(mod, 2.0, p, x), p)
    rows = np.r_[rng.normal(size=(10, 3)), rng.normal(size=(10, 3)) + 1].astype(np.float32)
    labels = np.repeat([0, 1], 10)
    choice = SplitChoice(([(0, 1)], [(0, 1)]), 1.0, (0.0, 2.0))
    sa, sv = refit_split(choice, rows, rows, labels, 4)
    assert sa is None and isinstance(sv, PairSplit) and sv.scale == 2.0
    assert refit_split(None, rows, rows, labels, 4) == (None, None)


@pytest.mark.parametrize("max_pairs, min_confusions", [(3, 3), (1, 1), (10, 2), (2, 5)])
def test_confused_pairs_counts_both_directions_as_a_loop_does(max_pairs, min_confusions):
    rng = np.random.default_rng(max_pairs * 10 + min_confusions)
    labels = rng.integers(0, 5, size=120)
    probs = softmax_rows(rng, 120, 5, sharp=1.0)
    probs[np.arange(120), labels] += rng.uniform(0, 0.9, size=120)  # mostly right
    cfg = SplitConfig(max_pairs=max_pairs, min_confusions=min_confusions)
    got = confused_pairs(probs, labels, cfg)
    assert got == confused_loop(probs, labels, max_pairs, min_confusions)
    assert got and all(i < j for i, j in got)
    # 2 rows of class 0 taken for 1 and 2 of class 1 for 0: one pair of 4 confusions
    two = np.eye(3, dtype=np.float32)[[1, 1, 0, 0, 2]]
    assert confused_pairs(two, np.array([0, 0, 1, 1, 2]), SplitConfig(min_confusions=4)) == [(0, 1)]


def blind_pairs(n_per_class=40, seed=0):
    """3 classes; the audio posterior cannot tell 0 from 1 (their mass split evenly), the raw
    audio rows can (a linear signal); the visual posterior is right on every class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    audio = rng.normal(size=(len(labels), 3)).astype(np.float32)
    audio[:, 0] += np.where(labels == 0, 0.8, np.where(labels == 1, -0.8, 0.0))
    pa = np.where(labels[:, None] == 2, np.eye(3)[2] * 0.9 + 0.05,
                  np.array([0.45, 0.45, 0.1])).astype(np.float32)
    pv = (np.eye(3)[labels] * 0.7 + 0.1).astype(np.float32)
    return make_pairs(audio, audio.copy(), labels), pa, pv


def test_pick_split_is_the_first_argmax_over_the_grid_above_the_base():
    fit, _, _ = blind_pairs(seed=0)
    val, pa, pv = blind_pairs(seed=1)
    cfg = SplitConfig(min_confusions=3)
    base = posterior_map(pa, pv, val.labels)
    lines = []
    choice, score = pick_split((pa, pv), fit, val, base, cfg, lines.append)
    pairs = ([(0, 1)], [])
    best, want = None, base  # the exhaustive loop, with the reference re-split
    for c in cfg.strengths:
        models = [split_models(fit.audio, fit.labels, [(0, 1)], c)[0]]
        for ta in (0.0, *cfg.temps):
            for tv in (0.0, *cfg.temps):
                ref = resplit_loop(pa, val.audio, [(0, 1)], models, ta).astype(np.float32)
                m = posterior_map(ref, pv, val.labels)
                if m > want + 1e-9:
                    best, want = (c, ta, tv), m
    assert choice is not None and (choice.strength, *choice.temps) == best
    assert choice.pairs == pairs and choice.temps[1] == 0.0  # nothing to refine on visual
    assert score == pytest.approx(want, abs=1e-6) and score > base + 0.01
    assert "pair split" in lines[0] and f"{score:.4f}" in lines[0]


def test_no_gain_or_no_pair_or_max_pairs_zero_leave_the_mixture_alone(monkeypatch):
    fit, _, _ = blind_pairs(seed=0)
    val, pa, pv = blind_pairs(seed=1)
    perfect = (np.eye(3)[val.labels] * 0.97 + 0.01).astype(np.float32)
    assert pick_split((perfect, perfect), fit, val, 0.5, SplitConfig(), print) == (None, 0.5)
    # a base no refinement can beat: switched off, the base score kept
    choice, score = pick_split((pa, pv), fit, val, 1.0, SplitConfig(), lambda s: None)
    assert choice is None and score == 1.0
    monkeypatch.setattr(pairsplit, "pick_split", lambda *a: pytest.fail("called"))
    assert mixture_split([(pa, pv)], (1.0,), fit, val, 0.7, SplitConfig(max_pairs=0),
                         print) == (None, 0.7)


def test_mixture_split_refines_the_weighted_sum_of_the_parts(monkeypatch):
    rng = np.random.default_rng(5)
    parts = [(softmax_rows(rng, 8, 3), softmax_rows(rng, 8, 3)) for _ in range(3)]
    seen = []
    monkeypatch.setattr(pairsplit, "pick_split", lambda mixed, *a: seen.append(mixed) or (None, 0))
    mixture_split(parts, (0.25, 0.0, 0.75), None, None, 0.0, SplitConfig(), print)
    for s in (0, 1):
        np.testing.assert_allclose(seen[0][s], 0.25 * parts[0][s] + 0.75 * parts[2][s], atol=1e-7)


def test_config_checks():
    for bad in (dict(max_pairs=-1), dict(min_confusions=0), dict(temps=()), dict(temps=(0.0,)),
                dict(strengths=(-1.0,))):
        with pytest.raises(ConfigError, match="split"):
            SplitConfig(**bad)
    assert SplitConfig() == SplitConfig(3, 3, (0.5, 1.0, 2.0), (0.1, 1.0))
