"""Arrow <-> numpy for shard batches: vector columns as (B, D) float32 matrices.

`tensor_columns` turns the shards' fixed-size-list vectors into Arrow `fixed_shape_tensor`
columns over the same buffers (what Ray Data hands out as ndarrays); `table_to_numpy` and
`as_arrays` give numpy batches with fixed dtypes. Plain functions, no Ray; pyarrow is
imported lazily.
"""

from __future__ import annotations

import numpy as np

from tnn.data import shards


def tensor_columns(table):
    """Fixed-size-list vector columns -> Arrow `fixed_shape_tensor` over the same buffers.

    No copy (the tensor type's storage is the fixed-size list), and Ray Data hands such
    columns out as (B, D) float32 ndarrays / torch tensors instead of object arrays of rows.
    """
    import pyarrow as pa
    for i, field in enumerate(table.schema):
        if field.name in shards.VECTORS and pa.types.is_fixed_size_list(field.type):
            size = field.type.list_size
            kind = pa.fixed_shape_tensor(field.type.value_type, [size])
            # re-wrapped because the tensor type's storage has a nullable child (still no copy)
            chunks = [pa.ExtensionArray.from_storage(kind, pa.FixedSizeListArray.from_arrays(
                c.flatten(), size)) for c in table[i].chunks]
            table = table.set_column(i, field.name, pa.chunked_array(chunks, kind))
    return table


def table_to_numpy(table) -> dict[str, np.ndarray]:
    """An Arrow batch (lists or tensor columns) -> numpy: vectors (B, D) float32."""
    return as_arrays({name: shards.matrix(table[name]) if name in shards.VECTORS
                      else table[name].to_numpy() for name in table.column_names})


def as_arrays(batch: dict) -> dict[str, np.ndarray]:
    """Normalise a numpy batch: vectors (B, D) float32 (object arrays of rows are stacked),
    `label` int64, `fold` int8; other columns unchanged."""
    out = dict(batch)
    for col in shards.VECTORS:
        if col in out:
            x = out[col]
            x = np.stack(list(x)) if x.dtype == object else x
            out[col] = np.ascontiguousarray(x, dtype=np.float32)
    if "label" in out:
        out["label"] = np.asarray(out["label"], np.int64)
    if "fold" in out:
        out["fold"] = np.asarray(out["fold"], np.int8)
    return out
