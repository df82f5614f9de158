"""tnn.train.distributed: the gradient-carrying gather, the global-batch loss under DDP, the fallbacks.

Multi-process checks share one spawn of 2 gloo workers on 127.0.0.1 (a module fixture: each
worker's imports cost seconds). Workers assert the direct checks themselves and return what the
parent compares with one process running `tnn.methods.tnn.run_epoch` on the concatenated global
batch (float64 throughout).
"""

from __future__ import annotations

import dataclasses
import time
import traceback

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from tests.support import free_port
from tnn.train import distributed as tdist
from tnn.core.cca import CCAStats
from tnn.errors import DataError
from tnn.core.losses import combined_loss
from tnn.core.cca_loss import batch_stats
from tnn.core.model import BranchConfig, TwoBranchNet
from tnn.methods.linear import CCAConfig
from tnn.methods.tnn import TNNConfig, TrainConfig, loss_kwargs, run_epoch
from tnn.core.losses import proxy_loss
from tnn.train.proxy import global_proxy_loss

WORLD, CLASSES, BATCH, ROWS, EPOCHS = 2, 4, 16, 32, 2  # 2 steps per epoch, 8 rows per rank
DA, DV = 6, 5
BRANCH = BranchConfig(hidden=(8,), out_dim=4, dropout=0.0)  # dropout masks differ per rank
CCA = CCAConfig(dim=2, ridge=1e-3, beta=0.2)
CONFIGS = {  # name -> TrainConfig overrides; directions default to ("a2v", "v2a")
    "all_meanpos": dict(reduction="mean_positive"),
    "all_meanpos_excl": dict(reduction="mean_positive", exclude_self_pair=True),
    "all_mean": dict(reduction="mean"),
    "all_mean_excl": dict(reduction="mean", exclude_self_pair=True),
    "all_sum_v2a": dict(reduction="sum", directions=("v2a",)),
    "hard_mean_excl": dict(miner="batch_hard", reduction="mean", exclude_self_pair=True),
    "hard_meanpos_cos": dict(miner="batch_hard", reduction="mean_positive", distance="cosine"),
    "semi_meanpos": dict(miner="semi_hard", reduction="mean_positive"),
    "cca_only": dict(w_triplet=0.0, w_cca=1.0),
    "both": dict(reduction="mean_positive", exclude_self_pair=True, w_cca=0.5),
}
TERM_KEYS = ("total", "triplet", "cca")
COLLECTIVES = ("all_gather", "all_reduce", "all_gather_into_tensor", "reduce_scatter",
               "broadcast", "barrier")


def _kwargs(name: str) -> dict:
    train = TrainConfig(batch_size=BATCH, lr=1e-2, **CONFIGS[name])
    return loss_kwargs(TNNConfig(cca=CCA, train=train), CLASSES)


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ROWS) % CLASSES
    xa = torch.randn(ROWS, DA, generator=g, dtype=torch.float64) + 0.5 * labels[:, None]
    xv = torch.randn(ROWS, DV, generator=g, dtype=torch.float64) - 0.3 * labels[:, None]
    return xa, xv, labels


def _net() -> TwoBranchNet:
    torch.manual_seed(0)
    return TwoBranchNet(DA, DV, BRANCH, BRANCH).double()


# --- process harness -------------------------------------------------------------------------

