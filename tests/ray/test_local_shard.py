"""tnn.ray.local_shard without Ray: a fake shard with `iter_torch_batches` stands for the
Train worker's DataIterator."""

from __future__ import annotations

import pytest
import torch

from tnn.errors import ConfigError
from tnn.ray import local_shard as ls


class FakeShard:
    """Rows 0..n-1 (a `row` column and a (n, 3) `audio` column); counts its reads."""

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def iter_torch_batches(self, batch_size, device="cpu", **streaming):
        self.reads += 1
        self.streaming = streaming
        rows = torch.arange(self.n)
        for start in range(0, self.n, batch_size):
            r = rows[start:start + batch_size]
            yield {"row": r, "audio": torch.stack([r, r * 2, r * 3], 1).float()}


def test_an_epoch_deals_every_row_once_in_a_seeded_permutation():
    shard = ls.LocalShard.load(FakeShard(10_000))  # 3 load batches of LOAD_ROWS
    assert shard.rows == 10_000 and shard.columns["audio"].shape == (10_000, 3)
    epoch = list(shard.batches(256, seed=7))
    assert [len(b["row"]) for b in epoch] == [256] * 39  # the partial batch dropped
    seen = torch.cat([b["row"] for b in epoch])
    assert len(set(seen.tolist())) == 39 * 256  # no row twice
    for b in epoch:  # the columns stay aligned
        assert torch.equal(b["audio"][:, 1], 2 * b["row"].float())
    again = torch.cat([b["row"] for b in shard.batches(256, seed=7)])
    other = torch.cat([b["row"] for b in shard.batches(256, seed=8)])
    assert torch.equal(seen, again) and not torch.equal(seen, other)
    assert not torch.equal(seen, torch.sort(seen).values)  # shuffled, not in order
    full = torch.cat([b["row"] for b in shard.batches(256, seed=7, drop_last=False)])
    assert sorted(full.tolist()) == list(range(10_000))


def test_the_shard_is_read_once_and_streaming_keeps_the_buffer():
    fake, held = FakeShard(1000), {"local": True}
    for epoch in range(3):
        rows = [b["row"] for b in ls.epoch_batches(held, fake, 100, epoch, "cpu", 64)]
        assert sum(len(r) for r in rows) == 1000
    assert fake.reads == 1
    stream = FakeShard(1000)
    list(ls.epoch_batches({"local": False}, stream, 100, 5, "cpu", 64))
    assert stream.reads == 1 and stream.streaming == {
        "drop_last": True, "local_shuffle_buffer_size": 64, "local_shuffle_seed": 5}
    list(ls.epoch_batches({"local": False}, stream, 100, 5, "cpu", 0))
    assert stream.streaming["local_shuffle_buffer_size"] is None
    assert stream.streaming["local_shuffle_seed"] is None


@pytest.mark.parametrize("mode, world, shuffle, available, want", [
    ("auto", 1, "epoch", 10**9, True),    # one worker sees every row whatever the dealing
    ("auto", 2, "epoch", 10**9, False),   # ranks get new rows every epoch: stream
    ("auto", 2, "once", 10**9, True),     # each rank keeps its rows
    ("auto", 2, "local", 10**9, False),
    ("never", 1, "epoch", 10**9, False),
    ("auto", 1, "epoch", 3 * 10**6, False),  # 1e6 bytes > a quarter of 3e6
    ("auto", 2, "once", 2 * 10**6, True),    # 5e5 bytes per rank <= a quarter of 2e6
])
def test_when_the_shard_is_held(mode, world, shuffle, available, want):
    assert ls.use_local(mode, world, shuffle, rows=1000, row_bytes=1000,
                        available=available) is want


def test_the_holder_counts_float32_features_and_16_bytes_a_row(monkeypatch):
    monkeypatch.setattr(ls, "available_memory", lambda: 4 * 1000 * (4 * 30 + 16))
    assert ls.holder("auto", 1, "epoch", 1000, (10, 20)) == {"local": True}
    assert ls.holder("auto", 1, "epoch", 1001, (10, 20)) == {"local": False}


def test_unknown_memory_streams_and_a_bad_mode_is_named(monkeypatch):
    monkeypatch.setattr(ls, "available_memory", lambda: None)
    assert ls.use_local("auto", 1, "epoch", 10, 10) is False
    with pytest.raises(ConfigError, match="shard_in_memory='always'"):
        ls.use_local("always", 1, "epoch", 10, 10)
    with pytest.raises(ValueError, match="unequal"):
        ls.LocalShard({"a": torch.zeros(3), "b": torch.zeros(4)})
    assert list(ls.LocalShard.load(FakeShard(0)).batches(8, 0)) == []


class Pairs2(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.v = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)

    def forward(self, audio, visual):
        return {"audio_emb": self.a(audio), "visual_emb": self.v(visual)}


class LabelledShard(FakeShard):
    def iter_torch_batches(self, batch_size, device="cpu", **streaming):
        for b in super().iter_torch_batches(batch_size, device, **streaming):
            audio = b["audio"] / self.n  # features of order 1
            yield {**b, "audio": audio, "visual": audio.flip(1).sin(), "label": b["row"] % 5}


def test_train_epoch_reads_a_held_shard_once_and_streams_otherwise():
    from tnn.ray.train_loop import train_epoch
    torch.manual_seed(0)
    model = Pairs2()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    held, shard = {"local": True}, LabelledShard(200)
    for epoch in (1, 2, 3):
        seen = []
        out = train_epoch(model, opt, shard, {}, 32, (0, epoch, 0), 64, "cpu", seen, held)
        assert out["steps"] == 6 and len(set(torch.cat([torch.as_tensor(r) for r in seen])
                                             .tolist())) == 192
        assert out["first_batch_s"] >= 0
        assert 0 < out["train_cpu_s"] < out["train_s"] + 0.5  # this process's CPU in the epoch
    assert shard.reads == 1  # read once, then permuted in memory
    stream = LabelledShard(200)
    for epoch in (1, 2):
        train_epoch(model, opt, stream, {}, 32, (0, epoch, 0), 64, "cpu", None, None)
    assert stream.reads == 2 and stream.streaming["local_shuffle_buffer_size"] == 64
