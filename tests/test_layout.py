"""Layout rules: the folders tell the architecture, and these tests keep it true.

Layers of `tnn/`, lowest first; a module imports only its own subpackage or a lower layer:

    0  tnn/*.py       top-level leaves: errors, config
    1  tnn/core/      numpy, torch and the standard library only
    2  tnn/data/      formats and storage (pyarrow, boto3 imported inside functions)
    3  tnn/methods/   the methods and their registry (no ray, mlflow, boto3, pyarrow)
    4  tnn/train/     the training loop; torch.distributed in train/distributed.py only
    5  tnn/serve/     export, index, search
    6  tnn/tracking/  MLflow, nowhere else
    7  tnn/ray/       Ray, nowhere else

Top-level modules are leaves of layer 0: every layer may import them, so they import only one
another and no framework (private Ray attributes live in tnn/ray/compat.py: a top-level compat
module importing ray would make every layer a Ray importer). Imports are read with `ast`, those
inside functions included (a lazy import still counts for cycles and layers). Outside tnn/ray/
and tnn/tracking/, importing a module loads none of ray, mlflow, boto3, pyarrow (checked in a
fresh interpreter). `jobs/` may import any layer and nothing imports `jobs/`; `bench/` imports
`tnn` and itself. Sizes: a `tnn/` module at most 300 lines, a `jobs/` module at most 150, a
function of `tnn/` or `jobs/` at most 60 (from `def` to its last line). tests/ has a folder per
subpackage. The last tests plant violations in a small tree: the checker can fail.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT

LAYERS = ("core", "data", "methods", "train", "serve", "tracking", "ray")
HOME = {"ray": "tnn/ray/", "mlflow": "tnn/tracking/",
        "torch.distributed": "tnn/train/distributed.py"}
# Lazily or not: the core imports only numpy, torch and the stdlib; methods/ never the storage
# frameworks (HOME keeps ray and mlflow out of every other subpackage).
ONLY = {"core": {"numpy", "torch"}}
NEVER = {"methods": {"boto3", "botocore", "pyarrow"}}
# What importing any module outside tnn/ray/ and tnn/tracking/ must not load (checked in a fresh
# interpreter): storage, shards and other pyarrow/boto3 users import them inside functions.
NOT_LOADED = ("ray", "mlflow", "boto3", "botocore", "pyarrow")
EDGES = ("ray", "tracking")
MAX_LINES = {"tnn": 300, "jobs": 150}
MAX_FUNCTION = 60


@dataclass(frozen=True)
class Import:
    name: str   # absolute dotted name: `from a.b import c` gives a.b.c
    line: int
    lazy: bool  # inside a function: runs on call, not on import


@dataclass(frozen=True)
class Module:
    name: str   # tnn.core.losses
    path: str   # tnn/core/losses.py, relative to the root
    imports: tuple[Import, ...]

    @property
    def layer(self) -> int:
        """0 for top-level modules, 1 + position in LAYERS for a subpackage's, -1 if unknown."""
        parts = self.path.split("/")
        if len(parts) == 2:
            return 0
        return LAYERS.index(parts[1]) + 1 if parts[1] in LAYERS else -1


# ---------------------------------------------------------------- reading the tree


