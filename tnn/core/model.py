"""Two-branch embedding network: one MLP per modality into a common space.

The paper's branch (Zeng et al., TOMM 2020; the authors' Keras code): Dense(100) tanh,
Dropout 0.1, three times, then Dense(10) tanh, Dropout 0.1, sigmoid. One network serves both
modalities when their inputs have the same width (the two-stage pipeline feeds it 10-d C-CCA
projections): ``TwoBranchNet.from_preset("paper", 10, 10)``. ``PRESETS`` holds that branch and
wider, normalised variants for the end-to-end pipeline on raw features.

Linear layers use Glorot-uniform weights and zero biases (Keras' Dense default), so two models
built after the same ``torch.manual_seed`` are identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tnn.errors import ConfigError, DataError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
NORMS = ("none", "batchnorm", "layernorm")
FINALS = ("sigmoid", "none", "l2")


@dataclass(frozen=True)
class BranchConfig:
    """One modality's MLP:
    ``[input_norm] -> (Linear -> [norm] -> activation -> Dropout) per hidden width
    -> Linear(out_dim) -> [activation -> Dropout if head_activation] -> final``."""

    hidden: tuple[int, ...] = (100, 100, 100)
    """Widths of the hidden layers, in order (may be empty: a linear map)."""
    out_dim: int = 10
    """Width of the common embedding space."""
    activation: str = "tanh"
    """Activation after each hidden layer: tanh, relu, gelu or sigmoid."""
    dropout: float = 0.1
    """Dropout probability after each activation, in [0, 1)."""
    norm: str = "none"
    """Normalisation after each hidden Linear, before the activation: none, batchnorm, layernorm."""
    input_norm: str = "none"
    """Normalisation of the raw input: none, batchnorm (per-feature standardisation), layernorm."""
    head_activation: bool = True
    """Apply ``activation`` and dropout after the output Linear (the authors' Dense(10) tanh)."""
    final: str = "sigmoid"
    """Output map: sigmoid (paper), none, or l2 (unit-norm rows)."""

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else None
        if hidden is None or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ConfigError("BranchConfig.hidden must be a sequence of positive ints, "
                              f"got {self.hidden!r}")
        object.__setattr__(self, "hidden", hidden)  # YAML gives lists; keep the config hashable
        if not isinstance(self.out_dim, int) or self.out_dim < 1:
            raise ConfigError(f"BranchConfig.out_dim must be a positive int, got {self.out_dim!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"BranchConfig.activation must be one of {tuple(ACTIVATIONS)}, "
                              f"got {self.activation!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"BranchConfig.dropout must lie in [0, 1), got {self.dropout!r}")
        for name in ("norm", "input_norm"):
            if getattr(self, name) not in NORMS:
                raise ConfigError(f"BranchConfig.{name} must be one of {NORMS}, "
                                  f"got {getattr(self, name)!r}")
        if self.final not in FINALS:
            raise ConfigError(f"BranchConfig.final must be one of {FINALS}, got {self.final!r}")


PRESETS: dict[str, BranchConfig] = {
    "paper": BranchConfig(),
    "wide": BranchConfig(hidden=(512, 512), activation="gelu", norm="layernorm",
                         input_norm="layernorm", head_activation=False, final="l2"),
    "wide_bn": BranchConfig(hidden=(512, 512), activation="relu", norm="batchnorm",
                            input_norm="batchnorm", head_activation=False, final="l2"),
}


def _norm(kind: str, width: int) -> list[nn.Module]:
    if kind == "none":
        return []
    return [nn.BatchNorm1d(width) if kind == "batchnorm" else nn.LayerNorm(width)]


class Branch(nn.Module):
    """The MLP of one modality: (B, in_dim) -> (B, cfg.out_dim)."""

    def __init__(self, in_dim: int, cfg: BranchConfig, name: str = "branch") -> None:
        super().__init__()
        if not isinstance(in_dim, int) or in_dim < 1:
            raise ConfigError(f"{name} input width must be a positive int, got {in_dim!r}")
        self.in_dim, self.cfg, self.name = in_dim, cfg, name
        act, layers, width = ACTIVATIONS[cfg.activation], _norm(cfg.input_norm, in_dim), in_dim
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), *_norm(cfg.norm, h), act(), nn.Dropout(cfg.dropout)]
            width = h
        layers.append(nn.Linear(width, cfg.out_dim))
        if cfg.head_activation:
            layers += [act(), nn.Dropout(cfg.dropout)]
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise DataError(f"{self.name} input must be (B, {self.in_dim}), got {tuple(x.shape)}")
        z = self.layers(x)  # (B, out_dim)
        if self.cfg.final == "sigmoid":
            return torch.sigmoid(z)  # (B, out_dim) in (0, 1)
        if self.cfg.final == "l2":
            return F.normalize(z, dim=1)  # (B, out_dim), unit rows
        return z


class TwoBranchNet(nn.Module):
    """Audio branch and visual branch into one ``out_dim``-d space, or one shared branch.

    ``shared=True`` uses a single network for both modalities; it needs equal input widths and
    one config. ``forward`` returns ``{"audio_emb": (B, out_dim), "visual_emb": (B, out_dim)}``,
    the keyword arguments of `tnn.core.losses.combined_loss` (a modality passed as None is left out).
    """

    def __init__(self, audio_dim: int, visual_dim: int, audio: BranchConfig = PRESETS["paper"],
                 visual: BranchConfig | None = None, shared: bool = False) -> None:
        super().__init__()
        visual = audio if visual is None else visual
        if shared and audio_dim != visual_dim:
            raise ConfigError(f"shared=True needs equal input widths, got audio_dim={audio_dim} "
                              f"and visual_dim={visual_dim}; use shared=False (one branch each)")
        if shared and audio != visual:
            raise ConfigError("shared=True needs one config for both modalities; got different "
                              f"audio and visual BranchConfig: {audio} vs {visual}")
        if audio.out_dim != visual.out_dim:
            raise ConfigError("both branches must map into one space: "
                              f"audio.out_dim={audio.out_dim}, visual.out_dim={visual.out_dim}")
        self.shared = shared
        self.audio_branch = Branch(audio_dim, audio, "shared branch" if shared else "audio")
        self.visual_branch = None if shared else Branch(visual_dim, visual, "visual")

    @classmethod
    def from_preset(cls, name: str, audio_dim: int, visual_dim: int,
                    shared: bool | None = None) -> "TwoBranchNet":
        """Both branches from ``PRESETS[name]``; ``shared=None`` shares iff the widths are equal."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; expected one of {tuple(PRESETS)}")
        shared = audio_dim == visual_dim if shared is None else shared
        return cls(audio_dim, visual_dim, PRESETS[name], PRESETS[name], shared=shared)

    def encode_audio(self, x: torch.Tensor) -> torch.Tensor:
        return self.audio_branch(x)  # (B, audio_dim) -> (B, out_dim)

    def encode_visual(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.audio_branch if self.visual_branch is None else self.visual_branch
        return branch(x)  # (B, visual_dim) -> (B, out_dim)

    def forward(self, audio: torch.Tensor | None = None,
                visual: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = {}
        if audio is not None:
            out["audio_emb"] = self.encode_audio(audio)  # (B, out_dim)
        if visual is not None:
            out["visual_emb"] = self.encode_visual(visual)  # (B, out_dim)
        return out

