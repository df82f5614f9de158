"""Refuse a downloaded model folder that would run code other than ours when MLflow loads it.

`mlflow.pyfunc.load_model` on a models-from-code model executes the logged Python file and
`torch.export.load` can unpickle archive entries; a model folder comes from the tracking
server's artifact store (often shared), so before loading one, `check_model_dir` requires:
- MLmodel (read with `yaml.safe_load`) names MLflow's models-from-code loader and a code file
  whose bytes equal this tnn's `tnn/tracking/pyfunc.py` (so the code that runs is ours);
- no pickle files (`*.pkl`, `*.pickle`, `*.cloudpickle`) anywhere in the folder;
- every `program.pt2` passes `tnn.train.checkpoints.check_program` (raw tensors only).
Any failure is one `DataError` line naming the folder and the file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tnn.errors import DataError
from tnn.train.checkpoints import check_program

CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
PICKLES = (".pkl", ".pickle", ".cloudpickle")


def our_code() -> bytes:
    return (Path(__file__).parent / "pyfunc.py").read_bytes()


def check_model_dir(folder: str | Path) -> Path:
    folder = Path(folder)
    try:
        spec = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
        flavor = spec["flavors"]["python_function"]
        loader, code = flavor.get("loader_module"), Path(str(flavor["model_code_path"])).name
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as err:
        raise DataError(f"{folder}/MLmodel: not a tnn model ({type(err).__name__}: {err})") from None
    if loader != CODE_LOADER:
        raise DataError(f"{folder}/MLmodel: loader_module {loader!r} is not {CODE_LOADER!r}; refused")
    code_file = folder / code
    if not code_file.is_file() or code_file.read_bytes() != our_code():
        raise DataError(f"{code_file}: model code differs from this tnn's pyfunc.py; refused "
                        "(MLflow would execute it)")
    for path in sorted(folder.rglob("*")):
        if path.suffix in PICKLES:
            raise DataError(f"{path}: a pickle file in the model folder; refused")
        if path.name == "program.pt2":
            check_program(path)
    return folder
