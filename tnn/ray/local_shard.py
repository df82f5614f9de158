"""A Train worker's fit shard held in its own memory, when that changes nothing but speed.

Every epoch of `DataIterator.iter_torch_batches` starts a new Ray Data execution: on this
machine 0.35-0.6 s before the first batch (bench/train_scaling, `first_batch_s`), ~10-15 % of
an epoch of 16k VEGAS-width clips, plus the formatting threads that run beside the training
step. When a rank's rows are the same every epoch, that work is repeated for nothing: the
worker reads its shard once (CPU tensors), then each epoch is a seeded permutation of those
rows, as `tnn.methods.tnn.run_epoch` does in one process (a full shuffle, wider than the local
shuffle buffer).

The rows stay the same when there is one worker (it sees the whole fit set whatever the
dealing), or with `shuffle="once"` (each rank keeps its rows by design). With several workers
and `shuffle="epoch"` the ranks get new rows every epoch, so the shard keeps streaming.
`shard_in_memory="never"` always streams; "auto" (default) also streams when the shard would
take more than `MEMORY_SHARE` of the memory this node has available.
"""

from __future__ import annotations

from typing import Iterator

import torch

from tnn.data.reader import available_memory
from tnn.errors import ConfigError

MODES = ("auto", "never")
MEMORY_SHARE = 0.25
LOAD_ROWS = 4096  # rows per batch while the shard is read once


def keeps_rows(world: int, shuffle: str) -> bool:
    """Whether a rank sees the same rows every epoch (see the module docstring)."""
    return world == 1 or shuffle == "once"


def use_local(mode: str, world: int, shuffle: str, rows: int, row_bytes: int,
              available: int | None = None) -> bool:
    """Hold this rank's shard in memory? `rows`: the whole fit set's rows (a rank holds about
    rows / world); `available`: bytes this node can still allocate (None: read it; unknown
    memory streams)."""
    if mode not in MODES:
        raise ConfigError(f"shard_in_memory={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "never" or not keeps_rows(world, shuffle):
        return False
    have = available_memory() if available is None else available
    return have is not None and rows * row_bytes / world <= MEMORY_SHARE * have


class LocalShard:
    """One rank's rows as CPU tensors (column -> (n, ...)); `batches` deals an epoch."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        sizes = {len(v) for v in columns.values()}
        if len(sizes) > 1:
            raise ValueError(f"columns of unequal length: {sorted(sizes)}")
        self.columns, self.rows = columns, sizes.pop() if sizes else 0

    @classmethod
    def load(cls, shard) -> "LocalShard":
        """Read a `DataIterator` (anything with `iter_torch_batches`) once, in order."""
        parts = list(shard.iter_torch_batches(batch_size=LOAD_ROWS, device="cpu"))
        if not parts:
            return cls({})
        return cls({k: torch.cat([p[k] for p in parts]) for k in parts[0]})

    def batches(self, batch_size: int, seed: int, device: torch.device | str = "cpu",
                drop_last: bool = True) -> Iterator[dict[str, torch.Tensor]]:
        """The rows in a permutation drawn from `seed`, `batch_size` at a time (the last
        partial batch dropped with `drop_last`), each column moved to `device`."""
        if not self.columns:
            return
        perm = torch.randperm(self.rows, generator=torch.Generator().manual_seed(seed))
        stop = self.rows - self.rows % batch_size if drop_last else self.rows
        for start in range(0, stop, batch_size):
            idx = perm[start:start + batch_size]
            yield {k: v[idx].to(device, non_blocking=True) for k, v in self.columns.items()}


def holder(mode: str, world: int, shuffle: str, rows: int, dims) -> dict:
    """A worker's state for `epoch_batches`: {"local": whether to hold its shard}. `rows`: the
    fit set's; `dims`: the network's input widths (float32), plus 16 bytes a row (label, id)."""
    return {"local": use_local(mode, world, shuffle, rows, 4 * sum(dims) + 16)}


def epoch_batches(holder: dict, shard, batch_size: int, seed: int, device,
                  shuffle_buffer: int) -> Iterator[dict[str, torch.Tensor]]:
    """This epoch's batches: from the shard held in `holder["shard"]` (read on first use) when
    `holder["local"]`, else streamed from the Ray shard with its local shuffle buffer."""
    if holder["local"]:
        if "shard" not in holder:
            holder["shard"] = LocalShard.load(shard)
        return holder["shard"].batches(batch_size, seed, device)
    return shard.iter_torch_batches(batch_size=batch_size, drop_last=True, device=device,
                                    local_shuffle_buffer_size=shuffle_buffer or None,
                                    local_shuffle_seed=seed if shuffle_buffer else None)
