"""tnn.methods.label (tnn-label) and tnn.methods.readout: the posterior readout, selection on
validation rows only, the c-kcca fallback, the epoch loop, determinism and the registry."""

import json
import re

import numpy as np
import pytest
import torch

from jobs import crossval
from tnn import methods as registry
from tnn.core.folds import split, validation_split
from tnn.data.sources import uci_mfeat
from tnn.errors import ConfigError
from tnn.methods import label, pairsplit, protocol, readout
from tnn.methods.kcca import KCCAConfig, fit_kcca
from tnn.methods.krr import KRRConfig, KRRProbs
from tnn.methods.label import LabelConfig, ProxyNet, fit_label, posterior_rows, train_proxy_net
from tnn.methods.pairsplit import PairSplit, SplitConfig
from tnn.methods.readout import MixPad, map_of, pad_posterior, weight_grid


def small_pairs(per_class=30):
    """fou -> pix, `per_class` rows of each of the 10 digits."""
    pairs = uci_mfeat("fou", "pix")
    rows = np.concatenate([np.flatnonzero(pairs.labels == c)[:per_class] for c in range(10)])
    return pairs.subset(np.sort(rows))


def small_cfg(**kw):
    return LabelConfig(**{"hidden": (64,), "epochs": 3, "kcca": KCCAConfig(rank=80),
                          "krr": KRRConfig(rank=80, ridges=(1e-3,)), **kw})


def test_pad_posterior_cosine_is_the_probability_of_the_same_class():
    rng = np.random.default_rng(0)
    pa = torch.softmax(torch.as_tensor(rng.normal(size=(7, 5)) * 3), dim=1)
    pv = torch.softmax(torch.as_tensor(rng.normal(size=(6, 5)) * 3), dim=1)
    ea, ev = pad_posterior(pa, 0), pad_posterior(pv, 1)
    assert torch.allclose(ea.norm(dim=1), torch.ones(7, dtype=ea.dtype)) \
        and torch.allclose(ev.norm(dim=1), torch.ones(6, dtype=ev.dtype))
    assert torch.allclose(ea @ ev.T, pa @ pv.T, atol=1e-12)
    assert not torch.allclose(ea @ pad_posterior(pv, 0).T, pa @ pv.T)  # the sides must differ


def test_fitted_encoder_embeds_the_mixed_posterior():
    pairs = small_pairs()
    enc = fit_label(pairs, small_cfg(fallback=False), log=lambda s: None)
    assert isinstance(enc.audio_in, MixPad) and isinstance(enc.visual_in, MixPad)
    ea, ev = enc.embed_audio(pairs.audio[:40]), enc.embed_visual(pairs.visual[:50])
    assert ea.shape == (40, 12) and np.allclose(np.linalg.norm(ea, axis=1), 1, atol=1e-6)

    def mixed(mod, x):
        with torch.no_grad():
            return sum(w * m(torch.from_numpy(x)) for m, w in zip(mod.probs, mod.weights)).numpy()

    pa, pv = mixed(enc.audio_in, pairs.audio[:40]), mixed(enc.visual_in, pairs.visual[:50])
    assert np.allclose(pa.sum(1), 1, atol=1e-5) and (pa >= 0).all()
    assert np.allclose(ea @ ev.T, pa @ pv.T, atol=1e-5)
    assert sum(enc.audio_in.weights) == pytest.approx(1.0)


def row_keys(x):
    return {r.tobytes() for r in np.ascontiguousarray(x, np.float32)}


