"""tnn.data.batches: Arrow <-> numpy for shard batches."""

import numpy as np

from tnn.data.batches import as_arrays


def test_as_arrays():
    batch = {"audio": np.empty(2, dtype=object), "label": np.array([1, 2], np.int32)}
    batch["audio"][0], batch["audio"][1] = np.ones(3), np.zeros(3)  # rows as object arrays
    out = as_arrays(batch)
    assert out["audio"].shape == (2, 3) and out["audio"].dtype == np.float32
    assert out["label"].dtype == np.int64
