"""tnn.ray.train_loop: the job config without Ray (the early-stopping state: tests/methods/test_loop.py;
the run note: tests/train/test_checkpoints.py); then, on the session Ray, the driver's data plan
(`tnn.ray.prepare`: the Ray Data statistics pass of shard sets, the in-memory fit set built on the
driver) and ONE 2-worker Train run that must match one process running `run_epoch` on the same
global batches."""

from __future__ import annotations

import dataclasses
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
from tnn.ray.prepare import arrays_dataset, dataset_stats, in_memory_dataset, prepare
from tnn.core.folds import validation_split
from tnn.core.metrics import cross_modal_scores
from tnn.methods.label import LabelConfig, fit_label
from tnn.ray import label_loop
from tnn.serve import export
from tnn.train.checkpoints import load_encoder, load_state
from tnn.train.config import MLflowConfig, TrainJobConfig, network_config
from tnn.train.plan import split_in_memory, train_test

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

    # the statistics pass over Ray Data blocks (the shard sets' path) equals the in-memory
    # statistics (in-memory sources compute them on the driver) and fit
    want = CCAStats.from_arrays(fit.audio, fit.visual, fit.labels, 10)
    passed = dataset_stats(arrays_dataset(fit, blocks=5), 10)
    for key, value in want.to_dict().items():
        np.testing.assert_allclose(prep.stats.to_dict()[key], value, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(passed.to_dict()[key], value, rtol=1e-12, atol=1e-9)
    two_stage = input_maps_from_stats(passed, EQUIV.cca, 10, project=True)  # two-stage
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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the float32 reductions split alike
    try:
        for epoch in range(3):
            order = np.concatenate([np.concatenate([ranks[0][s], ranks[1][s]])
                                    for s in range(epoch * steps, (epoch + 1) * steps)])
            xa, xv, labels = _arranged(rows, order, epoch)
            run_epoch(net, opt, xa, xv, labels, 64, torch.Generator().manual_seed(epoch), kwargs)
    finally:
        torch.set_num_threads(threads)
    moved = max((net.state_dict()[k] - v).abs().max().item()
                for k, v in _initial(prep, fit).items())
    assert moved > 1e-3
    err = max((net.state_dict()[k] - v).abs().max().item() for k, v in last.items())
    print(f"2 Ray Train workers vs run_epoch: parameters moved {moved:.2e}, differ by {err:.2e}")
    # float32: each rank's gradient is a sum over its 32 rows, added by the all-reduce, where one
    # process sums 64 rows at once. Adam divides by the root of the squared gradients, so for
    # near-zero gradient entries those last-bit differences grow; over 3 epochs the gap ranged
    # 2e-6 .. 5.3e-5 (0.2 % of the movement) with the row order Ray Data dealt; the bound is
    # 1 % of the movement.
    assert err < 0.01 * moved, f"parameters differ by {err:.2e} (moved {moved:.2e})"


@pytest.mark.ray
@pytest.mark.parametrize("shuffle", ["epoch", "once", "local"])
def test_in_memory_fit_set_is_projected_shuffled_and_blocked_on_the_driver(ray_local, shuffle):
    """In-memory sources skip the Ray Data pass: the fit set is permuted with the run's seed
    (kept in order for shuffle="local"), projected by the input stages, and cut into the blocks
    the ranks are dealt; each row keeps its fit-set index."""
    cfg = TrainJobConfig(subset=300, tnn=EQUIV, workers=2, shuffle=shuffle,
                         mlflow=MLflowConfig(enabled=False))
    fit, _, _ = split_in_memory(cfg)
    stages = input_maps_from_stats(CCAStats.from_arrays(fit.audio, fit.visual, fit.labels, 10),
                                   CCAConfig(dim=4), 10, project=True)
    got = []
    for _ in range(2):
        ds = in_memory_dataset(cfg, fit, *stages).materialize()
        parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
        got.append(np.concatenate([b["row"] for b in parts]))
    assert ds.num_blocks() == (16 if shuffle == "epoch" else 8)  # clip(n // 64, 8 * workers)
    cols = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    assert sorted(cols["row"]) == list(range(fit.n))
    if shuffle == "local":
        assert list(got[0]) == list(range(fit.n)) == list(got[1])
    else:
        assert list(got[0]) != list(range(fit.n))
    if shuffle != "epoch":  # the same seeded permutation every time; "epoch" deals blocks anew
        assert list(got[0]) == list(got[1])
    np.testing.assert_array_equal(cols["label"], fit.labels[cols["row"]])
    with torch.no_grad():
        for (key, x), stage in zip((("audio", fit.audio), ("visual", fit.visual)), stages):
            want = stage(torch.from_numpy(x[cols["row"]])).numpy()
            assert cols[key].shape == (fit.n, 4) and cols[key].dtype == np.float32
            np.testing.assert_allclose(cols[key], want, rtol=1e-6, atol=1e-6)


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


# --- tnn-label on Ray Train ------------------------------------------------------------------

def test_label_method_config():
    cfg = build_config(parse_args(["--set", "method=tnn-label", "--set", "tnn_label.epochs=3",
                                   "--set", "tnn_label.batch_size=96", "--set", "workers=3"]))
    assert (cfg.method, cfg.tnn_label.epochs, TrainJobConfig().method) == ("tnn-label", 3, "tnn")
    net = network_config(cfg).tnn
    assert (net.pipeline, net.train.batch_size, net.train.epochs) == ("e2e", 96, 3)
    assert network_config(TrainJobConfig()) == TrainJobConfig()
    with pytest.raises(ConfigError, match="tnn_label.batch_size=256"):
        TrainJobConfig(method="tnn-label", workers=3)
    with pytest.raises(ConfigError, match="method='label'"):
        TrainJobConfig(method="label")
    lab = dataclasses.replace(cfg, tnn_label=LabelConfig(val_fraction=0.3, seed=2), subset=300,
                              workers=1)
    fit, val, _ = split_in_memory(lab)
    train, _ = train_test(lab)
    assert val.n == len(validation_split(train.labels, 0.3, 2)[1])


LABEL = LabelConfig(hidden=(64,), epochs=8, batch_size=64, patience=99,  # kcca.rank 1000 >
                    mix_grid=(0.0, 0.5, 1.0))  # rows: every row a landmark; all 3 components


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_tnn_label_one_worker_checkpoints_exports_and_matches_fit_label(ray_local, tmp_path):
    """method=tnn-label through `fit` (1 worker, gloo): DDP-ready loop, rank 0's readout, one
    encoder in the final checkpoint that embeds (and exports) as reported; its network's best
    validation MAP and its test MAP are within noise of `fit_label` on the same training folds
    (the kernel part sees all fit rows here; the bounded sample is checked on its own)."""
    cfg = TrainJobConfig(method="tnn-label", tnn_label=LABEL, subset=600, workers=1,
                         test_curve=False, storage_path=str(tmp_path / "runs"),
                         run_name="label", mlflow=MLflowConfig(enabled=False))
    prep = prepare(cfg, log=lambda s: None)
    fit, val, test = split_in_memory(cfg)
    assert (prep.n_fit, prep.val.n) == (fit.n, val.n) and fit.n > 300
    sample = label_loop.readout_sample(prep, 300, 0)
    # class-balanced: Ray Data's random_sample keeps ~80 % of the ~41 fit rows per class (33 +- 4
    # each, the block order it sees is not fixed), then the cut to 300 is stratified; a cut
    # that is not (e.g. the first 300 rows of a class-sorted set) leaves classes far below 20
    assert sample.n == 300 and np.bincount(sample.labels, minlength=10).min() >= 20
    everything = label_loop.readout_sample(prep, 10_000, 0)  # all rows, in fit-set order
    np.testing.assert_allclose(everything.audio, prep.audio_in(torch.from_numpy(fit.audio)),
                               atol=1e-5)
    result = tl.fit(cfg, prep)
    m = result.metrics
    assert m["done"] == 1 and m["readout_rows"] == fit.n and 1 <= m["best_epoch"] <= 8
    enc = load_encoder(result.checkpoint.path)
    s = cross_modal_scores(enc.embed_audio(test.audio), enc.embed_visual(test.visual), test.labels)
    assert abs(0.5 * (s["a2v_map"] + s["v2a_map"]) - m["test_map"]) < 1e-6
    export.export_branch(enc, "visual", tmp_path / "visual")
    embed, _ = export.load_branch(tmp_path / "visual")
    assert np.abs(embed(test.visual) - enc.embed_visual(test.visual)).max() <= 1e-6
    train, _ = train_test(cfg)
    lines = []
    mem = fit_label(train, LABEL, log=lines.append)
    s = cross_modal_scores(mem.embed_audio(test.audio), mem.embed_visual(test.visual), test.labels)
    mem_map = 0.5 * (s["a2v_map"] + s["v2a_map"])
    mem_net = float(next(x for x in lines if "net: best val MAP" in x).split()[5])
    net_map = float(load_state(result.checkpoint.path)["best"])
    print(f"tnn-label: network best val MAP {net_map:.4f} (Ray Train, 1 worker) vs "
          f"{mem_net:.4f} (fit_label); test MAP {m['test_map']:.4f} (readout weights "
          f"{[m[c + '_weight'] for c in LABEL.components]}, fallback {m['fallback']}) vs "
          f"{mem_map:.4f}")
    assert abs(net_map - mem_net) < 0.05 and abs(m["test_map"] - mem_map) < 0.03
