"""tnn-label's readout (`tnn.methods.label`, steps 2-3) after its network was trained elsewhere
(Ray Train: `tnn.ray.label_loop`, on rank 0): the same choices on the validation split, the
kernel part fitted on a bounded sample of the fit set.

Given the trained `ProxyNet` (on standardised inputs), the standardisers, `rows` (standardised
fit rows: all of them, or a seeded sample of at most `TrainJobConfig.readout_rows`) and `val`
(raw validation rows):
1. the deep posterior's scale s * t, t in `temps` (`pick_scale`);
2. cluster-KCCA fitted on `rows` and its centroid posterior's scale (`kernel_scales`);
3. the kernel ridge classifier (`tnn.methods.krr.pick_krr`), its setting picked on validation,
   when `krr` is one of the `components`; it takes raw features, as in `fit_label` (its own
   scaling is one of its choices), so it is fitted on `rows` mapped back through the
   standardisers (`unstandardised`);
4. the mixture weights over the `components` (`mix_grid`, `pick_weights`), then the pairwise
   re-split (`tnn.methods.pairsplit.mixture_split`), whose regressions take raw features too
   (fitted on the same unstandardised rows); with `fallback`, plain cluster-KCCA when it scores
   higher on validation than the mixture;
5. the closed-form parts with a weight > 0 (or the fallback) refitted on `rows` + the
   validation rows, as `fit_label` refits them on its whole training data (the kernel ridge
   classifier's and the re-split's on the raw form of the same rows).
Cluster-KCCA and the kernel ridge classifier cost O(n m (D + m)) for n rows and m landmarks (`KCCAConfig.rank`), which is why
n is bounded on the distributed path; the network itself saw every fit row.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from tnn.core.encoder import Affine, Encoder
from tnn.data.pairs import Pairs
from tnn.methods.kcca import fit_kcca
from tnn.methods.label import LabelConfig, ProxyNet
from tnn.methods.krr import krr_probs, pick_krr
from tnn.methods.pairsplit import mixture_split, refit_split
from tnn.methods.readout import (DeepProbs, MixPad, kernel_probs, map_of, path_embed,
                                 pick_scale, pick_weights, probs_of)

Log = Callable[[str], None]


def deep_encoder(net: ProxyNet, audio_in: nn.Module, visual_in: nn.Module,
                 dims: tuple[int, int], scale: float) -> Encoder:
    """The network's posterior readout alone at `scale` (w = 1): what early stopping scores
    (`tnn.methods.label.posterior_rows`) and the per-epoch checkpoints hold."""
    a = DeepProbs(audio_in, net.net.audio_branch, net.proxies, scale)
    v = DeepProbs(visual_in, net.net.visual_branch, net.proxies, scale)
    return Encoder(MixPad([a], [1.0], 0), MixPad([v], [1.0], 1), None, *dims)


def standardised(val: Pairs, audio_in: nn.Module, visual_in: nn.Module) -> Pairs:
    """`val` through the input stages (the rows the network and `rows` live in)."""
    with torch.no_grad():
        a, v = (m(torch.from_numpy(x)).numpy() for m, x in ((audio_in, val.audio),
                                                              (visual_in, val.visual)))
    return Pairs(a, v, val.labels, val.clip_ids, val.class_names, val.name)


def unstandardised(rows: Pairs, audio_in: nn.Module, visual_in: nn.Module) -> Pairs:
    """Standardised `rows` mapped back to raw features: the inverse x = z / d + mean of each
    standardiser `Affine` x -> (x - mean) @ diag(d), in float64, then float32 as raw rows are
    (equal to the raw rows up to float32 rounding)."""
    def back(z: np.ndarray, stage: nn.Module) -> np.ndarray:
        w = stage.weight.double().numpy() if isinstance(stage, Affine) else None
        if w is None or w.shape[0] != w.shape[1] or np.count_nonzero(w - np.diag(np.diag(w))):
            raise ValueError("tnn-label's readout needs a per-feature standardiser as its input "
                             f"stage to recover raw features, got {stage}")
        return (np.asarray(z, np.float64) / np.diag(w) + stage.mean.double().numpy()
                ).astype(np.float32)
    return Pairs(back(rows.audio, audio_in), back(rows.visual, visual_in), rows.labels,
                 rows.clip_ids, rows.class_names, rows.name)


def joined(rows: Pairs, more: Pairs) -> Pairs:
    """The rows of both, in order (clip ids made unique by a prefix)."""
    ids = np.concatenate([np.char.add("fit:", rows.clip_ids.astype(str)),
                          np.char.add("val:", more.clip_ids.astype(str))])
    return Pairs(np.concatenate([rows.audio, more.audio]), np.concatenate([rows.visual, more.visual]),
                 np.concatenate([rows.labels, more.labels]), ids, rows.class_names, rows.name)


def _kernel(rows: Pairs, audio_in: nn.Module, visual_in: nn.Module, cfg: LabelConfig, log: Log):
    """Cluster-KCCA posteriors fitted on standardised `rows`, taking raw inputs."""
    ka, kv = kernel_probs(rows, cfg.kcca, cfg.cca, log)
    ka.path, kv.path = nn.Sequential(audio_in, ka.path), nn.Sequential(visual_in, kv.path)
    return ka, kv


def choose_readout(net: ProxyNet, audio_in: nn.Module, visual_in: nn.Module, rows: Pairs,
                   val: Pairs, cfg: LabelConfig, log: Log = print) -> tuple[Encoder, dict]:
    """(the encoder, the choices as numbers) of the module docstring; `net` in eval mode."""
    dims = (val.audio.shape[1], val.visual.shape[1])
    net.eval()
    comps = tuple(cfg.components)
    needs_raw = cfg.split.max_pairs or "krr" in comps
    raw = unstandardised(rows, audio_in, visual_in) if needs_raw else rows  # else unused
    parts = _parts(net, audio_in, visual_in, rows, raw, val, cfg, log)
    probs = [(probs_of(parts[c][0], val.audio), probs_of(parts[c][1], val.visual)) for c in comps]
    weights, mixed = pick_weights(probs, val.labels, cfg.mix_grid, comps, log)
    split, split_map = mixture_split(probs, weights, raw, val, mixed, cfg.split, log)
    choice = {"readout_rows": rows.n, "mix_val_map": mixed, "fallback": 0, "left_out": 0,
              **{f"{c}_weight": float(w) for c, w in zip(comps, weights)},
              **{f"{c}_scale": float(parts[c][0].scale) for c in comps},
              **({"krr_global": float(parts["krr"][2].scaling == "global")}
                 if "krr" in comps else {}),
              **split_numbers(split, split_map)}
    mixed = split_map
    whole = joined(rows, standardised(val, audio_in, visual_in))
    if cfg.fallback:
        ka, kv, _ = parts["kernel"]
        plain = map_of(path_embed(ka.path, val.audio), path_embed(kv.path, val.visual), val.labels)
        log(f"  plain cluster-KCCA val MAP {plain:.4f}")
        if plain > mixed:
            ck = fit_kcca(whole, cfg.kcca, cfg.cca, cfg.cca.beta, log)
            return Encoder(nn.Sequential(audio_in, *ck.audio_in),
                           nn.Sequential(visual_in, *ck.visual_in), None, *dims), \
                {**choice, "fallback": 1}
    raw = joined(raw, val)
    chosen = [(_refit(c, parts[c], whole, raw, audio_in, visual_in, cfg, log), w)
              for c, w in zip(comps, weights) if w > 0]
    ws = [w for _, w in chosen]
    sa, sv = refit_split(split, raw.audio, raw.visual, raw.labels, val.num_classes)
    return Encoder(MixPad([m[0] for m, _ in chosen], ws, 0, sa),
                   MixPad([m[1] for m, _ in chosen], ws, 1, sv), None, *dims), choice


def split_numbers(split, val_map: float) -> dict:
    """The re-split's choice as numbers: C (0 = off), t and pair count per view, its val MAP."""
    on = split is not None
    return {"split_strength": float(split.strength) if on else 0.0,
            "split_temp_audio": float(split.temps[0]) if on else 0.0,
            "split_temp_visual": float(split.temps[1]) if on else 0.0,
            "split_pairs_audio": len(split.pairs[0]) if on else 0,
            "split_pairs_visual": len(split.pairs[1]) if on else 0, "split_val_map": val_map}


