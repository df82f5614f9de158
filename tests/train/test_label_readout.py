"""tnn.train.label_readout: tnn-label's readout on an already trained network (the distributed
path's rank 0) makes fit_label's choices on the same network and rows, and embeds alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tnn.core.metrics import cross_modal_scores
from tnn.core.folds import validation_split
from tnn.data.sources import uci_mfeat
from tnn.methods import label
from tnn.methods.kcca import KCCAConfig
from tnn.methods.label import LabelConfig, fit_label
from tnn.methods.linear import input_maps
from tnn.methods.readout import MixPad
from tnn.train.label_readout import choose_readout, deep_encoder, standardised, unstandardised


def pairs():
    p = uci_mfeat("fou", "pix")
    rows = np.concatenate([np.flatnonzero(p.labels == c)[:40] for c in range(10)])
    return p.subset(np.sort(rows))


def mean_map(enc, test):
    s = cross_modal_scores(enc.embed_audio(test.audio), enc.embed_visual(test.visual), test.labels)
    return 0.5 * (s["a2v_map"] + s["v2a_map"])


@pytest.mark.parametrize("fallback, epochs, grid, components", [
    (False, 4, (0.0, 0.5, 1.0), ("deep", "kernel")),
    (False, 4, (0.0, 0.5, 1.0), ("deep", "kernel", "krr")),
    (True, 0, (1.0,), ("deep", "kernel"))])  # untrained: c-kcca wins
def test_choices_and_test_map_equal_fit_labels_on_the_same_network(monkeypatch, fallback,
                                                                    epochs, grid, components):
    data = pairs()
    test_idx = np.arange(0, data.n, 4)
    train, test = data.subset(np.setdiff1d(np.arange(data.n), test_idx)), data.subset(test_idx)
    cfg = LabelConfig(hidden=(32,), epochs=epochs, kcca=KCCAConfig(rank=80), fallback=fallback,
                      mix_grid=grid, components=components)
    nets, lines = [], []
    real = label.train_proxy_net
    monkeypatch.setattr(label, "train_proxy_net",
                        lambda *a, **k: nets.append(real(*a, **k)) or nets[-1])
    mem = fit_label(train, cfg, log=lines.append)
    fit_idx, val_idx = validation_split(train.labels, cfg.val_fraction, cfg.seed)
    fit, val = train.subset(fit_idx), train.subset(val_idx)
    a_std, v_std = input_maps(fit, cfg.cca, project=False)
    got_lines = []
    enc, choice = choose_readout(nets[0], a_std, v_std, standardised(fit, a_std, v_std), val,
                                 cfg, log=got_lines.append)
    # the same validation scores, hence the same choices, as fit_label's log
    def scored(log):
        return [s for s in log if "val MAP" in s and "epoch" not in s and "net:" not in s]
    assert len(scored(lines)) >= 3 and scored(got_lines) == scored(lines)
    assert isinstance(enc.audio_in, MixPad) == isinstance(mem.audio_in, MixPad)
    if isinstance(mem.audio_in, MixPad):
        assert enc.audio_in.weights == mem.audio_in.weights
        assert [m.scale for m in enc.audio_in.probs] == [m.scale for m in mem.audio_in.probs]
        for side in ("audio_in", "visual_in"):  # the same pair re-split (fitted on raw rows)
            got, want = getattr(enc, side).split, getattr(mem, side).split
            assert (got is None) == (want is None)
            if want is not None:
                assert got.scale == want.scale and torch.equal(got.e_i, want.e_i) \
                    and torch.equal(got.e_j, want.e_j)
                np.testing.assert_allclose(got.weight, want.weight, rtol=1e-3, atol=1e-6)
    print(f"fallback={fallback}: {choice}; test MAP {mean_map(enc, test):.4f} (readout on the "
          f"trained net) vs {mean_map(mem, test):.4f} (fit_label)")
    assert abs(mean_map(enc, test) - mean_map(mem, test)) < 0.02  # kernel refit: other order
    assert choice["readout_rows"] == fit.n and choice["fallback"] == int(fallback)
    assert choice["left_out"] == 0
    assert ("krr_global" in choice) == ("krr" in components)


def test_unstandardised_rows_are_the_raw_rows_to_float32_rounding():
    data = pairs()
    a_std, v_std = input_maps(data, LabelConfig().cca, project=False)
    back = unstandardised(standardised(data, a_std, v_std), a_std, v_std)
    for got, raw in ((back.audio, data.audio), (back.visual, data.visual)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, raw, rtol=0, atol=4 * np.spacing(np.abs(raw).max()))
    assert np.array_equal(back.labels, data.labels)
    a_cca, _ = input_maps(data, LabelConfig().cca, project=True)
    with pytest.raises(ValueError, match="standardiser"):
        unstandardised(data, a_cca, v_std)


def test_deep_encoder_embeds_the_networks_posterior():
    data = pairs()
    cfg = LabelConfig(hidden=(16,), epochs=0)
    a_std, v_std = input_maps(data, cfg.cca, project=False)
    torch.manual_seed(0)
    net = label.ProxyNet(data.audio.shape[1], data.visual.shape[1], 10, cfg).eval()
    enc = deep_encoder(net, a_std, v_std, (data.audio.shape[1], data.visual.shape[1]), 16.0)
    z = standardised(data, a_std, v_std)
    want = label.posterior_rows(net, torch.from_numpy(z.audio), torch.from_numpy(z.visual), 16.0)
    np.testing.assert_allclose(enc.embed_audio(data.audio), want[0], atol=1e-6)
    np.testing.assert_allclose(enc.embed_visual(data.visual), want[1], atol=1e-6)


@pytest.mark.parametrize("scaling", ["feature", "global"])
def test_a_three_part_readout_checkpoints_and_exports(tmp_path, scaling):
    """deep + kernel + krr (the default components), every weight > 0 (levels 0.25 / 0.5):
    the encoder round-trips through a checkpoint (`module_spec`) and the exported program,
    with either input scaling of the kernel ridge classifier."""
    from tnn.methods.krr import KRRConfig, KRRProbs
    from tnn.methods.tnn import TNNConfig
    from tnn.serve import export
    from tnn.train import checkpoints
    data = pairs()
    cfg = LabelConfig(hidden=(16,), epochs=0, kcca=KCCAConfig(rank=60), fallback=False,
                      mix_grid=(0.25, 0.5), krr=KRRConfig(scalings=(scaling,)))
    assert cfg.components == ("deep", "kernel", "krr")
    a_std, v_std = input_maps(data, cfg.cca, project=False)
    torch.manual_seed(0)
    net = label.ProxyNet(data.audio.shape[1], data.visual.shape[1], 10, cfg)
    enc, choice = choose_readout(net, a_std, v_std, standardised(data, a_std, v_std), data, cfg,
                                 log=lambda s: None)
    assert choice["left_out"] == 0 and min(choice[f"{c}_weight"] for c in cfg.components) > 0
    assert choice["krr_global"] == float(scaling == "global")
    assert any(isinstance(m, KRRProbs) for m in enc.visual_in.probs)
    want_a, want_v = enc.embed_audio(data.audio), enc.embed_visual(data.visual)
    (tmp_path / "ck").mkdir()
    checkpoints.save_checkpoint(tmp_path / "ck", {"epoch": 1, "history": [], "best": 0.0,
                                                  "done": True, "rng": checkpoints.rng_state()},
                                {"run_name": "r"}, enc, TNNConfig(), 10)
    back = checkpoints.load_encoder(tmp_path / "ck")
    np.testing.assert_allclose(back.embed_audio(data.audio), want_a, atol=1e-6)
    np.testing.assert_allclose(back.embed_visual(data.visual), want_v, atol=1e-6)
    export.export_branch(enc, "visual", tmp_path / "v")
    embed, _ = export.load_branch(tmp_path / "v")
    np.testing.assert_allclose(embed(data.visual), want_v, atol=1e-6)
