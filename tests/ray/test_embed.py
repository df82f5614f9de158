"""jobs.embed: the batch transform, settings, the actor's version check, and the job on a
small gallery (shards on S3 and an in-memory source) under the session Ray."""

import numpy as np
import pytest

from jobs import embed as embed_job
from tnn.ray import embed
from tnn.serve import index as es
from tnn.tracking import registry
from tnn.errors import ConfigError
from tnn.data.sources import load_source


def test_embed_batch_is_a_plain_function():
    batch = {"clip_id": np.array(["a", "b"], object), "label": np.array([1, 2]),
             "audio": np.array([np.ones(3), np.zeros(3)], object),
             "visual": np.arange(8, dtype=np.float64).reshape(2, 4), "fold": np.zeros(2)}
    out = embed.embed_batch(batch, lambda x: x[:, :2] * 2, lambda x: x[:, 1:3])
    assert sorted(out) == ["audio_emb", "clip_id", "label", "visual_emb"]
    assert out["clip_id"].tolist() == ["a", "b"] and out["label"].dtype == np.int32
    np.testing.assert_array_equal(out["audio_emb"], [[2, 2], [0, 0]])
    assert out["visual_emb"].dtype == np.float32 and out["visual_emb"].tolist() == [[1, 2],
                                                                                   [5, 6]]


@pytest.mark.parametrize("fields, message", [
    ({"model": "tnn@champion"}, "--model 'tnn@champion': expected models:/NAME@ALIAS or "
                                "runs:/RUN_ID"),
    ({"batch_size": 0}, "batch_size must be >= 1; got 0"),
    ({"num_cpus": 0.0}, "num_cpus and read_cpus must be > 0; got 0.0, 0.5"),
])
def test_config_refusals(fields, message):
    with pytest.raises(ConfigError) as err:
        embed.EmbedConfig(**{"model": "models:/tnn@champion", "data": "d", "out": "o", **fields})
    assert str(err.value) == message


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A temp MLflow store holding c-cca (uci-mfeat) as tnn-audio/tnn-visual @champion."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    return uri, registry.smoke_model(uri)


def test_actors_get_the_exported_branches_not_the_model_uri(champion):
    """The driver loads the model once and ships its two branches as torch.export programs:
    an actor built from them embeds as the registered model does (no MLflow in the actor)."""
    uri, model = champion
    enc = registry.load_encoders("models:/tnn@champion", tracking_uri=uri)
    shipped = embed.programs(enc)
    assert sorted(shipped) == ["audio", "visual"] and all(isinstance(b, bytes)
                                                          for b in shipped.values())
    actor = embed.EncoderActor(shipped, False)
    p = load_source("uci-mfeat")
    for rows in (0, 1, 37):
        np.testing.assert_allclose(actor.audio(p.audio[:rows]), enc.audio.predict(p.audio[:rows]),
                                   atol=1e-6)
        np.testing.assert_allclose(actor.visual(p.visual[:rows]),
                                   enc.visual.predict(p.visual[:rows]), atol=1e-6)


def test_progress_line():
    assert embed.progress_line(1200, 5000, 3.0) == \
        "embed: 1200/5000 clips (24%), 400 clips/s, ~00:10 left"
    assert embed.progress_line(10, None, 1.0) == "embed: 10/? clips, 10 clips/s"


def _check_index(uri, source, model, tracking_uri, rows):
    index = es.load_index(uri)
    assert index.model["versions"] == model["versions"]
    assert index.model["run_id"] == model["run_id"] and len(index) == len(rows)
    enc = registry.load_encoders(f"runs:/{model['run_id']}", tracking_uri=tracking_uri)
    pos = {c: i for i, c in enumerate(source.clip_ids)}
    order = np.array([pos[c] for c in index.clip_ids])
    assert sorted(order.tolist()) == sorted(rows)
    np.testing.assert_array_equal(index.labels, source.labels[order])
    np.testing.assert_allclose(index.emb["audio_emb"], enc.audio.predict(source.audio[order]),
                               atol=1e-6)
    np.testing.assert_allclose(index.emb["visual_emb"],
                               enc.visual.predict(source.visual[order]), atol=1e-6)


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.timeout(300)
def test_embed_job_on_shards_and_in_memory(ray_local, champion, s3_prefix, tmp_path, capsys):
    from tnn.data.write import write
    uri, model = champion
    p = load_source("uci-mfeat").subset(np.arange(0, 2000, 4))  # 500 clips
    np.savez(tmp_path / "g.npz", audio=p.audio, visual=p.visual, labels=p.labels,
             clip_ids=p.clip_ids)
    man = write(f"npz:{tmp_path / 'g.npz'}", f"{s3_prefix}/features", rows_per_shard=150,
                log=lambda *a, **k: None)
    cfg = embed.EmbedConfig("models:/tnn@champion", f"{s3_prefix}/features",
                            f"{s3_prefix}/index", batch_size=64, folds=(0,),
                            rows_per_shard=40, num_cpus=0.5, tracking_uri=uri)
    index_man = embed.embed(cfg)
    from tnn.data.reader import read_pairs
    fold0 = np.flatnonzero(read_pairs(f"{s3_prefix}/features").folds == 0)
    assert index_man.rows == len(fold0) and len(index_man.shards) == -(-len(fold0) // 40)
    assert index_man.source == f"{s3_prefix}/features" and man.rows == 500
    _check_index(f"{s3_prefix}/index", p, model, uri, fold0.tolist())
    # the in-memory path (an npz source), through main: config printed, summary line
    out, _ = str(tmp_path / "index"), capsys.readouterr()
    assert embed_job.main(["--model", "models:/tnn@champion", "--data", f"npz:{tmp_path / 'g.npz'}",
                       "--out", out, "--batch-size", "100", "--num-cpus", "0.5",
                       "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "embed: resolved config"
    assert lines[-1].startswith(f"embed: wrote 500 rows (9-d) in 1 shards to {out} from "
                                f"tnn@champion (audio v1, visual v1, run {model['run_id']}) in ")
    _check_index(out, p, model, uri, list(range(500)))
    assert embed_job.main(["--model", "models:/tnn@champion", "--data", "uci-mfeat", "--out", out,
                       "--tracking-uri", uri]) == 2  # an index is there: refused
    assert "already holds a data set, 1 shard(s); pass --overwrite" in capsys.readouterr().err
