"""Where a run came from: MLflow's standard source tags and the data set as a run input.

`source_tags(job)`: `mlflow.source.name` (the job module, e.g. `jobs.train`),
`mlflow.source.type` (`JOB` under `ray job submit`, whose supervisor sets
RAY_JOB_CONFIG_JSON_ENV_VAR for the entrypoint, else `LOCAL`) and `mlflow.source.git.commit`
when the code runs from a git checkout. The commit is read from the checkout's files (`.git`
HEAD, loose refs, packed-refs; a worktree's `.git` file): no git process, nothing run through a
shell; outside git (a `ray job submit --working-dir` upload, an installed wheel) the tag is
left out silently.

`dataset_input(data)`: the data set as an MLflow input (what `mlflow.log_input` logs: an
`mlflow.data` dataset with context `training`), named by the data URI with credentials
redacted (`tnn.errors.redact`). Its digest is the manifest's for a shard set (cheap: the
manifest names every shard and its rows) or a content hash of the arrays for an in-memory
source (`Pairs` given, else loaded once with `tnn.data.sources.load_source`).
`tnn.tracking.runs.open_run` sets both on every run it creates.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

from tnn.errors import redact

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a submitted entrypoint
SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
CODE = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding tnn/


def entry_point(job: str | None) -> str:
    """The job module that runs: `python -m jobs.X`'s module, else `jobs.<job>`, else the
    main script's file name."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.startswith("jobs."):
        return spec.name
    if job:
        return f"jobs.{job}"
    return Path(getattr(main, "__file__", "") or "python").name


def _git_dir(start: Path) -> Path | None:
    """The git directory of the checkout holding `start` (a `.git` folder or a worktree's
    `.git` file `gitdir: PATH`), None outside git."""
    for folder in (start, *start.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            text = dot.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                path = Path(text[len("gitdir:"):].strip())
                return path if path.is_absolute() else (folder / path).resolve()
            return None
    return None


def _ref(git: Path, ref: str) -> str | None:
    """The commit a ref names: its loose file, else packed-refs (of the common dir too)."""
    dirs = [git]
    common = git / "commondir"
    if common.is_file():
        dirs.append((git / common.read_text().strip()).resolve())
    for d in dirs:
        loose = d / ref
        if loose.is_file():
            return loose.read_text(errors="replace").strip()
        packed = d / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(errors="replace").splitlines():
                sha, _, name = line.partition(" ")
                if name.strip() == ref:
                    return sha
    return None


def git_commit(start: Path = CODE) -> str | None:
    """HEAD's commit of the checkout holding `start`, None outside git or if unreadable."""
    try:
        git = _git_dir(start.resolve())
        if git is None:
            return None
        head = (git / "HEAD").read_text(errors="replace").strip()
        sha = _ref(git, head[4:].strip()) if head.startswith("ref:") else head
    except OSError:
        return None
    return sha if sha and SHA.fullmatch(sha) else None


def source_tags(job: str | None = None, start: Path = CODE) -> dict[str, str]:
    """MLflow's `mlflow.source.*` tags for a run that job `job` opens (module doc)."""
    tags = {"mlflow.source.name": entry_point(job),
            "mlflow.source.type": "JOB" if os.environ.get(JOB_ENV) else "LOCAL"}
    commit = git_commit(start)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def pairs_digest(pairs) -> str:
    """A content hash of in-memory `Pairs`: features, labels, clip ids and class names."""
    h = hashlib.sha256()
    for array in (pairs.audio, pairs.visual, pairs.labels):
        h.update(str((array.dtype.str, array.shape)).encode())
        h.update(memoryview(array).cast("B") if array.flags.c_contiguous else array.tobytes())
    h.update("\x00".join(map(str, pairs.clip_ids)).encode())
    h.update("\x00".join(map(str, pairs.class_names)).encode())
    return h.hexdigest()[:16]


def data_digest(data: str, pairs=None) -> tuple[str, dict]:
    """(digest, profile) of a data set: the manifest's hash for a shard set, else the content
    hash of `pairs` (loaded from `data` when not given)."""
    from tnn.data.sources import is_shard_uri
    if is_shard_uri(data):
        from tnn.data.shards import read_manifest
        man = read_manifest(data)
        digest = hashlib.sha256(man.to_json().encode()).hexdigest()[:16]
        return digest, {"rows": man.rows, "shards": len(man.shards), "classes": man.num_classes}
    if pairs is None:
        from tnn.data.sources import load_source
        pairs = load_source(data)
    return pairs_digest(pairs), {"rows": int(pairs.n), "classes": int(pairs.num_classes)}


def dataset_input(data: str, pairs=None, context: str = "training"):
    """Data set `data` as an MLflow run input (the `DatasetInput` that `mlflow.log_input`
    logs: an `mlflow.data` MetaDataset, context tag), digest computed here; log it with
    `MlflowClient.log_inputs` (no process-wide active run)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
    digest, profile = data_digest(data, pairs)
    name = redact(data)
    source = CodeDatasetSource({"uri": name, **{k: str(v) for k, v in profile.items()}})
    dataset = MetaDataset(source, name=name, digest=digest)
    return DatasetInput(dataset._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])
