"""bench/retrieval.py --synthetic: exact, numpy IVF and FAISS side by side, JSON + table."""

from __future__ import annotations

import importlib.util
import json

from bench import retrieval as bench


def test_retrieval_bench_compares_exact_numpy_ivf_and_faiss(capsys):
    assert bench.main(["--synthetic", "--rows", "3000", "--queries", "40", "--repeats", "1",
                       "--nprobe", "2,1000", "--dim", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    out = json.loads(lines[-1])["search"]
    backends = ["numpy"] + (["faiss"] if importlib.util.find_spec("faiss") else [])
    assert list(out["ivf_nlist"]) == backends and out["width"] == 6
    assert out["exact_equals_reference_rows"] == out["ref_queries"] == 40
    for b in backends:
        assert out["recall"][f"{b} ivf nprobe 1000"] == 1.0  # every list probed: exact
        assert out["recall"][f"{b} ivf nprobe 2"] < 1.0
        assert any(line.startswith(f"{b} ivf nprobe 2 ") for line in lines)  # the table
    assert set(out["queries_per_s"]) == {"exact"} | {f"{b} ivf nprobe {p}" for b in backends
                                                     for p in (2, 1000)}
