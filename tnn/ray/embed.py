"""Embedding a gallery with a registered model into an index of Parquet embedding shards.

Ray Data streams the feature shards (`tnn.ray.dataset.dataset`; or an in-memory source such as
`uci-mfeat`) through `map_batches` into actors (`EncoderActor`) that each run the model's two
exported branches; the driver writes the embedded batches as they arrive
(`tnn.serve.index.EmbeddingWriter`: atomic shards, the manifest last, naming the model name,
alias, version and run) and prints progress (rows / total, clips/s, time left) every
`PROGRESS_SECONDS`. Memory depends on the batch size and the object-store cap
(`EmbedConfig.object_store_mib`, blocks in flight), not on the gallery size. The driver alone
talks to MLflow: it resolves the model URI once, loads the model
(`tnn.tracking.registry.load_encoders`) and ships its two branches to the actors as
`torch.export` programs (`programs`: weights and graph, no tracking URI, no credentials), so
every actor runs the version resolved at start. `embed` does all of it; `jobs.embed` is its
command line. Ray is imported inside the functions, so `embed_batch` and the config are usable
without it.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from tnn.errors import ConfigError, DataError
from tnn.ray.progress import clock
from tnn.serve import index as embedding_shards
from tnn.serve.search import describe_model
from tnn.tracking import registry
from tnn.tracking import runs as tracking

PROGRESS_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    model: str
    """models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID (one two-branch model)."""
    data: str
    """A feature shard URI (s3:// or a local shard directory) or any `load_source` spec."""
    out: str
    """Where the index goes: s3://bucket/prefix or a local directory."""
    batch_size: int = 4096
    """Rows per map_batches call (per actor call)."""
    concurrency: int = 1
    """Encoder actors (each holds the model, both branches)."""
    num_cpus: float = 1.0
    """CPUs per actor (torch uses this many threads)."""
    read_cpus: float = 0.5
    """CPUs per shard read task (0.5 keeps one CPU free for the actor on a 2-CPU node)."""
    gpu: bool = False
    """One GPU per actor; the exported encoder program runs on it."""
    folds: tuple[int, ...] | None = None
    """Shard data only: embed these folds (e.g. the held-out fold); None = all rows."""
    object_store_mib: int = 512
    """Cap on Ray Data's object-store use (blocks in flight), so memory does not follow the
    gallery size (without it, reading ran ahead of the encoders: 1.4 GiB of object store at
    400k clips); 0: Ray's default share of the object store."""
    rows_per_shard: int = 250_000
    overwrite: bool = False
    tracking_uri: str | None = None
    """MLflow store of the model (else $MLFLOW_TRACKING_URI, else ./runs/mlflow)."""

    def __post_init__(self) -> None:
        if not self.model.startswith(("models:/", "runs:/")):
            raise ConfigError(f"--model {self.model!r}: expected models:/NAME@ALIAS or "
                              "runs:/RUN_ID")
        for name in ("batch_size", "concurrency", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.object_store_mib < 0:
            raise ConfigError(f"object_store_mib must be >= 0; got {self.object_store_mib}")
        if not (self.num_cpus > 0 and self.read_cpus > 0):
            raise ConfigError(f"num_cpus and read_cpus must be > 0; got {self.num_cpus}, "
                              f"{self.read_cpus}")


def embed_batch(batch: dict, audio, visual) -> dict:
    """A numpy batch of features -> the index row layout (`audio`, `visual`: callables
    (N, D) float32 -> (N, K) unit rows). A plain function: testable without Ray."""
    return {"clip_id": np.asarray(batch["clip_id"]).astype(str),
            "label": np.asarray(batch["label"], np.int32),
            "audio_emb": np.asarray(audio(_floats(batch["audio"])), np.float32),
            "visual_emb": np.asarray(visual(_floats(batch["visual"])), np.float32)}


def _floats(x) -> np.ndarray:
    return np.ascontiguousarray(np.stack(list(x)) if x.dtype == object else x, np.float32)


def programs(encoders: registry.Encoders) -> dict[str, bytes]:
    """The loaded model's two branches as `torch.export` programs (bytes of
    `torch.export.save`): what the encoder actors get instead of a model URI."""
    import io

    import torch
    modules = encoders.model.unwrap_python_model().modules
    out = {}
    for modality in registry.MODALITIES:
        width = getattr(encoders, modality).in_dim
        if not width:
            raise DataError(f"{describe_model(encoders.info)}: the {modality} branch has no "
                            "in_dim in its metadata")
        with torch.no_grad():
            program = torch.export.export(modules[modality], (torch.zeros(2, width),),
                                          dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        buf = io.BytesIO()
        torch.export.save(program, buf)
        out[modality] = buf.getvalue()
    return out


class EncoderActor:
    """Runs the two branches the driver shipped (`programs`), on the GPU if `gpu`."""

    def __init__(self, shipped: dict[str, bytes], gpu: bool) -> None:
        self.audio, self.visual = (_runner(shipped[m], "cuda" if gpu else "cpu")
                                   for m in registry.MODALITIES)

    def __call__(self, batch: dict) -> dict:
        return embed_batch(batch, self.audio, self.visual)


def _runner(program: bytes, device: str):
    """An exported branch on `device`, as a numpy -> numpy callable."""
    import io

    import torch
    module = torch.export.load(io.BytesIO(program)).module().to(device)

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x).to(device, non_blocking=True)).cpu().numpy()
    return run


def source_dataset(cfg: EmbedConfig):
    """(Ray Dataset of clip_id/label/audio/visual, row count, class names, source string)."""
    import ray.data

    from tnn.data import shards
    from tnn.data.batches import tensor_columns
    from tnn.data.sources import is_shard_uri, load_source
    from tnn.ray import dataset as data
    cols = ("clip_id", "label", "audio", "visual")
    if is_shard_uri(cfg.data):
        man = shards.read_manifest(cfg.data)
        ds = data.dataset(cfg.data, columns=cols, folds=cfg.folds, num_cpus=cfg.read_cpus)
        rows = man.rows if cfg.folds is None else None
        return ds, rows, man.class_names, cfg.data
    if cfg.folds is not None:
        raise ConfigError(f"--folds needs shard data (fold ids are fixed at write time); "
                          f"{cfg.data!r} is not a shard set")
    p = load_source(cfg.data)
    step = max(1, cfg.batch_size)
    tables = [tensor_columns(shards.to_table(
        p.audio[i:i + step], p.visual[i:i + step], p.labels[i:i + step],
        p.clip_ids[i:i + step], np.zeros(min(step, p.n - i), np.int8)).select(list(cols)))
        for i in range(0, p.n, step)]
    return ray.data.from_arrow(tables), p.n, p.class_names, cfg.data


def encoded(cfg: EmbedConfig, shipped: dict[str, bytes]):
    """(the Dataset of embedded batches through `cfg.concurrency` encoder actors running the
    `programs` shipped, row count, class names, source); the object-store cap set on this
    dataset's own context."""
    import ray.data
    ds, total, class_names, source = source_dataset(cfg)
    out = ds.map_batches(EncoderActor, fn_constructor_args=(shipped, cfg.gpu),
                         batch_size=cfg.batch_size, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
                         num_cpus=cfg.num_cpus,
                         num_gpus=1 if cfg.gpu else 0)
    if cfg.object_store_mib:  # this dataset's own context: the process-wide one is untouched
        opts = out.context.execution_options
        opts.resource_limits = opts.resource_limits.copy(
            object_store_memory=cfg.object_store_mib * 2**20)
    return out, total, class_names, source


def embed(cfg: EmbedConfig, log=print) -> embedding_shards.IndexManifest:
    """Resolve the model, stream the data through the encoder actors, write the index; the
    last log line gives the streaming time and rate (model loading and Ray start excluded)."""
    uri = tracking.resolve(cfg.tracking_uri, tracking.DEFAULT_LOCAL_DIR)[0]
    encoders = registry.load_encoders(cfg.model, tracking_uri=uri)
    info = encoders.info
    log(f"embed: model {describe_model(info)}", flush=True)
    out, total, class_names, source = encoded(cfg, programs(encoders))
    start = last = time.perf_counter()
    with embedding_shards.EmbeddingWriter(cfg.out, model=info, source=source,
                                          class_names=class_names,
                                          rows_per_shard=cfg.rows_per_shard,
                                          overwrite=cfg.overwrite) as writer:
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            writer.write(batch["clip_id"], batch["label"], batch["audio_emb"],
                         batch["visual_emb"])
            if time.perf_counter() - last >= PROGRESS_SECONDS:
                last = time.perf_counter()
                log(progress_line(writer.rows, total, last - start), flush=True)
    seconds = time.perf_counter() - start
    log(f"embed: streamed {writer.rows} rows in {seconds:.1f} s, "
        f"{writer.rows / seconds:.0f} clips/s", flush=True)
    return writer.manifest


def progress_line(rows: int, total: int | None, seconds: float) -> str:
    """`embed: 1200/5000 clips (24%), 410 clips/s, ~00:09 left` (total unknown: `1200/?`)."""
    rate = rows / max(seconds, 1e-9)
    if not total:
        return f"embed: {rows}/? clips, {rate:.0f} clips/s"
    left = (total - rows) / rate if rate > 0 else 0.0
    return (f"embed: {rows}/{total} clips ({100 * rows / total:.0f}%), {rate:.0f} clips/s, "
            f"~{clock(left)} left")


def smoke_query(index_uri: str) -> str:
    """The top 3 of the index's first audio embedding: `embed: smoke query [...] labels [...]`."""
    index = embedding_shards.load_index(index_uri)
    hits = index.search(index.emb["audio_emb"][:1], "audio", k=3)
    return f"embed: smoke query {hits.clip_ids[0].tolist()} labels {hits.labels[0].tolist()}"
