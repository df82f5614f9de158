"""Miners against explicit loops over every (a, p, n) (tests/reference/triplets.py)."""

import pytest
import torch

from tests.reference import triplets as ref
from tnn.errors import ConfigError, DataError
from tnn.core.mining import batch_all, batch_hard, mine, pair_masks, semi_hard

LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 1, 1, 0, 1])  # class 2 has a single item
DTYPES = [torch.float64, torch.float32]
KINDS = ["sqeuclidean", "cosine"]


def embeddings(dtype=torch.float64, n=len(LABELS), dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    visual = 0.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return audio.to(dtype), visual.to(dtype)


def as_list(trip):
    a, p, n = trip
    assert a.dtype == p.dtype == n.dtype == torch.long and len(a) == len(p) == len(n)
    return list(zip(a.tolist(), p.tolist(), n.tolist()))


@pytest.mark.parametrize("exclude", [False, True])
def test_batch_all_matches_loops(exclude):
    got = as_list(batch_all(LABELS, LABELS, exclude))
    assert got == ref.valid_triplets(LABELS, LABELS, exclude)
    assert got  # the tiny batch does have triplets


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_batch_all_only_violating_matches_loops(dtype, kind):
    q, r = embeddings(dtype)
    got = as_list(batch_all(LABELS, LABELS, True, q, r, 0.3, only_violating=True, distance=kind))
    want = ref.batch_all(q, LABELS, r, LABELS, 0.3, kind, True, only_violating=True)
    assert got == want
    assert 0 < len(want) < len(ref.valid_triplets(LABELS, LABELS, True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("negatives", ["all", "one"])
def test_semi_hard_matches_loops(dtype, kind, exclude, negatives):
    q, r = embeddings(dtype)
    got = semi_hard(LABELS, LABELS, exclude, q, r, 0.5, distance=kind, negatives=negatives)
    assert as_list(got) == ref.semi_hard(q, LABELS, r, LABELS, 0.5, kind, exclude, None, negatives)
    assert len(got[0]) > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("exclude", [False, True])
def test_batch_hard_matches_loops(dtype, kind, exclude):
    q, r = embeddings(dtype)
    got = as_list(batch_hard(LABELS, LABELS, exclude, q, r, distance=kind))
    assert got == ref.batch_hard(q, LABELS, r, LABELS, kind, exclude)
    # the singleton class has no positive once its own pair is excluded
    assert (3 in [a for a, _, _ in got]) == (not exclude)


def test_own_pair_is_a_positive_unless_excluded():
    kept = set(as_list(batch_all(LABELS, LABELS, False)))
    dropped = set(as_list(batch_all(LABELS, LABELS, True)))
    own = {(a, p, n) for a, p, n in kept if a == p}
    assert own and kept - dropped == own
    pos, _ = pair_masks(LABELS, LABELS, exclude_self_pair=False)
    assert pos.diagonal().all()


@pytest.mark.parametrize("chunk_size", [1, 3, 7])
def test_chunked_mining_equals_unchunked(chunk_size):
    q, r = embeddings()
    assert as_list(batch_all(LABELS, LABELS, True, chunk_size=chunk_size)) == \
        as_list(batch_all(LABELS, LABELS, True))
    for negatives in ("all", "one"):
        kw = dict(negatives=negatives)
        assert as_list(semi_hard(LABELS, LABELS, False, q, r, 0.5, chunk_size=chunk_size, **kw)) \
            == as_list(semi_hard(LABELS, LABELS, False, q, r, 0.5, **kw))


@pytest.mark.parametrize("miner", [batch_all, semi_hard, batch_hard])
@pytest.mark.parametrize("exclude", [False, True])
def test_subset_of_queries_against_all_refs(miner, exclude):
    # local anchors against a bigger (gathered) ref set: the own pair of query i is ref rows[i]
    q, r = embeddings()
    rows = torch.tensor([2, 3, 5, 9])
    full = as_list(miner(LABELS, LABELS, exclude, q, r, 0.5))
    sub = as_list(miner(LABELS[rows], LABELS, exclude, q[rows], r, 0.5, self_index=rows))
    restricted = [(rows.tolist().index(a), p, n) for a, p, n in full if a in rows.tolist()]
    assert sub == restricted and sub


def test_self_index_errors():
    with pytest.raises(ConfigError, match="self_index"):
        batch_all(LABELS[:4], LABELS, True)
    with pytest.raises(DataError, match="shape"):
        batch_all(LABELS[:4], LABELS, True, self_index=torch.arange(3))
    with pytest.raises(DataError, match="lie in"):
        batch_all(LABELS[:4], LABELS, True, self_index=torch.tensor([0, 1, 2, 10]))
    assert as_list(batch_all(LABELS[:4], LABELS, False))  # not needed when self pairs are kept


@pytest.mark.parametrize("miner", [batch_all, semi_hard, batch_hard])
@pytest.mark.parametrize("labels,exclude", [(torch.zeros(6, dtype=torch.long), False),
                                            (torch.arange(6), True)])
def test_no_valid_triplet_gives_empty_indices(miner, labels, exclude):
    q, r = embeddings(n=6)
    for t in miner(labels, labels, exclude, q, r, 0.5):
        assert t.dtype == torch.long and t.shape == (0,)


def test_mine_directions():
    audio, visual = embeddings()
    audio.requires_grad_(True)
    out = mine("batch_hard", audio, visual, LABELS, ("a2v", "v2a"), exclude_self_pair=True)
    assert set(out) == {"a2v", "v2a"}
    assert as_list(out["a2v"]) == ref.batch_hard(audio, LABELS, visual, LABELS, "sqeuclidean", True)
    assert as_list(out["v2a"]) == ref.batch_hard(visual, LABELS, audio, LABELS, "sqeuclidean", True)
    assert not any(t.requires_grad for t in out["a2v"])
    only = mine(batch_all, audio, visual, LABELS)
    assert list(only) == ["a2v"] and as_list(only["a2v"]) == ref.valid_triplets(LABELS, LABELS)
    with pytest.raises(ConfigError, match="directions"):
        mine("batch_all", audio, visual, LABELS, directions=("a2b",))
    with pytest.raises(ConfigError, match="unknown miner"):
        mine("hardest", audio, visual, LABELS)


def test_miner_argument_errors():
    q, r = embeddings()
    with pytest.raises(ConfigError, match="needs q_emb"):
        batch_hard(LABELS, LABELS)
    with pytest.raises(ConfigError, match="margin"):
        semi_hard(LABELS, LABELS, False, q, r)
    with pytest.raises(ConfigError, match="negatives"):
        semi_hard(LABELS, LABELS, False, q, r, 0.5, negatives="some")
    with pytest.raises(DataError, match="disagree"):
        batch_hard(LABELS, LABELS, False, q[:5], r)
