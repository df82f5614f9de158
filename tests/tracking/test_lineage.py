"""tnn.tracking.lineage: MLflow's source tags (git commit read from .git files) and the data set
as a run input (`open_run` sets both: tests/tracking/test_runs.py); `ui_command`."""

import numpy as np

from tests.support import ROOT
from tnn.data import write as shard_write
from tnn.data.sources import load_source
from tnn.tracking import lineage
from tnn.tracking import runs as tracking

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "89abcdef0123456789abcdef0123456789abcdef"


def test_git_commit_from_loose_and_packed_refs_detached_heads_and_worktrees(tmp_path):
    repo, code = tmp_path / "repo", tmp_path / "repo" / "tnn" / "tracking"
    code.mkdir(parents=True)
    assert lineage.git_commit(code) is None or (tmp_path / ".git").exists()  # outside git
    git = repo / ".git"
    (git / "refs/heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{OTHER} refs/heads/main\n")
    assert lineage.git_commit(code) == OTHER                      # packed
    (git / "refs/heads/main").write_text(SHA + "\n")
    assert lineage.git_commit(code) == SHA                        # a loose ref wins
    (git / "HEAD").write_text(OTHER + "\n")
    assert lineage.git_commit(code) == OTHER                      # detached
    (git / "HEAD").write_text("ref: refs/heads/gone\n")
    assert lineage.git_commit(code) is None                       # unreadable: left out
    (git / "HEAD").write_text("$(touch pwned)\n")
    assert lineage.git_commit(code) is None and not (code / "pwned").exists()
    wt = tmp_path / "wt"                                           # a worktree's .git file
    (git / "worktrees/wt").mkdir(parents=True)
    (git / "worktrees/wt/HEAD").write_text("ref: refs/heads/main\n")
    (git / "worktrees/wt/commondir").write_text("../..\n")
    wt.mkdir()
    (wt / ".git").write_text(f"gitdir: {git / 'worktrees/wt'}\n")
    assert lineage.git_commit(wt) == SHA


def test_source_tags_name_the_job_and_this_checkout(monkeypatch):
    monkeypatch.delenv(lineage.JOB_ENV, raising=False)
    tags = lineage.source_tags("crossval", ROOT)
    assert tags["mlflow.source.name"] == "jobs.crossval"
    assert tags["mlflow.source.type"] == "LOCAL"
    if (ROOT / ".git").exists():
        assert tags["mlflow.source.git.commit"] == lineage.git_commit(ROOT)
    monkeypatch.setenv(lineage.JOB_ENV, "{}")  # what Ray's job supervisor sets
    assert lineage.source_tags("train", ROOT)["mlflow.source.type"] == "JOB"


def test_digests_follow_the_manifest_and_the_arrays(tmp_path):
    quiet = {"log": lambda *a, **k: None}
    shard_write.write("synthetic:n=120,audio_dim=4,visual_dim=6", str(tmp_path / "a"),
                      rows_per_shard=50, **quiet)
    shard_write.write("synthetic:n=120,audio_dim=4,visual_dim=6", str(tmp_path / "b"),
                      rows_per_shard=60, **quiet)
    da, profile = lineage.data_digest(str(tmp_path / "a"))
    assert profile == {"rows": 120, "shards": 3, "classes": profile["classes"]}
    assert da == lineage.data_digest(str(tmp_path / "a"))[0] != \
        lineage.data_digest(str(tmp_path / "b"))[0]
    pairs = load_source("uci-mfeat")
    assert lineage.data_digest("uci-mfeat")[0] == lineage.pairs_digest(pairs)
    changed = pairs.subset(np.arange(pairs.n))
    changed.audio[0, 0] += 1e-3
    assert lineage.pairs_digest(changed) != lineage.pairs_digest(pairs)


def test_ui_command_opens_a_local_store_or_names_the_server():
    assert tracking.ui_command("sqlite:////tmp/a b/mlflow.db") == \
        "mlflow ui --backend-store-uri 'sqlite:////tmp/a b/mlflow.db'"
    assert tracking.ui_command("https://u:pw@mlflow.example:5000") == \
        "https://***@mlflow.example:5000"