def test_choices_see_only_the_validation_split_of_the_training_fold(monkeypatch):
    """Through the crossval protocol: the network, the kernel part and every choice (scales,
    mixture weight, pair re-split, fallback) see no test-fold row; choices see exactly the
    validation rows; the re-split's regressions the fit rows, then the training part."""
    pairs = small_pairs()
    assert len(row_keys(pairs.audio)) == pairs.n  # rows are identifiable by their features
    seen = {"deep": [], "kernel": [], "scored": []}
    spy = lambda key, fn, pick: (lambda *a, **k: seen[key].append(pick(a)) or fn(*a, **k))  # noqa: E731
    monkeypatch.setattr(label, "deep_probs", spy("deep", label.deep_probs, lambda a: (a[0], a[1])))
    monkeypatch.setattr(label, "kernel_probs", spy("kernel", label.kernel_probs,
                                                          lambda a: (len(seen["deep"]) - 1, a[0])))
    monkeypatch.setattr(label, "probs_of", spy("scored", label.probs_of, lambda a: a[1]))
    monkeypatch.setattr(readout, "probs_of", spy("scored", readout.probs_of, lambda a: a[1]))
    monkeypatch.setattr(label, "path_embed", spy("scored", label.path_embed, lambda a: a[1]))
    monkeypatch.setattr(label, "pick_krr", spy("krr", label.pick_krr, lambda a: (a[0], a[1])))
    monkeypatch.setattr(label, "krr_probs", spy("krr_refit", label.krr_probs, lambda a: a[0]))
    fold = lambda: len(seen["deep"]) - 1  # noqa: E731
    monkeypatch.setattr(label, "refit_split", spy("split_refit", label.refit_split,
                                                  lambda a: fold()))
    phase = lambda: "refit" if seen["split_refit"][-1:] == [fold()] else "choice"  # noqa: E731
    monkeypatch.setattr(pairsplit, "split_models", spy("split_fit", pairsplit.split_models,
                                                       lambda a: (fold(), phase(), row_keys(a[0]))))
    monkeypatch.setattr(pairsplit, "apply_split", spy("split_val", pairsplit.apply_split,
                                                      lambda a: (fold(), a[3])))
    for key in ("krr", "krr_refit", "split_fit", "split_val", "split_refit"):
        seen[key] = []
    cfg = protocol.CrossvalConfig(methods=("tnn-label",), folds=3, settings=registry.MethodsConfig(
        tnn_label=small_cfg(split=SplitConfig(min_confusions=1))))  # sure to find pairs
    folds = protocol.fold_ids(pairs, 3, 0)
    protocol.evaluate("tnn-label", pairs, folds, cfg, log=lambda *a, **k: None)
    assert len(seen["deep"]) == 3 and 3 <= len(seen["kernel"]) <= 6  # a refit per fold or not
    all_val = set()
    for f, (fit, val) in enumerate(seen["deep"]):
        train_idx, test_idx = split(folds, f)
        train, test = pairs.subset(train_idx), row_keys(pairs.audio[test_idx])
        fit_idx, val_idx = validation_split(train.labels, 0.15, 0)
        assert row_keys(fit.audio) == row_keys(train.audio[fit_idx])  # network and kernel part
        assert row_keys(val.audio) == row_keys(train.audio[val_idx])  # early stopping, choices
        assert not (row_keys(fit.audio) | row_keys(val.audio)) & test
        all_val |= row_keys(val.audio) | row_keys(val.visual)
    for f in range(3):  # fitted on the fold's fit part, then maybe refitted on its training part
        calls = [row_keys(k.audio) for g, k in seen["kernel"] if g == f]
        assert calls[0] == row_keys(seen["deep"][f][0].audio)
        assert calls[1:] in ([], [row_keys(pairs.audio[split(folds, f)[0]])])
    assert seen["scored"] and all(row_keys(x) <= all_val for x in seen["scored"])
    assert [(row_keys(f.audio), row_keys(v.audio)) for f, v in seen["krr"]] == \
        [(row_keys(f.audio), row_keys(v.audio)) for f, v in seen["deep"]]  # krr: fit / val only
    assert all(row_keys(t.audio) in [row_keys(pairs.audio[split(folds, f)[0]]) for f in range(3)]
               for t in seen["krr_refit"])  # refitted on a training part, never a test fold
    assert {f for f, _, _ in seen["split_fit"]} == {0, 1, 2} and seen["split_val"]  # every fold
    assert {p for _, p, _ in seen["split_fit"]} == {"choice", "refit"}  # chosen somewhere
    for f, when, keys in seen["split_fit"]:  # its regressions: fit rows, then the training part
        fit, train = seen["deep"][f][0], pairs.subset(split(folds, f)[0])
        rows = (fit.audio, fit.visual) if when == "choice" else (train.audio, train.visual)
        assert keys in [row_keys(x) for x in rows]
    for f, x in seen["split_val"]:  # its choice: the fold's validation rows
        val = seen["deep"][f][1]
        assert row_keys(x) in (row_keys(val.audio), row_keys(val.visual))
    for _, val in seen["deep"]:  # each fold's choices scored both views of its validation rows
        assert any(row_keys(x) == row_keys(val.audio) for x in seen["scored"])
        assert any(row_keys(x) == row_keys(val.visual) for x in seen["scored"])


