"""A fitted retrieval encoder: standardisation -> optional linear projection -> optional network.

`Encoder` is what every method produces and what gets served: `embed_audio(x)` and
`embed_visual(y)` map raw features (N, Da) / (N, Dv) to L2-normalised rows of the common
space, so cosine similarity is a matrix product. It is a plain `torch.nn.Module` whose
parameters and buffers fully describe it (`state_dict` + `spec()` rebuild it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tnn.errors import DataError


class Affine(nn.Module):
    """x -> (x - mean) @ weight, stored as buffers (fitted in closed form, never trained)."""

    def __init__(self, mean: np.ndarray, weight: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)))
        self.register_buffer("weight", torch.as_tensor(np.asarray(weight, np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.weight  # (N, Din) -> (N, Dout)


def standardizer(x: np.ndarray, scale: bool = True, eps: float = 1e-6) -> Affine:
    """Per-feature z-scoring fitted on `x` (constant features are centred, not scaled);
    `scale=False` only centres."""
    x = np.asarray(x, np.float64)
    std = x.std(axis=0) if scale else np.ones(x.shape[1])
    return Affine(x.mean(axis=0), np.diag(1.0 / np.where(std > eps, std, 1.0)))


class Encoder(nn.Module):
    """Raw features -> common space. `audio_in`/`visual_in` are `Affine` maps or an
    `nn.Sequential` of them (standardisation, then for CCA methods the projection); `net`
    (optional) is a `TwoBranchNet` on top."""

    def __init__(self, audio_in: nn.Module, visual_in: nn.Module,
                 net: nn.Module | None = None, audio_dim: int = 0, visual_dim: int = 0) -> None:
        super().__init__()
        self.audio_in, self.visual_in, self.net = audio_in, visual_in, net
        self.audio_dim = audio_dim or _in_width(audio_in)
        self.visual_dim = visual_dim or _in_width(visual_in)

    def forward_audio(self, x: torch.Tensor) -> torch.Tensor:
        z = self.audio_in(x)
        z = z if self.net is None else self.net.encode_audio(z)
        return nn.functional.normalize(z, dim=1)  # (N, k), unit rows

    def forward_visual(self, y: torch.Tensor) -> torch.Tensor:
        z = self.visual_in(y)
        z = z if self.net is None else self.net.encode_visual(z)
        return nn.functional.normalize(z, dim=1)

    @torch.no_grad()
    def embed_audio(self, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        return self._embed(x, self.audio_dim, self.forward_audio, "audio", batch_size)

    @torch.no_grad()
    def embed_visual(self, y: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        return self._embed(y, self.visual_dim, self.forward_visual, "visual", batch_size)

    def _embed(self, x, width, fn, what, batch_size) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != width:
            raise DataError(f"{what} features must have shape (N, {width}); got {x.shape}")
        was_training = self.training
        self.eval()
        try:
            parts = [fn(torch.from_numpy(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)


class Ensemble(nn.Module):
    """Several two-branch nets as one: each member's unit embedding scaled by 1/sqrt(E) and
    concatenated, so the cosine similarity of the ensemble is the mean of the members'."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(nets)

    def _cat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        scale = len(parts) ** -0.5
        return torch.cat([nn.functional.normalize(p, dim=1) * scale for p in parts], dim=1)

    def encode_audio(self, x: torch.Tensor) -> torch.Tensor:
        return self._cat([m.encode_audio(x) for m in self.members])  # (N, E * k)

    def encode_visual(self, y: torch.Tensor) -> torch.Tensor:
        return self._cat([m.encode_visual(y) for m in self.members])


def _in_width(module: nn.Module) -> int:
    first = module[0] if isinstance(module, nn.Sequential) else module
    return int(first.mean.shape[0])
