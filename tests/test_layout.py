"""Guards: the core stays framework-free; edge modules are the only framework importers."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGE = {"ray": {"data.py", "train_data.py", "train_loop.py", "tune_run.py"},
        "mlflow": {"tracking.py", "registry.py", "pyfunc_encoder.py"},
        "torch.distributed": {"distributed.py"}}


def test_core_imports_no_framework():
    core = [p.stem for p in (ROOT / "tnn").glob("*.py")
            if p.name not in set().union(*EDGE.values()) and p.stem != "__init__"]
    code = ("import sys\n" + "".join(f"import tnn.{m}\n" for m in sorted(core)) +
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'boto3', "
            "'pyarrow')]\nprint(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"core modules import frameworks: {out.stdout}"


def test_framework_imports_only_in_edge_modules():
    pattern = re.compile(r"^\s*(?:import|from)\s+(ray|mlflow|torch\.distributed)\b", re.M)
    for path in (ROOT / "tnn").rglob("*.py"):
        for framework in pattern.findall(path.read_text()):
            assert path.name in EDGE[framework], f"{path.relative_to(ROOT)} imports {framework}"