def test_fallback_to_plain_cluster_kcca_when_it_wins_on_validation():
    pairs = small_pairs()
    # An untrained network's posterior alone is near chance on validation:
    cfg = small_cfg(epochs=0, components=("deep",))
    enc = fit_label(pairs, cfg, log=lambda s: None)
    ck = fit_kcca(pairs, cfg.kcca, cfg.cca, cfg.cca.beta, log=lambda s: None)
    assert not isinstance(enc.audio_in, MixPad)
    assert np.array_equal(enc.embed_audio(pairs.audio), ck.embed_audio(pairs.audio))
    assert np.array_equal(enc.embed_visual(pairs.visual), ck.embed_visual(pairs.visual))
    no_fallback = fit_label(pairs, small_cfg(epochs=0, components=("deep",), fallback=False),
                            log=lambda s: None)
    assert isinstance(no_fallback.audio_in, MixPad)


def test_fallback_follows_the_validation_scores():
    """Whatever the data, the encoder is c-kcca exactly when plain c-kcca scored above the
    chosen mixture on validation (parsed from the log)."""
    outcomes = set()
    for per_class, seed in ((30, 0), (12, 1)):
        lines = []
        enc = fit_label(small_pairs(per_class), small_cfg(seed=seed, components=("deep", "kernel")),
                        log=lines.append)
        mix = max(float(v) for v in re.findall(r":(\d\.\d+)", next(s for s in lines if "mix val" in s)))
        plain = float(next(s for s in lines if "plain cluster-KCCA" in s).split()[-1])
        assert isinstance(enc.audio_in, MixPad) == (plain <= mix)
        outcomes.add(plain <= mix)
    assert outcomes == {True, False}  # both ways taken (the data sets were picked for that)


def test_training_goes_through_fit_epochs_and_restores_the_best_epoch(monkeypatch):
    pairs = small_pairs()
    states = []
    real = label.fit_epochs
    monkeypatch.setattr(label, "fit_epochs", lambda *a, **k: states.append(real(*a, **k)) or states[-1])
    x = lambda v: torch.from_numpy((v - v.mean(0)) / (v.std(0) + 1e-6)).float()  # noqa: E731
    fit, val = pairs.subset(np.arange(0, pairs.n, 2)), pairs.subset(np.arange(1, pairs.n, 2))
    net = train_proxy_net((x(fit.audio), x(fit.visual), torch.from_numpy(fit.labels)),
                          (x(val.audio), x(val.visual), val.labels), 10,
                          small_cfg(epochs=6, patience=2), log=lambda s: None)
    (state,) = states
    assert 1 <= state["epoch"] <= 6 and len(state["history"]) == state["epoch"]
    assert not net.training
    got = map_of(*posterior_rows(net, x(val.audio), x(val.visual), 16.0), val.labels)
    assert got == pytest.approx(state["best"], abs=1e-9)


def test_fit_is_deterministic_for_a_seed():
    pairs = small_pairs(20)
    a = fit_label(pairs, small_cfg(fallback=False), log=lambda s: None)
    b = fit_label(pairs, small_cfg(fallback=False), log=lambda s: None)
    c = fit_label(pairs, small_cfg(fallback=False, seed=1), log=lambda s: None)
    assert np.array_equal(a.embed_audio(pairs.audio), b.embed_audio(pairs.audio))
    assert np.array_equal(a.embed_visual(pairs.visual), b.embed_visual(pairs.visual))
    assert not np.array_equal(a.embed_audio(pairs.audio), c.embed_audio(pairs.audio))


