"""Querying an embedding index with raw features: embedded by a registered encoder first.

`query` is the Python API behind `jobs.query`: the features are embedded by the model's branch
of their modality (`tnn.tracking.registry.load_encoders`; default: the model that built the
index, `runs:/RUN_ID` of its manifest), then searched by `tnn.serve.query.search`, which
refuses an encoder other than the index's (another run, or other versions).
"""

from __future__ import annotations

import numpy as np

from tnn.errors import DataError
from tnn.serve import query as serve_query
from tnn.serve import search as retrieval
from tnn.tracking import registry


def embed_queries(x: np.ndarray, modality: str, model_uri: str, tracking_uri: str | None,
                  where: str = "queries") -> tuple[np.ndarray, dict]:
    """Raw features -> unit embeddings with the `modality` branch of `model_uri`; also the
    model's info (for the index's model check)."""
    enc = registry.load_encoders(model_uri, tracking_uri=tracking_uri)
    branch = getattr(enc, modality)
    if branch.in_dim is not None and x.shape[1] != branch.in_dim:
        raise DataError(f"{where}: {modality} features have width {x.shape[1]}; the "
                        f"{modality} encoder of {retrieval.describe_model(enc.info)} takes "
                        f"{branch.in_dim}")
    return np.asarray(branch.predict(x), np.float32), enc.info


def query(index_uri: str, x: np.ndarray, modality: str, k: int = 10, *,
          model_uri: str | None = None, embedded: bool = False, approx: bool = False,
          nprobe: int = 32, stream: bool = False, tracking_uri: str | None = None,
          where: str = "queries") -> retrieval.Hits:
    """The Python API: top k of the other modality for query rows `x` of `modality`.

    Raw features are embedded with the encoder of `model_uri` (default: the model that built
    the index); `embedded`: `x` holds embeddings already (no model is loaded or checked)."""
    man = serve_query.open_index(index_uri, modality, k)
    model = None
    if not embedded:
        model_uri = model_uri or f"runs:/{man.model.get('run_id')}"
        x, model = embed_queries(x, modality, model_uri, tracking_uri, where)
    return serve_query.search(index_uri, x, modality, k, model=model, approx=approx,
                              nprobe=nprobe, stream=stream, man=man)


def write_index(model_uri: str, data: str, out: str, *, tracking_uri: str | None = None,
                overwrite: bool = False, rows_per_shard: int = 200_000):
    """A small gallery (`load_source(data)`) embedded in this process by `model_uri` and written
    as an index at `out` (`jobs.embed` does the same with Ray Data, for galleries of any size);
    returns its manifest."""
    from tnn.data.sources import load_source
    from tnn.serve.index import EmbeddingWriter
    enc = registry.load_encoders(model_uri, tracking_uri=tracking_uri)
    p = load_source(data)
    with EmbeddingWriter(out, model=enc.info, source=data, class_names=p.class_names,
                         rows_per_shard=rows_per_shard, overwrite=overwrite) as writer:
        writer.write(p.clip_ids, p.labels, enc.audio.predict(p.audio),
                     enc.visual.predict(p.visual))
    return writer.manifest
