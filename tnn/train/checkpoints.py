"""Checkpoint files of a TNN run and the encoder they carry (no Ray: readable anywhere).

A checkpoint directory holds `state.pt` (training state: net, optimiser, epoch, RNG states,
early-stopping history, best net, the final result), `config.json` (the resolved job config)
and the selected encoder as `encoder.pt` (state dict) + `encoder.json` (`encoder_spec`), from
which `load_encoder` rebuilds the modules without the training code. The early-stopping part
of the state is `tnn.methods.loop`'s.

Nothing read back is unpickled beyond tensors: both .pt files hold only tensors, numbers,
strings and containers (`plain`; the RNG states as tensors and tuples) and load with
`weights_only=True` (`safe_load`), so a payload planted in a run's storage is refused with one
line instead of running on resume. `check_program` does the same for a `torch.export` archive
before `torch.export.load` (which would unpickle entries the archive marks `use_pickle`).
The resolved config and the run note are stored with credentials in URIs redacted.

The run's note beside Ray's run folder (`RUN_INFO`: the MLflow run id, so a relaunched run
appends to the same MLflow run) is written and read here too, with `storage_of`, the
(path, filesystem) a Ray `RunConfig` takes for local or s3:// storage.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tnn.config import from_dict, to_dict
from tnn.core.encoder import Affine, Encoder
from tnn.data import storage
from tnn.errors import DataError, redacted
from tnn.methods.tnn import TNNConfig, build_net
from tnn.train.module_spec import KIND, is_modular, load_modular, modules_spec

RUN_INFO = "tnn_run.json"


def widths(dims: tuple[int, int], num_classes: int):
    """What `build_net` reads of a fit set: one row of each width, and the class count."""
    return types.SimpleNamespace(audio=np.zeros((1, dims[0]), np.float32),
                                 visual=np.zeros((1, dims[1]), np.float32), num_classes=num_classes)


def encoder_spec(encoder: Encoder, tnn: TNNConfig, num_classes: int) -> dict:
    """A small JSON description from which `load_encoder` rebuilds the modules."""
    if is_modular(encoder):  # tnn-label's readout, cluster-KCCA: `tnn.train.module_spec`
        return modules_spec(encoder, num_classes)
    def shapes(m):
        return [list(a.weight.shape) for a in (m if isinstance(m, nn.Sequential) else [m])]
    return {"format": 1, "audio_dim": encoder.audio_dim, "visual_dim": encoder.visual_dim,
            "audio_in": shapes(encoder.audio_in), "visual_in": shapes(encoder.visual_in),
            "num_classes": num_classes, "net": None if encoder.net is None else to_dict(tnn)}


def load_encoder(path: str | os.PathLike) -> Encoder:
    """The `Encoder` saved in a checkpoint directory (encoder.json + encoder.pt).

    Sizes come from what is there: the input stages are built from encoder.pt's tensors, the
    network is first built on the meta device (no memory) and its shapes compared with the
    file's, so a spec claiming huge widths is refused before anything is allocated."""
    path = Path(path)
    where = path / "encoder.json"
    try:
        spec = json.loads(where.read_text())
        weights = safe_load(path / "encoder.pt")
        if spec.get("kind") == KIND:  # `tnn.train.module_spec`
            return load_modular(spec, weights)
        a_in, v_in = (_affines(weights, s, len(spec[s])) for s in ("audio_in", "visual_in"))
        dims = (int(spec["audio_dim"]), int(spec["visual_dim"]))
        if dims != (_first(a_in).mean.shape[0], _first(v_in).mean.shape[0]):
            raise ValueError(f"widths {dims} differ from encoder.pt's input stages")
        net = None
        if spec["net"] is not None:
            build = lambda: build_net(from_dict(TNNConfig, spec["net"]), a_in, v_in,  # noqa
                                      widths(dims, int(spec["num_classes"])))
            with torch.device("meta"):
                _same_shapes(build(), weights, "net.")
            net = build()
        encoder = Encoder(a_in, v_in, net, *dims)
        encoder.load_state_dict(weights)
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as err:
        if isinstance(err, DataError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(f"{where}: not an encoder of this tnn ({type(err).__name__}: "
                        f"{first})") from None
    return encoder.eval()


def _first(m: nn.Module) -> nn.Module:
    return m[0] if isinstance(m, nn.Sequential) else m


def _affines(weights: dict, side: str, count: int) -> nn.Module:
    """The input stage `side` rebuilt from encoder.pt's tensors (count Affine maps)."""
    names = [side] if count == 1 else [f"{side}.{i}" for i in range(count)]
    parts = [Affine(weights[f"{n}.mean"].numpy(), weights[f"{n}.weight"].numpy()) for n in names]
    return parts[0] if count == 1 else nn.Sequential(*parts)


def _same_shapes(module: nn.Module, weights: dict, prefix: str) -> None:
    want = {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items() if k.startswith(prefix)}
    if want != have:
        key = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise ValueError(f"the network of the spec does not match encoder.pt at {key[0]!r}")


def safe_load(file: Path):
    """`torch.load` that unpickles nothing but tensors and plain containers (weights_only):
    a file holding any other object, e.g. a pickle payload planted in a run's storage, is
    refused with `DataError` before any of it runs."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{file}: missing") from None
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip), EOFError ...
        raise DataError(f"{file}: not a tnn checkpoint file: it holds objects other than "
                        f"tensors, or is corrupt ({type(err).__name__}: {_why(err)})") from None


def _why(err: Exception) -> str:
    """The telling line of a torch.load error (for weights_only: the refused global)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    why = next((line.split(":", 1)[1].strip() for line in lines
                if line.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    return why.split(" Please use")[0][:200]


def check_program(file: str | os.PathLike) -> Path:
    """Refuse a `torch.export` archive (program.pt2) that `torch.export.load` would unpickle
    beyond tensors: torch 2.13 loads weights and constants that the archive's own config
    marks `use_pickle` with `weights_only=False`, and "opaque" constants with `pickle.loads`,
    so a planted archive runs code. Our exports store raw tensors only; an entry marked for
    pickling, a non-tensor constant, or an embedded torch.save file that `weights_only=True`
    refuses, is a `DataError` naming the archive and the entry. Returns the path."""
    import zipfile
    file = Path(file)
    try:
        with zipfile.ZipFile(file) as z:
            for name in z.namelist():
                if name.endswith("_config.json") and "/data/" in name:
                    for key, meta in json.loads(z.read(name))["config"].items():
                        if meta.get("use_pickle") or not str(meta.get("path_name", "")) \
                                .startswith(("weight_", "tensor_")):
                            raise DataError(f"{file}: entry {key!r} is stored as a pickle; "
                                            "refused (exported encoders hold raw tensors)")
                elif z.read(name)[:4] == b"PK\x03\x04":
                    safe_load_bytes(z.read(name), f"{file}:{name}")
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{file}: not a torch.export archive ({type(err).__name__}: "
                        f"{err})") from None
    return file


def safe_load_bytes(data: bytes, where: str):
    """`safe_load` of an in-memory torch.save file."""
    import io
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{where}: holds objects other than tensors, or is corrupt "
                        f"({type(err).__name__}: {_why(err)})") from None


def save_checkpoint(path, state: dict, config: dict, encoder: Encoder, tnn: TNNConfig,
                    num_classes: int) -> None:
    """state.pt (training state), config.json (resolved), encoder.pt + encoder.json. Both .pt
    files hold tensors and plain containers only, so they load with `weights_only=True`."""
    path = Path(path)
    torch.save(plain(state), path / "state.pt")
    (path / "config.json").write_text(json.dumps(redacted(config), indent=1))
    torch.save({k: v.detach().cpu() for k, v in encoder.state_dict().items()}, path / "encoder.pt")
    spec = encoder_spec(encoder, tnn, num_classes)
    (path / "encoder.json").write_text(json.dumps(spec, indent=1))


def plain(x, where: str = "state"):
    """`x` as tensors, str/int/float/bool/None and dict/list/tuple of them (numpy scalars to
    Python, arrays to tensors): what `weights_only=True` loads. Anything else: TypeError."""
    if isinstance(x, np.generic):  # before float: np.float64 is a float subclass
        return x.item()
    if x is None or isinstance(x, (str, bool, int, float)):
        return x
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x))
    if isinstance(x, dict):
        out = {k: plain(v, f"{where}[{k!r}]") for k, v in x.items()}
        return collections.OrderedDict(out) if isinstance(x, collections.OrderedDict) else out
    if isinstance(x, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return items if isinstance(x, list) else tuple(items)
    raise TypeError(f"{where}: a {type(x).__name__} cannot be stored in a checkpoint "
                    "(tensors, numbers, strings and containers only)")


def load_state(path) -> dict:
    """state.pt of a checkpoint directory, loaded with `weights_only=True` (`safe_load`)."""
    state = safe_load(Path(path) / "state.pt")
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise DataError(f"{Path(path) / 'state.pt'}: not a tnn training state (no epoch)")
    return state


def rng_state() -> dict:
    """The torch, numpy and Python RNG states as tensors, ints and tuples (`plain`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    try:
        n = state["numpy"]
        torch.set_rng_state(state["torch"])
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["gauss"]))
        random.setstate(tuple(state["python"]))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise DataError(f"checkpoint: RNG state is malformed ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None


# --- the run's note and storage -------------------------------------------------------------

def storage_of(path: str):
    """(storage_path, storage_filesystem) for RunConfig: s3:// via tnn.data.storage, else absolute."""
    if storage.is_s3(path):
        bucket, key = storage.split_s3(path)
        return f"{bucket}/{key}".rstrip("/"), storage.s3_filesystem(bucket=bucket)
    return os.path.abspath(os.path.expanduser(path)), None


def read_run_info(storage_path: str, run_name: str) -> dict | None:
    """The job's note beside Ray's run folder (MLflow run id), or None for a new run."""
    fs, root = storage.filesystem(storage.join(storage.join(storage_path, run_name), RUN_INFO))
    try:
        with fs.open_input_stream(root) as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError):
        return None


def write_run_info(storage_path: str, run_name: str, info: dict) -> None:
    """The note beside the run folder, credentials in URIs redacted (compare `redact(uri)`)."""
    uri = storage.join(storage_path, run_name)
    fs, root = storage.filesystem(uri)
    if not storage.is_s3(uri):
        fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{RUN_INFO}") as f:
        f.write(json.dumps(redacted(info), indent=1).encode())
