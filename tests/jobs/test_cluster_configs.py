"""cluster/: the launcher config passes Ray's own validation, the KubeRay manifests have what
KubeRay and the jobs need, every Ray version is the pinned one, and no secret is inline."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT

CLUSTER = ROOT / "cluster"
AWS, RAYCLUSTER, RAYJOB = CLUSTER / "aws.yaml", CLUSTER / "kuberay/raycluster.yaml", \
    CLUSTER / "kuberay/rayjob.yaml"
SECRETS = ("tnn-s3", "tnn-mlflow")
SECRET_NAME = re.compile(r"(?i).*(secret|password|passwd|token|access_key|credential).*")


def pinned_ray() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins no ray[...]==X"
    return match.group(1)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_every_yaml_parses_to_a_mapping():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {AWS, RAYCLUSTER, RAYJOB, CLUSTER / "runtime_env.yaml"} <= set(files)
    for path in files:
        assert isinstance(load(path), dict), path


def test_installed_ray_is_the_pinned_one():
    import ray
    assert ray.__version__ == pinned_ray()


# --- the AWS cluster launcher config --------------------------------------------------------

def prepared(config: dict) -> dict:
    """What `ray up` does first: merge the provider's defaults, then Ray's schema check."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def test_launcher_config_passes_rays_validation_and_a_broken_one_does_not():
    config = prepared(load(AWS))
    assert config["provider"]["type"] == "aws"
    broken = load(AWS)
    broken["available_node_types"]["worker.gpu"]["min_worker"] = 0  # a typo'd key
    with pytest.raises(Exception, match="min_worker"):
        prepared(broken)


def test_launcher_head_runs_drivers_and_gpu_workers_are_spot_from_zero():
    config = load(AWS)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("trial_slot", 0) >= 1  # jobs.tune's trial drivers
    assert not re.match(r"[gp]\d", head["node_config"]["InstanceType"])  # a CPU instance
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    gpu = [t for t in workers if re.match(r"(g[4-6]|p[3-5])", t["node_config"]["InstanceType"])]
    assert gpu and all(t["min_workers"] == 0 for t in gpu)
    assert all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in gpu)


def test_launcher_installs_the_project_and_starts_ray_with_token_auth():
    config = load(AWS)
    assert config["file_mounts"]["~/tnn"] == "."
    assert any(re.search(r"pip install .*~/tnn", c) for c in config["setup_commands"])
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert "~/.ray/auth_token" in config["file_mounts"]  # the token itself, from a file


# --- KubeRay ----------------------------------------------------------------------------------

def test_raycluster_has_the_fields_kuberay_and_the_jobs_need():
    doc = load(RAYCLUSTER)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = doc["spec"]
    assert spec["rayVersion"] == pinned_ray()
    assert spec["authOptions"]["mode"] == "token" and spec["authOptions"]["secretName"]
    assert "trial_slot" in spec["headGroupSpec"]["rayStartParams"]["resources"]
    gpu = [g for g in spec["workerGroupSpecs"]
           if any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
                  for c in g["template"]["spec"]["containers"])]
    assert gpu and all(g["minReplicas"] == 0 and g["maxReplicas"] >= 1 for g in gpu)
    for c in containers(spec):
        refs = {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
        assert set(SECRETS) <= refs, c["name"]  # S3 and MLflow settings from Secrets


def test_rayjob_runs_a_job_on_the_same_cluster_spec():
    doc, cluster = load(RAYJOB), load(RAYCLUSTER)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert spec["rayClusterSpec"] == cluster["spec"]
    assert spec["shutdownAfterJobFinishes"] is True  # no GPU node outlives the job
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2] == "jobs.train"
    from jobs import train
    cfg = train.build_config(train.parse_args(argv[3:]))  # the entrypoint's arguments are valid
    assert cfg.use_gpu and cfg.data.startswith("s3://") and cfg.storage_path.startswith("s3://")


# --- across files -------------------------------------------------------------------------------

VERSION_PATTERNS = (r"rayproject/ray:([0-9][0-9.]*[0-9])", r"rayVersion:\s*['\"]?([0-9.]+)",
                    r"\bray([0-9]+\.[0-9]+\.[0-9]+)", r"\bray(?:\[[^\]]*\])?==([0-9.]+)")


def ray_versions(text: str) -> list[str]:
    return [v for p in VERSION_PATTERNS for v in re.findall(p, text)]


def test_every_ray_version_in_cluster_files_is_the_pinned_one():
    pin = pinned_ray()
    for path in sorted(p for p in CLUSTER.rglob("*") if p.is_file()):
        found = ray_versions(path.read_text())
        assert all(v == pin for v in found), (path, found, pin)
        if path in (AWS, RAYCLUSTER, RAYJOB, CLUSTER / "Dockerfile"):
            assert found, f"{path} names no Ray version"
    assert ray_versions("image: rayproject/ray:2.9.1-py311-gpu") == ["2.9.1"]  # the check bites


