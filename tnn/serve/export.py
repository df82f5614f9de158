"""One modality of a fitted `Encoder` as a self-contained file: raw features -> unit embeddings.

`export_branch(encoder, "audio", folder)` writes `folder/program.pt2`, a `torch.export`
program of `Encoder.forward_audio` (standardiser, CCA projection if any, branch network,
L2 normalisation; inference mode, batch dimension dynamic), and `folder/meta.json`
(`{"format", "modality", "in_dim", "out_dim", "torch"}`). Loading needs torch alone:
`torch.export.load(path).module()` runs aten operators, no project code (`load_branch`, and
the MLflow pyfunc wrapper `tnn/tracking/pyfunc.py`, do exactly that).

Why torch.export: `torch.jit.trace` is deprecated in torch 2.13; a numpy op list would have
to follow every layer type of `tnn.core.model`. The exported graph is checked against
`Encoder.embed_*` in tests/serve/test_export.py (batch sizes 0, 1 and many), for the TNN
pipelines and for tnn-label's posterior readout (`MixPad`, weights in its buffers).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tnn.core.encoder import Affine, Encoder
from tnn.errors import ConfigError
from tnn.train.checkpoints import check_program

MODALITIES = ("audio", "visual")
PROGRAM, META = "program.pt2", "meta.json"


class _Branch(nn.Module):
    """One modality of an encoder as a plain `forward(x)` (what torch.export traces)."""

    def __init__(self, encoder: Encoder, modality: str) -> None:
        super().__init__()
        self.encoder, self.modality = encoder, modality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = self.encoder.forward_audio if self.modality == "audio" else self.encoder.forward_visual
        return fn(x)  # (N, D) -> (N, k), unit rows


def in_dim(encoder: Encoder, modality: str) -> int:
    return encoder.audio_dim if modality == "audio" else encoder.visual_dim


def example_input(encoder: Encoder, modality: str, rows: int = 2) -> np.ndarray:
    """`rows` copies of the standardiser's mean (a typical raw input, no data needed): the
    first `Affine` of the input stage (also inside a tnn-label readout)."""
    stage = encoder.audio_in if modality == "audio" else encoder.visual_in
    first = next(m for m in stage.modules() if isinstance(m, Affine))
    mean = first.mean.detach().cpu().numpy().astype(np.float32)
    return np.repeat(mean[None], rows, axis=0)  # (rows, D)


def export_branch(encoder: Encoder, modality: str, folder: str | os.PathLike) -> dict:
    """Write `program.pt2` + `meta.json` for one modality into `folder`; returns the meta."""
    if modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {MODALITIES}, got {modality!r}")
    module = _Branch(copy.deepcopy(encoder).cpu().eval(), modality).eval()
    x = torch.from_numpy(example_input(encoder, modality, rows=4))
    with torch.no_grad():
        out_dim = int(module(x).shape[1])
        program = torch.export.export(module, (x,),
                                      dynamic_shapes={"x": {0: torch.export.Dim.DYNAMIC}})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, folder / PROGRAM)
    meta = {"format": 1, "modality": modality, "in_dim": in_dim(encoder, modality),
            "out_dim": out_dim, "torch": torch.__version__.split("+")[0]}
    (folder / META).write_text(json.dumps(meta, indent=1))
    return meta


def load_branch(folder: str | os.PathLike):
    """(callable on float32 (N, D) arrays -> (N, k) arrays, meta): the exported program."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    module = torch.export.load(check_program(folder / PROGRAM)).module()

    @torch.no_grad()
    def embed(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
    return embed, meta
