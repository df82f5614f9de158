"""bench.gpu_check: says so and exits 0 without CUDA; its measurements run (on CPU, tiny)."""

import json
import subprocess

import pytest
import torch

from bench import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_tiny_cpu_run_measures_every_row(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--no-tests", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["train_samples_per_s"]) == {f"{p} b{b}" for p in gpu_check.PIPELINES
                                               for b in (32, 64)}
    assert set(res["loss_step_ms"]) == {f"{m} b{b}" for m in ("batch_all", "batch_hard")
                                        for b in (32, 64)}
    values = [*res["train_samples_per_s"].values(), *res["loss_step_ms"].values(),
              res["embed_clips_per_s"]]
    assert all(v > 0 for v in values)
    printed = capsys.readouterr().out
    assert "tnn-c-cca b64" in printed and json.loads(printed.strip().splitlines()[-1]) == res


def test_gpu_test_counts_come_from_the_pytest_summary(monkeypatch):
    summary = "==== 3 passed, 1 failed, 2 skipped, 1 error in 9.1s ===="
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, stdout=f"...\n{summary}\n", stderr=""))
    got = gpu_check.gpu_tests()
    assert (got["passed"], got["failed"], got["skipped"], got["error"]) == (3, 1, 2, 1)
    assert got["returncode"] == 1


def test_bad_batches_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        gpu_check.main(["--device", "cpu", "--batches", "256,x"])
    assert exc.value.code == 2 and "--batches" in capsys.readouterr().err
