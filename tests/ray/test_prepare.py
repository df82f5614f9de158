"""tnn.ray.prepare without Ray: the statistics transforms add up to the in-memory fit, the
input stages from statistics equal `tnn.methods.linear.input_maps`, projection and id selection are
plain batch functions. The Ray Data pass itself runs in tests/ray/test_train_loop.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from tnn.ray import prepare as td
from tnn.core.cca import CCAStats, fit_cca
from tnn.methods.linear import CCAConfig, input_maps, input_maps_from_stats
from tnn.methods.tnn import TNNConfig
from tnn.data.sources import load_source


@pytest.fixture(scope="module")
def uci():
    return load_source("uci-mfeat").subset(np.arange(0, 2000, 4))  # 500 clips, 50 per class


def _blocks(p, sizes):
    """Uneven numpy batches of `p`, as Ray Data would hand them to map_batches."""
    edges = np.cumsum([0, *sizes])
    return [{"audio": p.audio[a:b], "visual": p.visual[a:b], "label": p.labels[a:b]}
            for a, b in zip(edges[:-1], edges[1:])]


# --- statistics and input stages -------------------------------------------------------------

def test_block_statistics_add_up_to_the_in_memory_fit(uci):
    rows = [td.cca_stats_batch(b, 10) for b in _blocks(uci, [7, 193, 0, 300])]
    assert all(v.shape[0] == 1 for r in rows for v in r.values())  # one row per block
    got, want = td.sum_stats(rows), CCAStats.from_arrays(uci.audio, uci.visual, uci.labels, 10)
    for key, value in want.to_dict().items():
        np.testing.assert_allclose(got.to_dict()[key], value, rtol=1e-12, atol=1e-9)
    a, b = fit_cca(got, 9, ridge=1e-3, beta=0.2), fit_cca(want, 9, ridge=1e-3, beta=0.2)
    for x, y in ((a.A, b.A), (a.B, b.B), (a.corrs, b.corrs)):
        np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("pipeline", ["two-stage", "e2e"])
def test_input_stages_from_statistics_match_pipelines_input_maps(uci, pipeline):
    cfg = TNNConfig(pipeline=pipeline, cca=CCAConfig(dim=9))
    got = input_maps_from_stats(CCAStats.from_arrays(uci.audio, uci.visual, uci.labels, 10),
                                cfg.cca, 10, project=pipeline == "two-stage")
    want = input_maps(uci, cfg.cca, project=pipeline == "two-stage")
    with torch.no_grad():
        for g, w, x in zip(got, want, (uci.audio, uci.visual)):
            g, w = g(torch.from_numpy(x)), w(torch.from_numpy(x))
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item())


def test_project_batch_and_id_selection_are_plain_functions(uci):
    a_in, v_in = input_maps(uci, CCAConfig(dim=4), project=True)
    out = td.project_batch({"audio": uci.audio[:5], "visual": uci.visual[:5],
                            "label": uci.labels[:5], "row": np.arange(5)}, a_in, v_in)
    assert out["audio"].shape == (5, 4) and out["audio"].dtype == np.float32
    assert out["row"].tolist() == [0, 1, 2, 3, 4]
    table = pa.table({"clip_id": ["a", "b", "c"], "label": [0, 1, 2]})
    ids = pa.array(["b"])
    assert td.select_ids(table, ids, keep=True).to_pydict() == {"label": [1]}
    kept = td.select_ids(table, ids, keep=False, drop_ids=False)
    assert kept["clip_id"].to_pylist() == ["a", "c"]