class _Imports(ast.NodeVisitor):
    """Every import of a module: statements, `importlib.import_module("x")` and `__import__("x")`
    with a literal name, and `torch.distributed...` reached as an attribute of `torch`."""

    def __init__(self, package: str) -> None:
        self.package, self.depth, self.found = package, 0, []

    def add(self, name: str, node: ast.AST) -> None:
        self.found.append(Import(name, node.lineno, self.depth > 0))

    def visit_FunctionDef(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parent = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join(parent + ([base] if base else []))
        for alias in node.names:
            self.add(base if alias.name == "*" else f"{base}.{alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if (name in ("import_module", "__import__") and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            self.add(node.args[0].value, node)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (node.attr == "distributed" and isinstance(node.value, ast.Name)
                and node.value.id == "torch"):
            self.add("torch.distributed", node)
        self.generic_visit(node)


def read_package(root: Path, package: str = "tnn") -> dict[str, Module]:
    """Every module under `root/package`, by dotted name, with its imports."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root)
        parts = list(rel.with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_init else parts)
        visitor = _Imports(name if is_init else ".".join(parts[:-1]))
        visitor.visit(ast.parse(path.read_text(), str(rel)))
        modules[name] = Module(name, rel.as_posix(), tuple(visitor.found))
    return modules


def target(name: str, modules: dict[str, Module]) -> str | None:
    """The module of `modules` an imported name refers to: the longest known prefix."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def edges(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, lazy imports included."""
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for m in modules.values():
        for imp in m.imports:
            t = target(imp.name, modules)
            if t is not None and t != m.name:
                graph[m.name].setdefault(t, imp.line)
    return graph


# ---------------------------------------------------------------- the rules, as functions


def cycles(modules: dict[str, Module]) -> list[str]:
    """One readable cycle (`a:LINE -> b:LINE -> a`) per strongly connected component."""
    graph, index, low, stack, on, found = edges(modules), {}, {}, [], set(), []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while (w := stack.pop()) != v:
                on.discard(w)
                comp.add(w)
            on.discard(v)
            if comp:
                found.append(_one_cycle(v, comp | {v}, graph))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def _one_cycle(start: str, comp: set[str], graph: dict[str, dict[str, int]]) -> str:
    prev, todo = {start: None}, [start]
    while todo:  # breadth first inside the component back to `start`
        v = todo.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                path = path[::-1] + [start]
                return " -> ".join(f"{a}:{graph[a][b]}" for a, b in zip(path, path[1:])) + \
                    f" -> {start}"
            if w in comp and w not in prev:
                prev[w] = v
                todo.append(w)
    raise AssertionError(f"no cycle through {start}")


def upward(modules: dict[str, Module]) -> list[str]:
    """Imports of a higher layer, and modules in a folder that has no layer."""
    out = [f"{m.path}: tnn/{m.path.split('/')[1]}/ is in no layer (add it to LAYERS)"
           for m in modules.values() if m.layer < 0]
    graph = edges(modules)
    for m in modules.values():
        for t, line in sorted(graph[m.name].items()):
            if m.layer >= 0 and modules[t].layer > m.layer:
                out.append(f"{m.path}:{line} imports {t} (layer {_layer_name(modules[t])} is "
                           f"above {_layer_name(m)})")
    return out


def _layer_name(m: Module) -> str:
    return "top-level" if m.layer == 0 else m.path.split("/")[1]


def is_framework(name: str, framework: str) -> bool:
    return name == framework or name.startswith(framework + ".") or (
        framework == "torch.distributed" and name.startswith("torch.nn.parallel.Distributed"))


def framework_homes(modules: dict[str, Module]) -> list[str]:
    """ray only under tnn/ray/, mlflow only under tnn/tracking/, torch.distributed only in
    tnn/train/distributed.py; lazy imports included."""
    return [f"{m.path}:{imp.line} imports {imp.name} (only {home} may)"
            for m in modules.values() for imp in m.imports for fw, home in HOME.items()
            if is_framework(imp.name, fw) and not m.path.startswith(home)]


def third_party_limits(modules: dict[str, Module]) -> list[str]:
    """core/ imports nothing but numpy, torch and the stdlib; methods/ no boto3 or pyarrow; lazy
    imports included."""
    out = []
    for m in modules.values():
        sub = m.path.split("/")[1]
        for imp in m.imports:
            top = imp.name.split(".")[0]
            if sub in ONLY and top not in ONLY[sub] | {"tnn"} | sys.stdlib_module_names:
                out.append(f"{m.path}:{imp.line} imports {imp.name} (tnn/{sub}/ imports only "
                           f"{', '.join(sorted(ONLY[sub]))} and the standard library)")
            if top in NEVER.get(sub, ()):
                out.append(f"{m.path}:{imp.line} imports {imp.name} (tnn/{sub}/ never imports "
                           f"{', '.join(sorted(NEVER[sub]))})")
    return out


def first_party(root: Path) -> set[str]:
    """Top-level names importable from the repository root (packages and modules)."""
    return {p.name for p in root.iterdir() if (p / "__init__.py").is_file()} | \
        {p.stem for p in root.glob("*.py")}


def foreign_imports(root: Path, folder: str, allowed: set[str]) -> list[str]:
    """Imports of first-party packages other than `allowed` by any module under `folder`."""
    out, mine = [], first_party(root)
    for m in read_package(root, folder).values():
        for imp in m.imports:
            top = imp.name.split(".")[0]
            if top in mine and top not in allowed:
                out.append(f"{m.path}:{imp.line} imports {imp.name} ({folder}/ imports only "
                           f"{', '.join(sorted(allowed))} of this repository)")
    return out


def oversized(root: Path) -> list[str]:
    out = []
    for folder, limit in MAX_LINES.items():
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text()
            rel = path.relative_to(root).as_posix()
            if (n := len(text.splitlines())) > limit:
                out.append(f"{rel}: {n} lines (at most {limit})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION:
                        out.append(f"{rel}:{node.lineno} {node.name}(): {n} lines "
                                   f"(at most {MAX_FUNCTION})")
    return out


def loaded(root: Path, names: list[str]) -> list[str]:
    """Imports `names` one after the other in a fresh interpreter (in `root`); a NOT_LOADED
    package that appears in `sys.modules` is blamed on the first import that brought it in."""
    code = textwrap.dedent("""
        import importlib, json, sys
        names, forbidden, blame = json.loads(sys.argv[1]), set(sys.argv[2].split(",")), []
        for name in names:
            before = {m.split(".")[0] for m in sys.modules}
            importlib.import_module(name)
            new = {m.split(".")[0] for m in sys.modules} - before
            blame += [f"import {name} loads {f}" for f in sorted(new & forbidden)]
        print(json.dumps(blame))
    """)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(names), ",".join(NOT_LOADED)],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _report(problems: list[str], what: str) -> str:
    return f"{len(problems)} {what}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------- the tests

TNN = read_package(ROOT)


def test_no_import_cycle_among_tnn_modules():
    found = cycles(TNN)
    assert not found, _report(found, "import cycles (lazy imports included)")


def test_no_module_imports_a_higher_layer():
    found = upward(TNN)
    assert not found, _report(found, f"upward imports; layers: top-level < {' < '.join(LAYERS)}")


def test_each_framework_is_imported_only_in_its_home():
    found = framework_homes(TNN)
    assert not found, _report(found, "framework imports outside their home")


def test_core_imports_only_numpy_torch_stdlib_and_methods_no_storage_framework():
    found = third_party_limits(TNN)
    assert not found, _report(found, "imports outside the allowed third-party packages")


def test_importing_the_lower_layers_loads_no_framework():
    """`import tnn.core, tnn.methods, tnn.data`, then every module outside tnn/ray/ and
    tnn/tracking/, lowest layer first, loads none of ray, mlflow, boto3, pyarrow."""
    below = sorted((m for m in TNN.values() if m.path.split("/")[1] not in EDGES),
                   key=lambda m: (m.layer, m.name))
    found = loaded(ROOT, ["tnn.core", "tnn.methods", "tnn.data"] + [m.name for m in below])
    assert not found, _report(found, "frameworks loaded outside tnn/ray/ and tnn/tracking/")


def test_nothing_imports_jobs_and_bench_imports_only_tnn():
    """Of this repository's packages, tnn/ imports tnn, jobs/ tnn and jobs, bench/ tnn and bench."""
    found = (foreign_imports(ROOT, "tnn", {"tnn"}) + foreign_imports(ROOT, "jobs", {"tnn", "jobs"})
             + foreign_imports(ROOT, "bench", {"tnn", "bench"}))
    assert not found, _report(found, "imports across the repository's folders")


def test_modules_and_functions_stay_small():
    found = oversized(ROOT)
    assert not found, _report(found, "oversized modules or functions")


def test_tests_mirror_the_subpackages():
    """tests/<sub>/ for every subpackage of tnn/; besides those only jobs/, faults/, hostile/,
    reference/."""
    subs = {p.name for p in (ROOT / "tnn").iterdir() if (p / "__init__.py").is_file()}
    dirs = {p.name for p in (ROOT / "tests").iterdir() if (p / "__init__.py").is_file()}
    extra = {"jobs", "faults", "hostile", "reference"}
    assert subs <= dirs, f"no tests/ folder for tnn/{sorted(subs - dirs)}"
    assert dirs <= subs | extra, f"tests/{sorted(dirs - subs - extra)} mirror no subpackage"


# ---------------------------------------------------------------- the checker can fail

PLANTED = {
    "tnn/__init__.py": "",
    "tnn/errors.py": "",
    "tnn/leaf.py": "import mlflow\ndef resource_manager():\n    import ray\n",
    "tnn/core/__init__.py": "",
    "tnn/core/a.py": "from tnn.ray import x\nimport boto3\n",
    "tnn/core/ok.py": "import numpy as np\nfrom . import a\nfrom tnn import errors\n",
    "tnn/methods/__init__.py": "def f():\n    import pyarrow.parquet\n    import matplotlib\n",
    "tnn/data/__init__.py": "",
    "tnn/data/p.py": "from tnn.data import q\n",
    "tnn/data/q.py": "def f():\n    from .p import g\n    import torch\n"
                     "    torch.distributed.barrier()\n",
    "tnn/ray/__init__.py": "",
    "tnn/ray/x.py": "import ray\nimport importlib\nm = importlib.import_module('mlflow')\n",
    "tnn/extra/__init__.py": "",
    "bench/__init__.py": "",
    "bench/b.py": "from jobs import train\nfrom tests.support import ROOT\nfrom bench import b\n",
    "jobs/__init__.py": "",
    "jobs/train.py": "def main():\n" + "    pass\n" * 70,
    "tests/__init__.py": "",
    "ray/__init__.py": "", "mlflow.py": "", "boto3.py": "",  # stand-ins, found first in the root
}


@pytest.fixture
def planted(tmp_path) -> Path:
    for rel, text in PLANTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_the_checker_finds_planted_cycles_and_upward_imports(planted):
    mods = read_package(planted)
    assert cycles(mods) == ["tnn.data.p:1 -> tnn.data.q:2 -> tnn.data.p"]
    assert upward(mods) == ["tnn/extra/__init__.py: tnn/extra/ is in no layer (add it to LAYERS)",
                            "tnn/core/a.py:1 imports tnn.ray.x (layer ray is above core)"]
    assert edges(mods)["tnn.core.ok"] == {"tnn.core.a": 2, "tnn.errors": 3}


def test_the_checker_finds_planted_framework_and_folder_violations(planted):
    mods = read_package(planted)
    assert framework_homes(mods) == [
        "tnn/data/q.py:4 imports torch.distributed (only tnn/train/distributed.py may)",
        "tnn/leaf.py:1 imports mlflow (only tnn/tracking/ may)",
        "tnn/leaf.py:3 imports ray (only tnn/ray/ may)",
        "tnn/ray/x.py:3 imports mlflow (only tnn/tracking/ may)"]
    assert third_party_limits(mods) == [
        "tnn/core/a.py:2 imports boto3 (tnn/core/ imports only numpy, torch and the standard "
        "library)",
        "tnn/methods/__init__.py:2 imports pyarrow.parquet (tnn/methods/ never imports boto3, "
        "botocore, pyarrow)"]
    assert foreign_imports(planted, "bench", {"tnn", "bench"}) == [
        "bench/b.py:1 imports jobs.train (bench/ imports only bench, tnn of this repository)",
        "bench/b.py:2 imports tests.support.ROOT (bench/ imports only bench, tnn of this "
        "repository)"]
    assert oversized(planted) == ["jobs/train.py:1 main(): 71 lines (at most 60)"]


def test_the_checker_finds_a_framework_loaded_on_import(planted):
    assert loaded(planted, ["tnn.leaf", "tnn.data.q"]) == ["import tnn.leaf loads mlflow"]
    assert loaded(planted, ["tnn.core.ok"]) == [
        "import tnn.core.ok loads boto3", "import tnn.core.ok loads mlflow",
        "import tnn.core.ok loads ray"]
