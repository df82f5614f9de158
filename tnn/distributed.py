"""Global-batch losses under DDP: an all-gather that carries gradients, and the loss wrapper.

The only module of tnn that imports `torch.distributed`. Every helper falls back to one process
(identity, rank 0, world size 1) when the process group is not initialised or has one member.

Gradient scaling of `global_batch_loss` (W ranks with b rows each, global batch of N = W b rows).
The single-process loss on the global batch is
    L = w_t T + w_c C,   T = mean_d sum_r S_dr / N_d,
where S_dr is the hinge sum of direction d over rank r's anchors against all N refs, N_d the
global normaliser (triplet count for "mean", active count for "mean_positive", 1 for "sum";
detached) and C the cluster-CCA term of the whole batch. Rank r back-propagates
    L_r = W w_t mean_d S_dr / N_d + w_c C        (C computed on the gathered batch)
`gather`'s backward sums the incoming gradients over ranks, so rank r's parameter gradient is
d(sum_j L_j)/dtheta through its own rows; DDP averages the ranks, and sum_j L_j = W L gives
exactly dL/dtheta. Each anchor lives on one rank, hence the factor W on the triplet share; C is
computed identically on every rank, so it needs no factor. (With a plain all-gather whose
gradient stops at the local slice, the CCA term would instead need the factor W.)

Exact equality with one process also needs no dropout (each rank draws its own masks, equal
only in distribution) and no BatchNorm on local batches (use `torch.nn.SyncBatchNorm`).
"""
from __future__ import annotations

import dataclasses
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from tnn.cca import CCAStats
from tnn.errors import DataError
from tnn.losses import combined_loss


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes checkpoints and logs runs."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group_for(device: torch.device | str, *, init_method: str | None = None,
                           rank: int | None = None, world_size: int | None = None,
                           timeout_s: float | None = None) -> str:
    """Start the default process group (gloo on CPU, nccl on CUDA); returns the backend.

    A no-op when one is already running (Ray Train starts its own). ``None`` arguments are left
    to torch's ``env://`` variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE). A CUDA device
    without an index becomes ``cuda:$LOCAL_RANK``.
    """
    if is_initialized():
        return dist.get_backend()
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None
                              else int(os.environ.get("LOCAL_RANK", 0)))
    kwargs = {k: v for k, v in dict(init_method=init_method, rank=rank,
                                    world_size=world_size).items() if v is not None}
    if timeout_s is not None:
        kwargs["timeout"] = timedelta(seconds=timeout_s)
    dist.init_process_group(backend_for(device), **kwargs)
    return dist.get_backend()


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()


class _AllGather(torch.autograd.Function):
    """Forward: all ranks' rows concatenated in rank order. Backward: the incoming gradient of the
    whole (W b, ...) tensor summed over ranks, then this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return _all_gather(x)  # (W b, ...)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)  # (W b, ...)
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]  # (b, ...)


def gather(x: torch.Tensor) -> torch.Tensor:
    """(b, ...) local rows -> (W b, ...) rows of every rank in rank order, with gradients.

    The gradient reaching rank r's input is the gradient of the SUM of all ranks' losses with
    respect to rank r's rows (see the module docstring for what that means under DDP). Every
    rank must pass the same shape (equal batches: drop_last); a DataError says otherwise.
    """
    if world_size() == 1:
        return x
    _check_equal_shapes(x, "gather")
    return _AllGather.apply(x)


def gather_labels(y: torch.Tensor) -> torch.Tensor:
    """(b,) local labels -> (W b,) labels of every rank in rank order (no gradient)."""
    if world_size() == 1:
        return y
    _check_equal_shapes(y, "gather_labels")
    return _all_gather(y)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, detached (e.g. counts or metrics); ``x.detach()`` in one process."""
    out = x.detach().clone()
    if world_size() > 1:
        dist.all_reduce(out)
    return out


