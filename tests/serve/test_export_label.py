"""A fitted tnn-label encoder (posterior readout: `MixPad` of the network's and cluster-KCCA's
class posteriors, optionally re-split per class pair) and its cluster-KCCA fallback: checkpoint
files (`tnn.train.checkpoints` via `tnn.train.module_spec`) and exported branches
(`tnn.serve.export`) embed as the encoder does."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tnn.data.sources import uci_mfeat
from tnn.errors import DataError
from tnn.methods.kcca import KCCAConfig, fit_kcca
from tnn.methods.label import LabelConfig, fit_label
from tnn.methods.pairsplit import PairSplit, split_models
from tnn.methods.readout import MixPad
from tnn.serve import export
from tnn.train import checkpoints, module_spec


@pytest.fixture(scope="module")
def pairs():
    p = uci_mfeat("fou", "pix")
    rows = np.concatenate([np.flatnonzero(p.labels == c)[:24] for c in range(10)])
    return p.subset(np.sort(rows))


@pytest.fixture(scope="module")
def label_encoder(pairs):
    cfg = LabelConfig(hidden=(32,), epochs=2, mix_grid=(0.5,), fallback=False,
                      kcca=KCCAConfig(rank=60), components=("deep", "kernel"))
    enc = fit_label(pairs, cfg, log=lambda s: None)
    assert isinstance(enc.audio_in, MixPad) and len(enc.audio_in.probs) == 2  # deep + kernel
    return enc


def test_mixpad_keeps_its_weights_in_the_state_dict_and_drops_zero_weights(label_encoder):
    state = label_encoder.state_dict()
    assert torch.equal(state["audio_in.mix"], torch.tensor([0.5, 0.5]))
    assert label_encoder.audio_in.weights == [0.5, 0.5]
    one = MixPad([label_encoder.audio_in.probs[0], label_encoder.audio_in.probs[1]], [1.0, 0.0], 0)
    assert len(one.probs) == 1 and one.weights == [1.0]
    with pytest.raises(ValueError, match="one > 0"):
        MixPad([one], [0.0], 0)


@pytest.mark.parametrize("kind", ["label", "c-kcca"])
def test_checkpoint_files_and_exported_branches_round_trip(pairs, label_encoder, tmp_path, kind):
    enc = label_encoder if kind == "label" else fit_kcca(
        pairs, KCCAConfig(rank=60), LabelConfig().cca, 0.2, log=lambda s: None)
    xa, xv = pairs.audio, pairs.visual
    want_a, want_v = enc.embed_audio(xa), enc.embed_visual(xv)
    checkpoints.save_checkpoint(tmp_path, {"epoch": 1, "history": []}, {}, enc, None, 10)
    spec = json.loads((tmp_path / "encoder.json").read_text())
    assert spec["kind"] == module_spec.KIND and spec["net"] is None
    back = checkpoints.load_encoder(tmp_path)
    assert np.abs(back.embed_audio(xa) - want_a).max() <= 1e-6
    assert np.abs(back.embed_visual(xv) - want_v).max() <= 1e-6
    for modality, x, want in (("audio", xa, want_a), ("visual", xv, want_v)):
        meta = export.export_branch(back, modality, tmp_path / modality)
        embed, _ = export.load_branch(tmp_path / modality)
        assert meta["out_dim"] == want.shape[1]
        for n in (1, 7, len(x)):
            assert np.abs(embed(x[:n]) - want[:n]).max() <= 1e-6


def test_a_spec_that_does_not_match_the_weights_is_refused(label_encoder, tmp_path):
    checkpoints.save_checkpoint(tmp_path, {"epoch": 1, "history": []}, {}, label_encoder, None, 10)
    spec = json.loads((tmp_path / "encoder.json").read_text())
    spec["audio_in"]["probs"][1]["path"]["parts"][1]["landmarks"] = [10 ** 9, 10 ** 9]
    (tmp_path / "encoder.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="encoder.json"):
        checkpoints.load_encoder(tmp_path)


def test_a_pair_split_survives_checkpoint_and_export(pairs, label_encoder, tmp_path):
    """A readout with a non-trivial pairwise re-split (tnn.methods.pairsplit) on both sides:
    the reloaded checkpoint and the exported branches embed (and rank) exactly as it does; a
    file written before the re-split existed (no "split" in its spec) still loads without one."""
    enc = copy.deepcopy(label_encoder)
    xa, xv, y = pairs.audio, pairs.visual, pairs.labels
    plain_a = enc.embed_audio(xa)
    enc.audio_in.split = PairSplit([(6, 9), (1, 7)], split_models(xa, y, [(6, 9), (1, 7)], 1.0),
                                   10, 2.0)
    enc.visual_in.split = PairSplit([(3, 5)], split_models(xv, y, [(3, 5)], 0.1), 10, 0.5)
    want_a, want_v = enc.embed_audio(xa), enc.embed_visual(xv)
    assert np.abs(want_a - plain_a).max() > 0.05  # the split changes the posterior
    checkpoints.save_checkpoint(tmp_path, {"epoch": 1, "history": []}, {}, enc, None, 10)
    spec = json.loads((tmp_path / "encoder.json").read_text())
    assert spec["audio_in"]["split"] == {"type": "pair_split", "scale": 2.0,
                                         "pairs": [[6, 9], [1, 7]], "classes": 10,
                                         "dim": xa.shape[1]}
    back = checkpoints.load_encoder(tmp_path)
    assert back.audio_in.split.scale == 2.0 and back.visual_in.split.scale == 0.5
    assert np.array_equal(back.embed_audio(xa), want_a)
    assert np.array_equal(back.embed_visual(xv), want_v)
    for modality, x, want in (("audio", xa, want_a), ("visual", xv, want_v)):
        export.export_branch(back, modality, tmp_path / modality)
        embed, _ = export.load_branch(tmp_path / modality)
        for n in (1, 7, len(x)):
            assert np.abs(embed(x[:n]) - want[:n]).max() <= 1e-6
    old = tmp_path / "old"
    old.mkdir()
    checkpoints.save_checkpoint(old, {"epoch": 1, "history": []}, {}, label_encoder, None, 10)
    spec = json.loads((old / "encoder.json").read_text())
    assert spec["audio_in"].pop("split") is None
    (old / "encoder.json").write_text(json.dumps(spec))
    assert checkpoints.load_encoder(old).audio_in.split is None
    assert np.array_equal(checkpoints.load_encoder(old).embed_audio(xa), plain_a)
