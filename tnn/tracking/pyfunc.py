"""MLflow pyfunc model (models from code) for one exported encoder branch (`tnn.serve.export`).

Logged by `tnn.tracking.registry.log_encoder` with `python_model=<this file>` and the artifact
`encoder` = a folder holding `program.pt2` (torch.export) and `meta.json`. It imports only
mlflow, torch and numpy, so `mlflow.pyfunc.load_model("models:/NAME-audio@champion")` works
where the tnn package is not installed. Input: float32 (N, in_dim) (an array, a list of rows
or a DataFrame of in_dim columns); output: float32 (N, out_dim), L2-normalised rows.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import torch

BATCH = 8192


class EncoderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        folder = Path(context.artifacts["encoder"])
        self.meta = json.loads((folder / "meta.json").read_text())
        self.module = torch.export.load(folder / "program.pt2").module()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        x = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        d, k = self.meta["in_dim"], self.meta["out_dim"]
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"{self.meta['modality']} features must have shape (N, {d}); "
                             f"got {x.shape}")
        if len(x) == 0:
            return np.zeros((0, k), np.float32)
        with torch.no_grad():
            parts = [self.module(torch.from_numpy(np.ascontiguousarray(x[i:i + BATCH])))
                     for i in range(0, len(x), BATCH)]
        return torch.cat(parts).numpy()


mlflow.models.set_model(EncoderModel())