def all_reduce_stats(stats: CCAStats) -> CCAStats:
    """`CCAStats` summed over ranks (numpy or tensor fields, returned as given, no gradient).

    For the closed-form cluster-CCA fit: every rank adds its shard's statistics and solves the
    same problem. One float64 all-reduce; shards must agree in classes, dims and moments.
    """
    if world_size() == 1:
        return stats
    present = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)
               if getattr(stats, f.name) is not None}
    flat = torch.cat([torch.as_tensor(v, dtype=torch.float64).reshape(-1).to(_comm_device())
                      for v in present.values()])  # (sum of field sizes,)
    shapes = _all_gather(torch.tensor([flat.numel(), len(present)], device=flat.device))
    if not (shapes.view(-1, 2) == shapes[:2]).all():
        raise DataError(f"all_reduce_stats: ranks hold statistics of different sizes "
                        f"(size, fields per rank: {shapes.view(-1, 2).tolist()}); use the same "
                        "num_classes, dims and per_class_moments on every rank")
    dist.all_reduce(flat)
    out, start = {}, 0
    for name, value in present.items():
        size = torch.as_tensor(value).numel()
        out[name] = _like(flat[start:start + size], value)
        start += size
    return CCAStats(**out)


def global_batch_loss(audio_emb: torch.Tensor, visual_emb: torch.Tensor, labels: torch.Tensor,
                      **loss_kwargs) -> dict[str, torch.Tensor]:
    """`tnn.losses.combined_loss` of the global batch: local anchors against the gathered refs.

    audio_emb, visual_emb (b, D) and labels (b,) are this rank's rows; ``loss_kwargs`` as for
    `combined_loss` (e.g. `tnn.pipelines.loss_kwargs`). Returns the same keys. Every value
    equals the single-process value on the concatenated global batch, on every rank (counts
    and fractions too). ``"total"``, ``"triplet"`` and ``"cca"`` carry this rank's gradient
    L_r (module docstring): after DDP's averaging, ``total.backward()`` gives the gradient of
    the single-process loss. One process: exactly `combined_loss`.
    """
    w, b, dims = world_size(), labels.shape[0], [audio_emb.shape[1], visual_emb.shape[1]]
    if w == 1:
        return combined_loss(audio_emb, visual_emb, labels, **loss_kwargs)
    both = gather(torch.cat([audio_emb, visual_emb], dim=1))  # (W b, Da + Dv): one collective
    ref_audio, ref_visual = both.split(dims, dim=1)  # (W b, Da), (W b, Dv)
    self_index = rank() * b + torch.arange(b, device=labels.device)  # (b,) own pair's ref row
    w_triplet = loss_kwargs.pop("w_triplet", 1.0)
    out = combined_loss(audio_emb, visual_emb, labels, ref_audio_emb=ref_audio,
                        ref_visual_emb=ref_visual, ref_labels=gather_labels(labels),
                        self_index=self_index, w_triplet=w * w_triplet,
                        reduce_counts=all_reduce_sum, **loss_kwargs)
    # Each local term below sums over ranks to W times its global value.
    local = {"total": out["total"], "cca": out["cca"],
             **{k: w * out[k] for k in out if k.startswith("triplet")}}
    values = all_reduce_sum(torch.stack([t.detach() for t in local.values()])) / w
    for (key, term), value in zip(local.items(), values):  # global value, this rank's gradient
        out[key] = term + (value - term).detach() if term.requires_grad else value
    return out


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)  # (W b, ...)


def _check_equal_shapes(x: torch.Tensor, what: str) -> None:
    if x.ndim == 0:
        raise DataError(f"{what} needs a tensor of rows, got a 0-d tensor")
    info = torch.tensor([x.ndim, x.shape[0], x.shape[1:].numel()], device=x.device)
    shapes = _all_gather(info).view(-1, 3)  # (W, 3)
    if not (shapes == info).all():
        raise DataError(f"{what}: ranks hold different batch shapes (ndim, rows, row size per "
                        f"rank: {shapes.tolist()}); every rank needs an equal batch "
                        "(drop_last=True and an equal split of the data)")


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _like(flat: torch.Tensor, value):
    """``flat`` (float64) in the type, shape, dtype and device of ``value``."""
    if isinstance(value, torch.Tensor):
        return flat.view(value.shape).to(dtype=value.dtype, device=value.device)
    if isinstance(value, (int, float)):
        return type(value)(flat.item())
    return flat.view(tuple(value.shape)).cpu().numpy()