def test_config_checks_and_dimension():
    for bad in (dict(lr_schedule="step"), dict(mix_grid=(0.5, 1.5)), dict(temps=()),
                dict(kernel_scales=(0.0,)), dict(val_fraction=1.0), dict(batch_size=1),
                dict(components=()), dict(components=("deep", "deep")), dict(components=("svm",)),
                dict(mix_grid=(0.3,)), dict(components=("deep", "kernel"), mix_grid=(1.5,))):
        with pytest.raises(ConfigError):
            LabelConfig(**bad)
    cfg = registry.MethodsConfig().with_dim(5).tnn_label
    assert cfg.cca.dim == 5 and ProxyNet(3, 4, 10, cfg).proxies.shape == (10, 5)
    assert ProxyNet(3, 4, 10, LabelConfig()).proxies.shape == (10, 9)


def test_registered_and_crossval_smoke_prints_its_row(tmp_path, capsys):
    assert "tnn-label" in registry.METHODS
    assert protocol.DEFAULT_METHODS == tuple(registry.METHODS)
    assert protocol.CrossvalConfig().methods == tuple(registry.METHODS)
    out = tmp_path / "cv.json"
    assert crossval.main(["--smoke", "--methods", "tnn-label", "--json", str(out),
                          "--set", "mlflow.enabled=false"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^tnn-label\s+0\.\d{4} \+- ", text, re.M)
    res = json.loads(out.read_text())
    assert list(res["methods"]) == ["tnn-label"] and res["folds"] == 2
    params = res["methods"]["tnn-label"]["params"]
    assert params["epochs"] == 2 and params["kcca"]["rank"] == 200 and params["fallback"] is True
    assert res["methods"]["tnn-label"]["a2v_map"] > 0.5
    assert crossval.main(["--methods", "tnn-label", "--set", "settings.tnn_label.mix_grid=[2]"]) == 2
    assert "mix_grid" in capsys.readouterr().err


def test_weight_grid_is_the_simplex_of_the_levels():
    assert weight_grid((0.0, 0.25, 0.5, 0.75, 1.0), 2) == [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5),
                                                          (0.75, 0.25), (1.0, 0.0)]
    assert weight_grid((1.0,), 2) == [(1.0, 0.0)] and weight_grid((0.3,), 1) == [(1.0,)]
    three = weight_grid((0.0, 0.25, 0.5, 0.75, 1.0), 3)
    assert len(three) == 15 and all(sum(w) == pytest.approx(1) for w in three)
    assert weight_grid((1.0,), 3) == [(0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)]
    assert weight_grid((0.3,), 3) == []


def test_mixture_keeps_the_chosen_components_in_order():
    """The encoder holds exactly the components with weight > 0, in `components` order, each
    the module type of its component; the krr part is refitted on the whole training data."""
    pairs = small_pairs()
    lines = []
    enc = fit_label(pairs, small_cfg(fallback=False, mix_grid=(0.0, 0.5, 1.0)), log=lines.append)
    chosen = next(s for s in lines if "mix val MAP (deep/kernel/krr)" in s)
    scores = {k: float(v) for k, v in re.findall(r"(\S+):(\d\.\d+)", chosen.split(")", 1)[1])}
    best = max(scores, key=scores.get)
    weights = [float(x) for x in best.split("/")]
    kinds = [k for k, w in zip((readout.DeepProbs, readout.KernelProbs, KRRProbs), weights)
             if w > 0]
    assert enc.audio_in.weights == [w for w in weights if w > 0]
    assert [type(m) for m in enc.audio_in.probs] == kinds
    krr_only = fit_label(pairs, small_cfg(fallback=False, components=("krr",)), log=lambda s: None)
    (ra,) = krr_only.audio_in.probs
    assert isinstance(ra, KRRProbs)  # refitted: standardised with all the training rows' mean
    assert np.allclose(ra.path[0].mean.numpy(), pairs.audio.mean(0), atol=1e-4)
