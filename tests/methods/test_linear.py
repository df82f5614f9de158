"""tnn.methods.linear: closed-form (cluster-)CCA as an encoder."""

import numpy as np
import pytest
import torch

from tnn.core.cca import CCAStats, fit_cca
from tnn.core.encoder import standardizer
from tnn.data.sources import load_source
from tnn.errors import DataError
from tnn.methods.linear import CCAConfig, fit_linear


@pytest.fixture(scope="module")
def uci():
    p = load_source("uci-mfeat")
    return p.subset(np.arange(0, 2000, 2))  # 1,000 clips, 100 per class


def test_linear_encoder_equals_closed_form_projection(uci):
    enc = fit_linear(uci, CCAConfig(dim=5), beta=0.2)
    std_a, std_v = standardizer(uci.audio), standardizer(uci.visual)
    with torch.no_grad():
        za, zv = std_a(torch.from_numpy(uci.audio)).double(), std_v(torch.from_numpy(uci.visual)).double()
    proj = fit_cca(CCAStats.from_arrays(za.numpy(), zv.numpy(), uci.labels, 10), 5, ridge=1e-3, beta=0.2)
    expect = proj.transform_audio(za.numpy())
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.embed_audio(uci.audio), expect, atol=2e-5)
    assert np.allclose(np.linalg.norm(enc.embed_visual(uci.visual), axis=1), 1, atol=1e-5)


def test_encoder_refuses_wrong_width(uci):
    enc = fit_linear(uci, CCAConfig(dim=3), beta=1.0)
    with pytest.raises(DataError, match=r"audio features must have shape \(N, 76\); got \(2, 5\)"):
        enc.embed_audio(np.zeros((2, 5)))
