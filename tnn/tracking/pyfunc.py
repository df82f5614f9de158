"""MLflow pyfunc model (models from code): the two exported encoder branches of one model.

Logged by `tnn.tracking.registry.log_model` with `python_model=<this file>` and the artifacts
`audio` and `visual`, each a folder holding `program.pt2` (torch.export, `tnn.serve.export`)
and `meta.json`. It imports only mlflow, torch and numpy, so
`mlflow.pyfunc.load_model("models:/tnn@champion")` and
`mlflow models serve -m models:/tnn@champion --env-manager local` work where the tnn package
is not installed. Input: float32 (N, in_dim) of one modality (an array, a list of rows or a
DataFrame of in_dim columns); the branch is the `modality` param ("audio", the default, or
"visual"; the signature's ParamSchema). Output: float32 (N, out_dim), L2-normalised rows.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import torch

MODALITIES = ("audio", "visual")
DEFAULT_MODALITY = "audio"
BATCH = 8192


class EncoderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.meta, self.modules = {}, {}
        for modality in MODALITIES:
            folder = Path(context.artifacts[modality])
            self.meta[modality] = json.loads((folder / "meta.json").read_text())
            self.modules[modality] = torch.export.load(folder / "program.pt2").module()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        modality = (params or {}).get("modality") or DEFAULT_MODALITY
        if modality not in self.modules:
            raise ValueError(f"params.modality must be 'audio' or 'visual'; got {modality!r}")
        x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        d, k = self.meta[modality]["in_dim"], self.meta[modality]["out_dim"]
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"{modality} features must have shape (N, {d}); got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, k), np.float32)
        with torch.no_grad():
            parts = [self.modules[modality](torch.from_numpy(np.ascontiguousarray(x[i:i + BATCH])))
                     for i in range(0, len(x), BATCH)]
        return torch.cat(parts).numpy()


mlflow.models.set_model(EncoderModel())
