"""Encoders whose input stages are more than affine maps, described module by module.

`tnn.train.checkpoints` saves an encoder as `encoder.pt` (state dict) + `encoder.json` (a spec
from which empty modules are rebuilt, then the state dict loaded). The TNN pipelines' spec is
a list of `Affine` shapes plus the method config of the network; tnn-label's readout (a
`MixPad` of class-posterior modules per side) and cluster-KCCA (standardiser, `KernelMap`,
`Affine`) are described here instead, as a tree of module types and shapes:

    {"format": 1, "kind": "modules", "audio_dim", "visual_dim", "num_classes",
     "audio_in": <module>, "visual_in": <module>, "net": null}
    <module> = {"type": "affine", "shape": [in, out]}
             | {"type": "sequential", "parts": [<module>, ...]}
             | {"type": "kernel_map", "kernel": "rbf" | "linear", "landmarks": [m, D]}
             | {"type": "branch", "in_dim", "name", "config": BranchConfig as a dict}
             | {"type": "deep_probs", "scale", "stage": <module>, "branch": <module>, "proxies": [C, k]}
             | {"type": "kernel_probs", "scale", "path": <module>, "centroids": [C, k]}
             | {"type": "krr_probs", "scale", "path": <module>, "classes": C}
             | {"type": "mix_pad", "side": 0 | 1, "probs": [<module>, ...],
                  "split": null | <module>}
             | {"type": "pair_split", "scale", "pairs": [[i, j], ...], "classes": C, "dim": D}

Every number the modules compute with is a parameter or buffer (so it is in the state dict:
`MixPad`'s weights and the pair re-split's regressions included), except the readout
temperatures (`scale`, the re-split's sharpness too) and the kernel type, which are part of the
structure and kept in the spec. A "mix_pad" without "split" (older files) has none.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tnn.config import from_dict, to_dict
from tnn.core.encoder import Affine, Encoder
from tnn.core.model import Branch, BranchConfig
from tnn.errors import ConfigError
from tnn.methods.kcca import KernelMap
from tnn.methods.krr import KRRProbs
from tnn.methods.pairsplit import PairSplit
from tnn.methods.readout import DeepProbs, KernelProbs, MixPad

KIND = "modules"


def is_modular(encoder: Encoder) -> bool:
    """True when an input stage holds anything but `Affine` maps (a readout, a kernel map)."""
    return any(not isinstance(m, (Affine, nn.Sequential))
               for stage in (encoder.audio_in, encoder.visual_in) for m in stage.modules())


def describe(m: nn.Module) -> dict:
    """The structure of one module (no values); `build` makes an empty one from it."""
    if isinstance(m, Affine):
        return {"type": "affine", "shape": list(m.weight.shape)}
    if isinstance(m, nn.Sequential):
        return {"type": "sequential", "parts": [describe(p) for p in m]}
    if isinstance(m, KernelMap):
        return {"type": "kernel_map", "kernel": m.kernel, "landmarks": list(m.landmarks.shape)}
    if isinstance(m, Branch):
        return {"type": "branch", "in_dim": m.in_dim, "name": m.name, "config": to_dict(m.cfg)}
    if isinstance(m, DeepProbs):
        return {"type": "deep_probs", "scale": float(m.scale), "stage": describe(m.stage),
                "branch": describe(m.branch), "proxies": list(m.proxies.shape)}
    if isinstance(m, KernelProbs):
        return {"type": "kernel_probs", "scale": float(m.scale), "path": describe(m.path),
                "centroids": list(m.centroids.shape)}
    if isinstance(m, KRRProbs):
        return {"type": "krr_probs", "scale": float(m.scale), "path": describe(m.path),
                "classes": int(m.bias.shape[0])}
    if isinstance(m, MixPad):
        return {"type": "mix_pad", "side": int(m.side), "probs": [describe(p) for p in m.probs],
                "split": None if m.split is None else describe(m.split)}
    if isinstance(m, PairSplit):
        pairs = [[int(m.e_i[k].argmax()), int(m.e_j[k].argmax())] for k in range(len(m.bias))]
        return {"type": "pair_split", "scale": float(m.scale), "pairs": pairs,
                "classes": int(m.e_i.shape[1]), "dim": int(m.mu.shape[1])}
    raise ConfigError(f"cannot save an encoder holding a {type(m).__name__} module "
                      "(tnn.train.module_spec describes the known ones)")


def build(spec: dict, limit: int | None = None) -> nn.Module:
    """An empty module of `describe`'s structure (values come from the state dict). `limit`:
    refuse (ValueError) any tensor of more elements, before allocating it."""
    kind, sub = spec.get("type"), (lambda s: build(s, limit))  # noqa: E731
    if kind == "affine":
        i, o = _shape(spec["shape"], 2, limit)
        return Affine(np.zeros(i), np.zeros((i, o)))
    if kind == "sequential":
        return nn.Sequential(*(sub(p) for p in spec["parts"]))
    if kind == "kernel_map":
        return KernelMap(np.zeros(_shape(spec["landmarks"], 2, limit)), 0.0, spec["kernel"])
    if kind == "branch":
        cfg = from_dict(BranchConfig, spec["config"])
        widths = (int(spec["in_dim"]), *cfg.hidden, cfg.out_dim)
        for i, o in zip(widths, widths[1:]):
            _shape([i, o], 2, limit)
        return Branch(widths[0], cfg, str(spec["name"]))
    if kind == "deep_probs":
        return DeepProbs(sub(spec["stage"]), sub(spec["branch"]),
                         torch.zeros(_shape(spec["proxies"], 2, limit)), float(spec["scale"]))
    if kind == "kernel_probs":
        return KernelProbs(sub(spec["path"]), np.zeros(_shape(spec["centroids"], 2, limit)),
                           float(spec["scale"]))
    if kind == "krr_probs":
        return KRRProbs(sub(spec["path"]), np.zeros(_shape([spec["classes"]], 1, limit)),
                        float(spec["scale"]))
    if kind == "mix_pad":
        split = spec.get("split")
        return MixPad([sub(p) for p in spec["probs"]], [1.0] * len(spec["probs"]),
                      int(spec["side"]), None if split is None else sub(split))
    if kind == "pair_split":
        return _pair_split(spec, limit)
    raise ValueError(f"unknown module type {kind!r}")


def _pair_split(spec: dict, limit: int | None) -> PairSplit:
    """An empty `PairSplit` of a "pair_split" spec (its pairs checked against the classes)."""
    pairs = [(int(i), int(j)) for i, j in spec["pairs"]]
    classes = _shape([spec["classes"]], 1, limit)[0]
    k, dim = _shape([len(pairs), spec["dim"]], 2, limit)
    if not pairs or any(not 0 <= i < classes or not 0 <= j < classes for i, j in pairs):
        raise ValueError(f"pair_split pairs {pairs} are not pairs of {classes} classes")
    _shape([k, classes], 2, limit)
    zero = (np.zeros(dim), np.zeros(dim), 0.0)
    return PairSplit(pairs, [zero] * k, classes, float(spec["scale"]))


def _shape(shape, ndim: int, limit: int | None) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != ndim or min(shape) < 0 or (limit is not None and
                                                 int(np.prod(shape, dtype=float)) > limit):
        raise ValueError(f"a tensor of shape {list(shape)} is not in encoder.pt")
    return shape


def modules_spec(encoder: Encoder, num_classes: int) -> dict:
    """The encoder's `encoder.json` (module docstring); its net must be None."""
    if encoder.net is not None:
        raise ConfigError("a modular encoder keeps everything in its input stages (net None)")
    return {"format": 1, "kind": KIND, "audio_dim": encoder.audio_dim,
            "visual_dim": encoder.visual_dim, "num_classes": num_classes,
            "audio_in": describe(encoder.audio_in), "visual_in": describe(encoder.visual_in),
            "net": None}


def build_encoder(spec: dict, limit: int | None = None) -> Encoder:
    """An empty `Encoder` of a `modules_spec` (load the state dict into it); `limit` as in
    `build`."""
    return Encoder(build(spec["audio_in"], limit), build(spec["visual_in"], limit), None,
                   int(spec["audio_dim"]), int(spec["visual_dim"]))


def load_modular(spec: dict, weights: dict) -> Encoder:
    """The encoder of a `modules_spec` with `weights` (encoder.pt's tensors) loaded, in eval
    mode. No module larger than the file's largest tensor is allocated; a structure that does
    not match the weights raises ValueError / RuntimeError (`load_encoder` names the file)."""
    limit = max((v.numel() for v in weights.values()), default=0)
    encoder = build_encoder(spec, limit)
    encoder.load_state_dict(weights)
    return encoder.eval()