def test_images_are_pinned_and_match_the_projects_python():
    pin = pinned_ray()
    lo, hi = re.search(r'requires-python = ">=3\.(\d+),<3\.(\d+)"',
                       (ROOT / "pyproject.toml").read_text()).groups()
    images = [load(AWS)["docker"]["image"],
              (CLUSTER / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0]]
    images += [c["image"] for c in containers(load(RAYCLUSTER)["spec"])]
    for image in images:
        tag = image.rsplit(":", 1)[1]
        assert pin in tag, image
        py = re.search(r"py3(\d+)", tag)
        assert py and int(lo) <= int(py.group(1)) < int(hi), image


def inline_secrets(doc, where: str = "") -> list[str]:
    """Places in a parsed YAML document where a secret-looking value is written inline."""
    found = []
    if isinstance(doc, dict):
        if doc.get("kind") == "Secret" and ("data" in doc or "stringData" in doc):
            found.append(f"{where}: a Secret with its data")
        if "name" in doc and "value" in doc and SECRET_NAME.fullmatch(str(doc["name"])):
            found.append(f"{where}: env {doc['name']} has an inline value")
        for key, value in doc.items():
            is_ref = key == "secretName" or str(value).startswith(("~/", "/"))  # a name, a file
            if SECRET_NAME.fullmatch(str(key)) and isinstance(value, (str, int)) and not is_ref:
                found.append(f"{where}.{key}")
            found += inline_secrets(value, f"{where}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            found += inline_secrets(item, f"{where}[{i}]")
    elif isinstance(doc, str):
        if re.search(r"(AKIA|ASIA)[A-Z0-9]{16}", doc) or re.search(
                r"(?i)(secret_access_key|password|auth_token|tracking_token)=\S", doc):
            found.append(f"{where}: {doc[:40]!r}")
    return found


def test_no_secret_is_written_inline():
    for path in sorted(CLUSTER.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert inline_secrets(doc, path.name) == []
        env = load(path).get("env_vars", {}) if path.name == "runtime_env.yaml" else {}
        assert not [k for k in env if SECRET_NAME.fullmatch(k)]
    text = "\n".join(p.read_text() for p in CLUSTER.rglob("*") if p.is_file())
    assert not re.search(r"(AKIA|ASIA)[A-Z0-9]{16}", text)
    # the check finds what it is for
    bad = {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}],
           "env_vars": {"MLFLOW_TRACKING_TOKEN": "t"}, "cmd": "RAY_AUTH_TOKEN= auth_token=abc"}
    assert len(inline_secrets(bad)) == 3


def test_cluster_readme_names_files_that_exist():
    text = (CLUSTER / "README.md").read_text()
    paths = set(re.findall(r"\bcluster/[\w./-]+\.(?:yaml|md)\b|cluster/Dockerfile\b", text))
    assert paths
    for p in paths:
        assert (ROOT / p).is_file(), p


def dockerfile_steps(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (ln.strip() for ln in joined.splitlines())
            if line and not line.startswith("#")]


def cache_problems(steps: list[tuple[str, str]]) -> list[str]:
    """Why a code edit would rebuild the dependency layer: the dependencies must be installed
    from pyproject.toml alone before the whole tree is copied, then the project --no-deps."""
    copies = [i for i, (op, arg) in enumerate(steps) if op in ("COPY", "ADD")]
    tree = [i for i in copies if re.search(r"(^|\s)\.(/)?\s", steps[i][1] + " ")]
    deps = [i for i, (op, arg) in enumerate(steps) if op == "RUN" and "pip install" in arg and
            "--no-deps" not in arg]
    problems = []
    if not tree:
        problems.append("the project tree is never copied")
    if not deps:
        problems.append("no RUN pip install of the dependencies")
    if tree and deps and deps[0] > tree[0]:
        problems.append("dependencies are installed after the code is copied")
    early = [steps[i][1] for i in copies if not tree or i < tree[0]]
    if any("pyproject.toml" not in arg or arg.split()[-2:-1] == ["."] for arg in early):
        problems.append(f"copies before the dependencies hold more than pyproject.toml: {early}")
    last = [arg for op, arg in steps if op == "RUN" and "pip install" in arg][-1:]
    if not last or "--no-deps" not in last[0]:
        problems.append("the project itself is not installed with --no-deps after the copy")
    return problems


def test_dockerfile_installs_dependencies_before_copying_the_code():
    steps = dockerfile_steps((CLUSTER / "Dockerfile").read_text())
    assert steps[0][0] == "FROM"
    assert cache_problems(steps) == []
    # the check finds what it is for: the old order (copy everything, then install)
    old = dockerfile_steps("FROM x\nCOPY --chown=ray:users . /home/ray/tnn\n"
                           "RUN pip install --no-cache-dir -e /home/ray/tnn\n")
    assert "dependencies are installed after the code is copied" in cache_problems(old)
    early_tree = dockerfile_steps("FROM x\nCOPY . /app\nRUN pip install -r r.txt\n"
                                  "COPY . /app\nRUN pip install --no-deps -e /app\n")
    assert cache_problems(early_tree) != []
