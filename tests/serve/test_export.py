"""tnn.serve.export: an encoder branch as a torch.export program equals Encoder.embed_* and loads
without the tnn package."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tnn.serve import export
from tnn.core.encoder import Encoder
from tnn.errors import ConfigError
from tnn.methods import e2e_default
from tnn.methods.linear import CCAConfig, input_maps
from tnn.methods.tnn import TNNConfig, build_net
from tnn.data.sources import load_source

# Run in a fresh interpreter: the tnn package (installed editable) is made unimportable first.
NO_TNN = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "tnn" or name.startswith("tnn."):
            raise ImportError("tnn is blocked in this process")
sys.meta_path.insert(0, Block())
try:
    import tnn
    raise SystemExit("tnn importable")
except ImportError:
    pass
"""


@pytest.fixture(scope="module")
def uci():
    return load_source("uci-mfeat").subset(np.arange(0, 2000, 4))


def _encoder(uci, kind: str) -> Encoder:
    torch.manual_seed(0)
    if kind == "e2e":  # standardiser + wide_bn branches (BatchNorm, dropout)
        cfg = e2e_default()
        a_in, v_in = input_maps(uci, cfg.cca, project=False)
    else:  # standardiser + cluster-CCA projection [+ the paper's sigmoid net]
        cfg = TNNConfig(pipeline="two-stage", cca=CCAConfig(dim=5))
        a_in, v_in = input_maps(uci, cfg.cca, project=True)
    net = None if kind == "first-stage" else build_net(cfg, a_in, v_in, uci)
    encoder = Encoder(a_in, v_in, net, 76, 240)
    if net is not None:  # non-trivial BatchNorm statistics, then eval mode
        with torch.no_grad():
            net.train()
            net(a_in(torch.from_numpy(uci.audio)), v_in(torch.from_numpy(uci.visual)))
    return encoder.eval()


@pytest.mark.parametrize("kind", ["e2e", "two-stage", "first-stage"])
def test_exported_branches_equal_the_encoder(uci, tmp_path, kind):
    encoder = _encoder(uci, kind)
    for modality, x, ref in (("audio", uci.audio, encoder.embed_audio(uci.audio)),
                             ("visual", uci.visual, encoder.embed_visual(uci.visual))):
        meta = export.export_branch(encoder, modality, tmp_path / modality)
        assert meta["in_dim"] == x.shape[1] and meta["out_dim"] == ref.shape[1]
        embed, back = export.load_branch(tmp_path / modality)
        assert back == meta
        for n in (1, 2, 7, len(x)):  # batch size is dynamic, 1 included
            np.testing.assert_allclose(embed(x[:n]), ref[:n], atol=1e-6, rtol=0)
        assert embed(x[:0]).shape == (0, ref.shape[1])
        np.testing.assert_allclose(np.linalg.norm(embed(x), axis=1), 1.0, atol=1e-6)


def test_export_leaves_the_encoder_in_training_mode_untouched(uci, tmp_path):
    encoder = _encoder(uci, "e2e").train()
    export.export_branch(encoder, "audio", tmp_path)
    assert encoder.training  # exported from an eval copy
    embed, _ = export.load_branch(tmp_path)
    np.testing.assert_allclose(embed(uci.audio), encoder.eval().embed_audio(uci.audio),
                               atol=1e-6, rtol=0)


def test_export_refuses_an_unknown_modality(uci, tmp_path):
    with pytest.raises(ConfigError, match="modality"):
        export.export_branch(_encoder(uci, "first-stage"), "text", tmp_path)


def test_exported_program_runs_without_the_tnn_package(uci, tmp_path):
    encoder = _encoder(uci, "e2e")
    export.export_branch(encoder, "visual", tmp_path / "visual")
    np.save(tmp_path / "x.npy", uci.visual[:50])
    code = NO_TNN + (
        "import json, numpy as np, torch\n"
        "m = torch.export.load('visual/program.pt2').module()\n"
        "out = m(torch.from_numpy(np.load('x.npy'))).detach().numpy()\n"
        "np.save('out.npy', out)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] == 'tnn')))\n")
    res = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), encoder.embed_visual(uci.visual[:50]),
                               atol=1e-6, rtol=0)