def _parts(net, audio_in, visual_in, rows: Pairs, raw: Pairs, val: Pairs, cfg: LabelConfig,
           log: Log) -> dict:
    """`tnn.methods.label.val_parts` with the trained network: {name: (audio, visual posterior
    modules taking raw inputs, setting to refit with)}; cluster-KCCA is fitted on the
    standardised `rows` and composed with the standardisers, the kernel ridge classifier on
    `raw` (the same rows unstandardised)."""
    parts = {}
    if "deep" in cfg.components:
        da = DeepProbs(audio_in, net.net.audio_branch, net.proxies, cfg.scale)
        dv = DeepProbs(visual_in, net.net.visual_branch, net.proxies, cfg.scale)
        parts["deep"] = (da, dv, pick_scale(da, dv, [cfg.scale * t for t in cfg.temps], val,
                                            "deep", log))
    if "kernel" in cfg.components or cfg.fallback:
        ka, kv = _composed(kernel_probs(rows, cfg.kcca, cfg.cca, log), audio_in, visual_in)
        parts["kernel"] = (ka, kv, pick_scale(ka, kv, cfg.kernel_scales, val, "kernel", log))
    if "krr" in cfg.components:
        setting, ra, rv = pick_krr(raw, val, cfg.krr, log)
        parts["krr"] = (ra, rv, setting)
    return parts


def _composed(mods: tuple, audio_in: nn.Module, visual_in: nn.Module) -> tuple:
    """Posterior modules on standardised inputs -> the same on raw inputs (paths composed)."""
    a, v = mods
    a.path, v.path = nn.Sequential(audio_in, a.path), nn.Sequential(visual_in, v.path)
    return a, v


def _refit(name: str, part: tuple, whole: Pairs, raw: Pairs, audio_in, visual_in,
           cfg: LabelConfig, log: Log) -> tuple:
    """A chosen component for the final encoder: the network as trained; the closed-form ones
    refitted on rows + validation (`whole` standardised, `raw` not) at their picked settings."""
    a, v, setting = part
    if name == "kernel":
        a, v = _composed(kernel_probs(whole, cfg.kcca, cfg.cca, log), audio_in, visual_in)
        a.scale = v.scale = setting
    elif name == "krr":
        a, v = krr_probs(raw, cfg.krr, setting)
    return a, v
