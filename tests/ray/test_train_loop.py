"""tnn.ray.train_loop: the job config without Ray (the early-stopping state: tests/methods/test_loop.py;
the run note: tests/train/test_checkpoints.py); then, on the session Ray, the distributed statistics pass (`tnn.ray.prepare.prepare`) and ONE 2-worker Train run that
must match one process running `run_epoch` on the same global batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs.train import build_config, parse_args
from tests.support import ROOT
from tnn.ray import train_loop as tl
from tnn.core.cca import CCAStats, fit_cca, standardized_stats
from tnn.train.checkpoints import widths
from tnn.config import from_dict, to_dict
from tnn.errors import ConfigError
from tnn.core.model import TwoBranchNet
from tnn.methods.linear import CCAConfig, input_maps_from_stats
from tnn.methods.tnn import TNNConfig, TrainConfig, build_net, loss_kwargs, net_out_dim, run_epoch
from tnn.ray.prepare import prepare
from tnn.train.config import MLflowConfig, TrainJobConfig
from tnn.train.plan import split_in_memory

CONFIGS = ROOT / "jobs" / "configs"


# --- config ----------------------------------------------------------------------------------

def test_config_layers_presets_and_validation(tmp_path):
    cfg = build_config(parse_args(["--smoke", "--config", "two_stage.yaml", "--set", "workers=1",
                                   "--set", "tnn.train.lr=0.01"]))
    assert (cfg.subset, cfg.tnn.train.epochs, cfg.tnn.pipeline, cfg.tnn.preset) == \
        (600, 2, "two-stage", "paper")
    assert cfg.tnn.train.lr == 0.01 and cfg.workers == 1 and cfg.run_name.startswith("tnn-train-")
    default = TrainJobConfig()
    assert (default.tnn.pipeline, default.workers, default.cpus_per_worker) == ("e2e", 2, 0.5)
    assert from_dict(TrainJobConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    for preset in CONFIGS.glob("*.yaml"):
        build_config(parse_args(["--config", str(preset)]))
    with pytest.raises(ConfigError, match="divide tnn.train.batch_size"):
        TrainJobConfig(workers=3)
    with pytest.raises(ConfigError, match="test_fold=5"):
        TrainJobConfig(test_fold=5)
    with pytest.raises(ConfigError, match="ensemble"):
        TrainJobConfig(tnn=TNNConfig(ensemble=2))


# --- on Ray: the distributed statistics pass and the 2-worker equivalence --------------------

EQUIV = TNNConfig(pipeline="e2e", preset="wide", dropout=0.0, hidden=(32,),  # LayerNorm, no dropout
                  cca=CCAConfig(dim=4),
                  train=TrainConfig(epochs=3, batch_size=64, lr=3e-3, w_cca=0.5, patience=99,
                                    distance="cosine", margin=0.2))


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_distributed_statistics_and_two_workers_equal_one_process(ray_local, tmp_path):
    cfg = TrainJobConfig(subset=300, tnn=EQUIV, workers=2, shuffle_buffer=64, test_curve=False,
                            storage_path=str(tmp_path / "runs"), run_name="equiv",
                            mlflow=MLflowConfig(enabled=False))
    prep = prepare(cfg, log=lambda s: None)
    fit, val, test = split_in_memory(cfg)
    assert (prep.n_fit, prep.val.n, prep.test.n) == (fit.n, val.n, test.n)

    # the statistics pass over Ray Data blocks equals the in-memory statistics and fit
    want = CCAStats.from_arrays(fit.audio, fit.visual, fit.labels, 10)
    for key, value in want.to_dict().items():
        np.testing.assert_allclose(prep.stats.to_dict()[key], value, rtol=1e-12, atol=1e-9)
    two_stage = input_maps_from_stats(prep.stats, EQUIV.cca, 10, project=True)  # two-stage
    (_, sx), (_, sy), z = standardized_stats(want)
    proj = fit_cca(z, 4, ridge=1e-3, beta=0.2)
    np.testing.assert_allclose(two_stage[0][1].weight.numpy(), proj.A, rtol=1e-5, atol=1e-6)

    # 2 gloo workers through train_loop_per_worker, recording the fit rows of every local batch
    record = tmp_path / "rows"
    record.mkdir()
    result = tl.fit(cfg, prep, record_rows=str(record))
    assert result.metrics["done"] == 1 and result.metrics["epoch"] == 3
    ranks = [np.load(record / f"rows-rank{r}.npy") for r in range(2)]  # (steps, 32) each
    last = torch.load(Path(result.checkpoint.path).parent / "epoch-0003" / "state.pt",
                      weights_only=False)["net"]

    # one process: run_epoch on the same global batches (rank 0's rows, then rank 1's)
    rows = {}
    for batch in prep.fit.iter_batches(batch_size=None, batch_format="numpy"):
        for i, r in enumerate(batch["row"]):
            rows[int(r)] = (batch["audio"][i], batch["visual"][i], batch["label"][i])
    torch.manual_seed(EQUIV.train.seed)
    net = build_net(EQUIV, prep.audio_in, prep.visual_in, fit)
    opt = torch.optim.Adam(net.parameters(), lr=EQUIV.train.lr)
    kwargs = loss_kwargs(EQUIV, 10, net_out_dim(EQUIV, 10))
    steps = len(ranks[0]) // 3
    for epoch in range(3):
        order = np.concatenate([np.concatenate([ranks[0][s], ranks[1][s]])
                                for s in range(epoch * steps, (epoch + 1) * steps)])
        xa, xv, labels = _arranged(rows, order, epoch)
        run_epoch(net, opt, xa, xv, labels, 64, torch.Generator().manual_seed(epoch), kwargs)
    moved = max((net.state_dict()[k] - v).abs().max().item()
                for k, v in _initial(prep, fit).items())
    assert moved > 1e-3
    err = max((net.state_dict()[k] - v).abs().max().item() for k, v in last.items())
    print(f"2 Ray Train workers vs run_epoch: parameters moved {moved:.2e}, differ by {err:.2e}")
    assert err < 1e-6, f"parameters differ by {err:.2e} (moved {moved:.2e})"


def _arranged(rows, order, seed):
    """Rows laid out so that `run_epoch`'s permutation (same generator seed) yields `order`."""
    perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))
    xa = np.empty((len(order), len(rows[0][0])), np.float32)
    xv = np.empty((len(order), len(rows[0][1])), np.float32)
    labels = np.empty(len(order), np.int64)
    for j, r in enumerate(order):
        xa[perm[j]], xv[perm[j]], labels[perm[j]] = rows[int(r)]
    return torch.from_numpy(xa), torch.from_numpy(xv), torch.from_numpy(labels)


def _initial(prep, fit) -> dict:
    torch.manual_seed(EQUIV.train.seed)
    return build_net(EQUIV, prep.audio_in, prep.visual_in, fit).state_dict()


def test_model_has_no_batchnorm_for_the_exact_check():
    net = build_net(EQUIV, torch.nn.Identity(), torch.nn.Identity(),
                    widths((76, 240), 10))
    assert isinstance(net, TwoBranchNet)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())