def _entry(rank, fn, world, port, device, out_dir):
    torch.set_num_threads(1)  # two workers on two cores
    device = f"cuda:{rank}" if device == "cuda" else device
    tdist.init_process_group_for(device, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                 world_size=world, timeout_s=30)
    try:
        torch.save(fn(rank, world, torch.device(device)), out_dir / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def spawn(fn, tmp_path, world=WORLD, device="cpu", timeout=90) -> list:
    """Run ``fn(rank, world, device)`` in ``world`` fresh processes; their results by rank.

    A failing worker re-raises here (torch terminates the others); on timeout every worker
    still alive is terminated, then killed.
    """
    ctx = mp.start_processes(_entry, args=(fn, world, free_port(), device, tmp_path),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers still running after {timeout} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


# --- workers (module level so that spawn can import them) ------------------------------------

def _groups_worker(rank, world, device):
    """Every multi-process group in one run: {group: (True, result) or (False, traceback)}."""
    out = {}
    for name, fn in (("collectives", _collectives_worker), ("ddp", _ddp_worker),
                     ("proxy", _proxy_worker)):
        try:
            out[name] = (True, fn(rank, world, device))
        except Exception:  # reported by that group's test; the next group still runs
            out[name] = (False, traceback.format_exc())
    return out


def _collectives_worker(rank, world, device):
    assert (tdist.rank(), tdist.world_size(), tdist.is_main()) == (rank, world, rank == 0)
    tdist.barrier()
    _check_gather_gradient(rank, world, device)
    xa, xv, labels = _data()
    half = slice(rank * ROWS // world, (rank + 1) * ROWS // world)
    assert torch.equal(tdist.gather_labels(labels[half].to(device)).cpu(), labels)
    refs, ra, rv = tdist.gather_batch(labels[half].to(device), xa[half].to(device),
                                      xv[half].float().to(device))  # mixed dtypes
    assert (refs.dtype, ra.dtype, rv.dtype) == (torch.long, torch.float64, torch.float32)
    assert torch.equal(refs.cpu(), labels) and torch.equal(ra.cpu(), xa)
    assert torch.equal(rv.cpu(), xv.float())
    _check_collectives_per_step(half, device)
    count = tdist.all_reduce_sum(torch.tensor([rank + 1], device=device))
    assert count.item() == world * (world + 1) // 2

    for shards in (CCAStats.from_arrays(xa[half].numpy(), xv[half].numpy(), labels[half].numpy(),
                                        CLASSES, per_class_moments=True),
                   batch_stats(xa[half].to(device), xv[half].to(device), labels[half].to(device),
                               CLASSES, per_class_moments=True)):
        got = tdist.all_reduce_stats(shards)
        want = CCAStats.from_arrays(xa.numpy(), xv.numpy(), labels.numpy(), CLASSES,
                                    per_class_moments=True)
        assert type(got.sum_x) is type(shards.sum_x) and got.n == ROWS
        for field in dataclasses.fields(want):
            value = getattr(got, field.name)
            value = value.cpu().numpy() if isinstance(value, torch.Tensor) else value
            np.testing.assert_allclose(value, getattr(want, field.name), rtol=1e-12, atol=1e-12)

    uneven = CCAStats.from_arrays(xa[half].numpy(), xv[half].numpy(), labels[half].numpy(),
                                  CLASSES, per_class_moments=rank == 0)
    with pytest.raises(DataError, match="different sizes"):
        tdist.all_reduce_stats(uneven)
    rows = 3 + rank  # unequal local batches
    emb = torch.zeros(rows, 4, device=device, requires_grad=True)
    for call in (lambda: tdist.gather(emb), lambda: tdist.gather_labels(labels[:rows]),
                 lambda: tdist.global_batch_loss(emb, emb, labels[:rows].to(device)),
                 lambda: tdist.gather(emb, rows=5)):  # a local check: raises on every rank
        with pytest.raises(DataError, match="equal batch"):
            call()
    return True


def _check_gather_gradient(rank, world, device):
    """x.grad after gather equals the full-batch gradient of the sum of all ranks' losses."""
    full = torch.randn(4 * world, 3, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64).to(device)
    rows = slice(4 * rank, 4 * (rank + 1))

    def loss_of(x, r):  # a different, row-coupling loss on every rank
        return (r + 1.0) * (x.sin() * x.sum(0)).sum() + x[r].pow(3).sum()

    x = full[rows].clone().requires_grad_(True)
    y = tdist.gather(x)
    assert torch.equal(y.detach(), full)
    loss_of(y, rank).backward()
    ref = full.clone().requires_grad_(True)
    sum(loss_of(ref, r) for r in range(world)).backward()
    torch.testing.assert_close(x.grad, ref.grad[rows], rtol=1e-12, atol=1e-12)


def _check_collectives_per_step(half, device):
    """One forward + backward of `global_batch_loss` with both directions and the CCA term:
    [shape check +] packed all-gather, one all-reduce of hinge sums and counts, one in backward."""
    rows = half.stop - half.start
    assert _collectives(half, device, None) == ["all_gather"] * 2 + ["all_reduce"] * 2
    assert _collectives(half, device, rows) == ["all_gather"] + ["all_reduce"] * 2


def _collectives(half, device, rows) -> list[str]:
    xa, xv, labels = _data()
    a = xa[half, :DV].to(device).requires_grad_(True)  # equal widths for the triplet term
    v = xv[half].to(device).requires_grad_(True)
    calls, saved = [], {name: getattr(dist, name) for name in COLLECTIVES}

    def counted(name):
        def call(*args, **kwargs):
            calls.append(name)
            return saved[name](*args, **kwargs)
        return call
    try:
        for name in COLLECTIVES:
            setattr(dist, name, counted(name))
        terms = tdist.global_batch_loss(a, v, labels[half].to(device), rows=rows,
                                        **_kwargs("both"))
        terms["total"].backward()
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)
    return calls


def _ddp_worker(rank, world, device):
    """Every config: DDP training through global_batch_loss; checks terms and first gradients."""
    xa, xv, labels = _data()
    results = {}
    for name in CONFIGS:
        kwargs, net, ref_net = _kwargs(name), _net(), _net()  # ref_net: outside DDP's hooks
        ddp = DistributedDataParallel(net)
        opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
        gen, epochs = torch.Generator().manual_seed(1), []
        for _ in range(EPOCHS):
            perm, sums = torch.randperm(ROWS, generator=gen), dict.fromkeys(TERM_KEYS, 0.0)
            for b in range(ROWS // BATCH):
                glob = perm[b * BATCH:(b + 1) * BATCH]  # (BATCH,) the single process's batch
                ref_net.load_state_dict(net.state_dict())
                want_terms, want_grads = _single_process_step(ref_net, xa[glob], xv[glob],
                                                              labels[glob], kwargs)
                idx = glob.view(world, -1)[rank]  # (BATCH / world,) this rank's half
                out = ddp(xa[idx], xv[idx])
                terms = tdist.global_batch_loss(out["audio_emb"], out["visual_emb"],
                                                labels[idx], rows=BATCH // world, **kwargs)
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                assert terms.keys() == want_terms.keys(), name
                for key, want in want_terms.items():
                    torch.testing.assert_close(terms[key].detach(), want, rtol=1e-10, atol=1e-12,
                                               msg=lambda m, key=key: f"{name} {key}: {m}")
                for p, want in zip(net.parameters(), want_grads):
                    torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-12,
                                               msg=lambda m: f"{name} gradient: {m}")
                opt.step()
                for key in TERM_KEYS:
                    sums[key] += float(terms[key].detach()) / (ROWS // BATCH)
            epochs.append(sums)
        results[name] = ({k: v.detach().clone() for k, v in net.state_dict().items()}, epochs)
    return results


def _single_process_step(net, xa, xv, labels, kwargs):
    """Terms and parameter gradients of `combined_loss` on the global batch (no step taken)."""
    out = net(xa, xv)
    terms = combined_loss(out["audio_emb"], out["visual_emb"], labels, **kwargs)
    grads = torch.autograd.grad(terms["total"], list(net.parameters()), allow_unused=True,
                                materialize_grads=True)
    return {k: v.detach() for k, v in terms.items()}, grads


class _ProxyModel(torch.nn.Module):
    """tnn-label's network without BatchNorm and dropout: two branches to unit rows, proxies."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        branch = BranchConfig(hidden=(8,), out_dim=4, dropout=0.0, activation="relu",
                              head_activation=False, final="l2")
        self.net = TwoBranchNet(DA, DV, branch, branch).double()
        self.proxies = torch.nn.Parameter(torch.randn(CLASSES, 4, dtype=torch.float64))

    def forward(self, xa, xv):
        return self.net(xa, xv)


PROXY_CONFIGS = {"default": dict(scale=16.0), "weighted": dict(scale=4.0, w_proxy=0.5,
                                                               w_triplet=2.0, margin=0.3),
                 "proxy_only": dict(scale=8.0, w_triplet=0.0)}


def _proxy_train(model, step_loss, batches):
    """Adam through `step_loss(model, batch) -> terms`; per-step terms and gradients."""
    opt, steps = torch.optim.Adam(model.parameters(), lr=1e-2), []
    for batch in batches:
        terms = step_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        steps.append(({k: float(terms[k].detach()) for k in ("total", "triplet", "proxy")},
                      [p.grad.detach().clone() for p in model.parameters()]))
        opt.step()
    return steps


def _global_batches():
    gen = torch.Generator().manual_seed(1)
    return [perm[b * BATCH:(b + 1) * BATCH] for perm in
            (torch.randperm(ROWS, generator=gen) for _ in range(EPOCHS))
            for b in range(ROWS // BATCH)]


def _proxy_worker(rank, world, device):
    """tnn-label's loss over the global batch: DDP on this rank's half of each global batch."""
    xa, xv, labels = _data()
    out = {}
    for name, kw in PROXY_CONFIGS.items():
        model = _ProxyModel()
        ddp = DistributedDataParallel(model)

        def step(_, glob):
            idx = glob.view(world, -1)[rank]  # this rank's half of the global batch
            emb = ddp(xa[idx], xv[idx])
            return global_proxy_loss(emb["audio_emb"], emb["visual_emb"], labels[idx],
                                     model.proxies, rows=BATCH // world, **kw)
        steps = _proxy_train(ddp, step, _global_batches())
        out[name] = (steps, {k: v.detach().clone() for k, v in model.state_dict().items()})
    return out


# --- tests -----------------------------------------------------------------------------------

def test_single_process_fallbacks():
    assert not tdist.is_initialized()
    assert (tdist.rank(), tdist.world_size(), tdist.is_main()) == (0, 1, True)
    tdist.barrier()
    x, labels = torch.randn(5, 3, requires_grad=True), torch.tensor([0, 1, 0, 1, 1])
    assert tdist.gather(x) is x and tdist.gather_labels(labels) is labels
    assert all(a is b for a, b in zip(tdist.gather_batch(labels, x, x), (labels, x, x)))
    stats = CCAStats.from_arrays(np.ones((3, 2)), np.zeros((3, 2)))
    assert tdist.all_reduce_stats(stats) is stats
    assert torch.equal(tdist.all_reduce_sum(x), x) and not tdist.all_reduce_sum(x).requires_grad
    assert tdist.backend_for("cpu") == "gloo" and tdist.backend_for("cuda:1") == "nccl"


@pytest.mark.parametrize("name", ["both", "hard_mean_excl"])
def test_global_batch_loss_is_combined_loss_in_one_process(name):
    a = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(8) % CLASSES
    got = tdist.global_batch_loss(a, v, labels, **_kwargs(name))
    want = combined_loss(a, v, labels, **_kwargs(name))
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert torch.equal(torch.autograd.grad(got["total"], (a, v))[0],
                       torch.autograd.grad(want["total"], (a, v))[0])


def test_world_of_one_process_group_is_identity(tmp_path):
    tdist.init_process_group_for("cpu", init_method=f"file://{tmp_path / 'store'}", rank=0,
                                 world_size=1, timeout_s=30)
    try:
        assert tdist.is_initialized() and tdist.world_size() == 1
        x = torch.randn(3, 2)
        assert tdist.gather(x) is x and torch.equal(tdist.all_reduce_sum(x), x)
        assert tdist.init_process_group_for("cpu") == "gloo"  # already running: a no-op
    finally:
        tdist.destroy_process_group()
    assert not tdist.is_initialized()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> list[dict]:
    return spawn(_groups_worker, tmp_path_factory.mktemp("workers"), timeout=150)


def _group(results: list[dict], name: str) -> list:
    for rank, result in enumerate(results):
        ok, value = result[name]
        assert ok, f"rank {rank} failed in {name}:\n{value}"
    return [result[name][1] for result in results]


def test_collectives_two_processes(two_workers):
    """Gather values and gradient, labels, sums, CCA statistics, and the unequal-batch errors."""
    assert _group(two_workers, "collectives") == [True, True]


def test_ddp_training_equals_single_process_run_epoch(two_workers):
    """2 gloo workers under DDP == 1 process running `run_epoch` on the global batches."""
    results = _group(two_workers, "ddp")
    xa, xv, labels = _data()
    failures = []
    for name in CONFIGS:
        net = _net()
        opt, gen = torch.optim.Adam(net.parameters(), lr=1e-2), torch.Generator().manual_seed(1)
        epochs = [run_epoch(net, opt, xa, xv, labels, BATCH, gen, _kwargs(name))
                  for _ in range(EPOCHS)]
        moved = max((net.state_dict()[k] - v).abs().max().item()
                    for k, v in _net().state_dict().items())
        assert moved > 1e-3, f"{name}: parameters barely moved ({moved})"
        for rank, result in enumerate(results):
            state, worker_epochs = result[name]
            err = max((state[k] - v).abs().max().item() for k, v in net.state_dict().items())
            if err > 1e-9:
                failures.append(f"{name} rank {rank}: parameters differ by {err:.2e}")
            for got, want in zip(worker_epochs, epochs):
                if any(abs(got[k] - want[k]) > 1e-10 for k in TERM_KEYS):
                    failures.append(f"{name} rank {rank}: epoch terms {got} vs {want}")
    assert not failures, "\n".join(failures)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for NCCL")
def test_gather_nccl(tmp_path):
    assert spawn(_nccl_worker, tmp_path, device="cuda") == [True, True]


def _nccl_worker(rank, world, device):
    assert tdist.world_size() == world and tdist.init_process_group_for(device) == "nccl"
    _check_gather_gradient(rank, world, device)
    labels = torch.arange(4 * world, device=device) % 3
    assert torch.equal(tdist.gather_labels(labels[4 * rank:4 * (rank + 1)]), labels)
    return True


def test_global_proxy_loss_is_proxy_loss_in_one_process():
    g = torch.Generator().manual_seed(3)
    a, v = (torch.nn.functional.normalize(torch.randn(8, 4, generator=g, dtype=torch.float64),
                                          dim=1).requires_grad_(True) for _ in range(2))
    proxies = torch.randn(CLASSES, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(8) % CLASSES
    got = global_proxy_loss(a, v, labels, proxies, 8.0, w_triplet=0.5)
    want = proxy_loss(a, v, labels, proxies, 8.0, w_triplet=0.5)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_ddp_proxy_loss_equals_one_process_on_the_global_batch(two_workers):
    """2 gloo workers, each with half of every global batch: the same loss terms, gradients
    (proxies included) and trained parameters as one process on the concatenated batches."""
    results = _group(two_workers, "proxy")
    xa, xv, labels = _data()
    worst = 0.0
    for name, kw in PROXY_CONFIGS.items():
        model = _ProxyModel()

        def step(m, glob):
            emb = m(xa[glob], xv[glob])
            return proxy_loss(emb["audio_emb"], emb["visual_emb"], labels[glob], m.proxies, **kw)
        want = _proxy_train(model, step, _global_batches())
        assert max(g.abs().max().item() for g in want[0][1]) > 0
        for rank, result in enumerate(results):
            steps, state = result[name]
            assert len(steps) == len(want)
            for (got_terms, got_grads), (want_terms, want_grads) in zip(steps, want):
                for key, value in want_terms.items():
                    assert got_terms[key] == pytest.approx(value, abs=1e-9), (name, rank, key)
                worst = max([worst] + [(g - w).abs().max().item()
                                       for g, w in zip(got_grads, want_grads)])
            err = max((state[k] - v).abs().max().item() for k, v in model.state_dict().items())
            assert err < 1e-6, f"{name} rank {rank}: parameters differ by {err:.2e}"
    print(f"tnn-label loss, 2 gloo processes vs 1: gradients differ by at most {worst:.1e}")
    assert worst < 1e-6, f"gradients differ by {worst:.2e}"
