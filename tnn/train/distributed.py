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

Communication per training step (W > 1), latency-bound at the usual batch sizes: ONE
all-gather of the packed rows [label | audio | visual] (`gather_batch`), ONE all-reduce of every
direction's hinge sum and counts (the global normalisers and values at once), and in the
backward one all-reduce of the gathered gradient; then DDP's bucketed all-reduce of the
parameter gradients. Unless the caller passes the agreed local batch (``rows``), a small
all-gather of the shapes comes first.

Exact equality with one process also needs no dropout (each rank draws its own masks, equal
only in distribution) and no BatchNorm on local batches (use `torch.nn.SyncBatchNorm`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from tnn.core.cca import CCAStats
from tnn.core.losses import REDUCTIONS, combined_loss
from tnn.core.mining import check_directions
from tnn.errors import ConfigError, DataError


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


def gather(x: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """(b, ...) local rows -> (W b, ...) rows of every rank in rank order, with gradients.

    The gradient reaching rank r's input is the gradient of the SUM of all ranks' losses with
    respect to rank r's rows (see the module docstring for what that means under DDP). Every
    rank must pass the same shape (equal batches: drop_last); a DataError says otherwise, after
    an all-gather of the shapes. ``rows``: the row count that every rank holds by construction
    (e.g. the configured local batch, with row widths fixed by one network); it is checked on
    this rank alone, which saves that collective. A rank that fails this check raises the
    DataError; the others then fail in their next collective.
    """
    if world_size() == 1:
        return x
    if rows is None:
        _check_equal_shapes(x, "gather")
    elif x.ndim == 0 or x.shape[0] != rows:
        raise DataError(f"gather: rank {rank()} holds {tuple(x.shape)}, expected {rows} rows; "
                        "every rank needs an equal batch (drop_last=True and an equal split)")
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


def gather_batch(labels: torch.Tensor, audio_emb: torch.Tensor, visual_emb: torch.Tensor,
                 rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's labels (b,) and embeddings (b, Da), (b, Dv) -> the global batch (W b,),
    (W b, Da), (W b, Dv) in rank order; the embeddings carry gradients as in `gather`.

    One all-gather of packed rows [label | audio | visual] (after `gather`'s shape check, a
    local one with ``rows``). The labels travel as floats of at least float32: exact for class
    indices below 2^24.
    """
    if world_size() == 1:
        return labels, audio_emb, visual_emb
    dtype = torch.promote_types(torch.promote_types(audio_emb.dtype, visual_emb.dtype),
                                torch.float32)
    packed = torch.cat([labels.to(audio_emb.device, dtype)[:, None], audio_emb.to(dtype),
                        visual_emb.to(dtype)], dim=1)  # (b, 1 + Da + Dv)
    full = gather(packed, rows)  # (W b, 1 + Da + Dv)
    ref_audio, ref_visual = full[:, 1:].split([audio_emb.shape[1], visual_emb.shape[1]], dim=1)
    return (full[:, 0].detach().long(), ref_audio.to(audio_emb.dtype),
            ref_visual.to(visual_emb.dtype))


def global_batch_loss(audio_emb: torch.Tensor, visual_emb: torch.Tensor, labels: torch.Tensor, *,
                      directions: Sequence[str] = ("a2v",), w_triplet: float = 1.0,
                      w_cca: float = 0.0, cca: Callable[..., torch.Tensor] | None = None,
                      cca_kwargs: Mapping | None = None, reduction: str = "mean",
                      rows: int | None = None, **triplet_kwargs) -> dict[str, torch.Tensor]:
    """`tnn.core.losses.combined_loss` of the global batch: local anchors against the gathered refs.

    audio_emb, visual_emb (b, D) and labels (b,) are this rank's rows; the keywords are
    `combined_loss`'s (e.g. `tnn.methods.tnn.loss_kwargs`). Returns the same keys. Every value
    equals the single-process value on the concatenated global batch, on every rank (counts
    and fractions too). ``"total"``, ``"triplet"`` and ``"cca"`` carry this rank's gradient
    L_r (module docstring): after DDP's averaging, ``total.backward()`` gives the gradient of
    the single-process loss. One process: exactly `combined_loss`.

    It calls `combined_loss` once per direction and normalises the hinge sums globally. Two
    collectives in the forward pass: the packed all-gather (`gather_batch`; ``rows`` as in
    `gather`, else a shape check first) and ONE all-reduce of every direction's hinge sum and
    counts, which gives both the global normalisers and the global values; the backward adds
    one all-reduce.
    """
    if world_size() == 1:
        return combined_loss(audio_emb, visual_emb, labels, directions=directions,
                             w_triplet=w_triplet, w_cca=w_cca, cca=cca, cca_kwargs=cca_kwargs,
                             reduction=reduction, **triplet_kwargs)
    check_directions(directions)
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    w, b = world_size(), labels.shape[0]
    ref_labels, ref_audio, ref_visual = gather_batch(labels, audio_emb, visual_emb, rows)
    self_index = rank() * b + torch.arange(b, device=ref_labels.device)  # (b,) own pair's ref row
    labels = ref_labels[self_index]  # (b,) on the embeddings' device
    # hinge SUMS per direction (normalisers are global); the CCA term with the last direction, so
    # autograd adds the gradients in one process's order
    local = {d: combined_loss(audio_emb, visual_emb, labels, ref_audio_emb=ref_audio,
                              ref_visual_emb=ref_visual, ref_labels=ref_labels,
                              self_index=self_index, directions=(d,), w_triplet=1.0,
                              w_cca=w_cca if i == len(directions) - 1 else 0.0, cca=cca,
                              cca_kwargs=cca_kwargs, reduction="sum", **triplet_kwargs)
             for i, d in enumerate(directions)}
    out, shares = _normalised(local, reduction)
    triplet = torch.stack([out[f"triplet_{d}"] for d in directions]).mean()  # global value
    share = w * torch.stack(shares).mean()  # sums over ranks to W times the triplet term
    cca_term = local[directions[-1]]["cca"]  # the same batch, hence value, on every rank: no factor
    total = w_triplet * triplet + w_cca * cca_term.detach()
    return {"total": _valued(w_triplet * share + w_cca * cca_term, total),
            "triplet": _valued(share, triplet), "cca": cca_term, **out}


def _normalised(local: dict, reduction: str) -> tuple[dict, list]:
    """Per direction d, from this rank's `combined_loss` hinge sums: ONE all-reduce of every
    direction's (hinge sum, triplets, active triplets); the global values and counts, and this
    rank's share S_dr / N_d (with its gradient)."""
    keys = ("triplet", "num_triplets", "num_active")
    sums = all_reduce_sum(torch.stack([  # (dirs, 3): global hinge sums and counts
        torch.stack([res[f"{k}_{d}"].double() for k in keys]) for d, res in local.items()]))
    out, shares = {}, []
    for (d, res), (hinge, n_trip, n_act) in zip(local.items(), sums):
        denom = {"mean": n_trip, "mean_positive": n_act, "sum": torch.ones_like(n_trip)}
        denom = denom[reduction].clamp_min(1)
        term = res["triplet"]  # this rank's hinge sum of direction d, with its gradient
        shares.append(term / denom.to(term.dtype))  # this rank's share of the mean
        out.update({f"triplet_{d}": (hinge / denom).to(term.dtype),
                    f"num_triplets_{d}": n_trip.long(), f"num_active_{d}": n_act.long(),
                    f"frac_active_{d}": (n_act / n_trip.clamp_min(1)).float()})
    return out, shares


def _valued(term: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, ``term``'s gradient in the backward."""
    return term + (value - term).detach() if term.requires_grad else value


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
