"""Checkpoint files: the encoder they carry rebuilds exactly; RNG states round-trip; the run note."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tnn.train import checkpoints as ck
from tnn.core.encoder import Encoder
from tnn.methods.linear import CCAConfig, input_maps
from tnn.methods.tnn import TNNConfig, build_net
from tnn.data.sources import load_source


@pytest.fixture(scope="module")
def uci():
    return load_source("uci-mfeat").subset(np.arange(0, 2000, 4))


def test_checkpoint_round_trip_rebuilds_the_encoder(uci, tmp_path):
    cfg = TNNConfig(pipeline="two-stage", cca=CCAConfig(dim=5))
    a_in, v_in = input_maps(uci, cfg.cca, project=True)
    torch.manual_seed(0)
    net = build_net(cfg, a_in, v_in, uci)
    encoder = Encoder(a_in, v_in, net, 76, 240)
    opt = torch.optim.Adam(net.parameters())
    state = {"epoch": 3, "net": net.state_dict(), "optimizer": opt.state_dict(),
             "rng": ck.rng_state()}
    ck.save_checkpoint(tmp_path, state, {"run_name": "r"}, encoder, cfg, 10)
    back = ck.load_encoder(tmp_path)
    np.testing.assert_array_equal(back.embed_audio(uci.audio), encoder.embed_audio(uci.audio))
    np.testing.assert_array_equal(back.embed_visual(uci.visual), encoder.embed_visual(uci.visual))
    assert ck.load_state(tmp_path)["epoch"] == 3
    assert json.loads((tmp_path / "config.json").read_text()) == {"run_name": "r"}
    first_stage = Encoder(a_in, v_in, None, 76, 240)  # the two-stage pipeline may keep it alone
    ck.save_checkpoint(tmp_path, state, {}, first_stage, cfg, 10)
    assert ck.load_encoder(tmp_path).net is None


def test_rng_state_round_trip():
    saved = ck.rng_state()
    a = (torch.rand(3), np.random.rand(3))
    ck.set_rng_state(saved)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_run_info_beside_the_run_folder(tmp_path):
    assert ck.read_run_info(str(tmp_path), "r1") is None
    ck.write_run_info(str(tmp_path), "r1", {"mlflow_run_id": "abc"})
    assert ck.read_run_info(str(tmp_path), "r1") == {"mlflow_run_id": "abc"}
    assert ck.storage_of(str(tmp_path)) == (str(tmp_path), None)
