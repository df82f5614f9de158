"""Synthetic VEGAS-shaped pairs whose classes are separable only through a non-linear map.

Generative model (per clip i with class c and mode m):
    z_i = s * mu[c, m] + sigma_z * eps                 shared latent, (latent,)
    audio_i  = tanh(z_i @ Wa) @ Ua + sigma * noise    (audio_dim,)  default 128
    visual_i = tanh(z_i @ Wv) @ Uv + sigma * noise    (visual_dim,) default 1024
Each class has `modes` centres in +/- pairs (mu and -mu) with a random sign s, so every
class-conditional distribution is symmetric about the origin. tanh is odd, so the class means
of both views are zero: no linear map separates the classes (cluster-CCA's class means carry
nothing), and after any linear projection the two modes of a class point in opposite
directions under cosine similarity. A non-linear encoder can fold the modes together.

Rows are generated in fixed blocks of `BLOCK` rows from `default_rng([seed, block])`, so the
streaming iterator and the in-memory call give bit-identical data whatever the chunking.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np

from tnn.errors import ConfigError
from tnn.data.pairs import Pairs, make_pairs

BLOCK = 4096
MAX_ROWS = 10**9  # rows are streamed, but their labels are held for the fold assignment


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    n: int = 20000
    seed: int = 0
    classes: int = 10
    audio_dim: int = 128
    visual_dim: int = 1024
    latent: int = 8
    modes: int = 2
    hidden: int = 64
    noise: float = 0.5
    spread: float = 0.35

    def __post_init__(self) -> None:
        if self.n < 1 or self.classes < 2 or self.modes < 2 or self.modes % 2:
            raise ConfigError(f"synthetic: need n >= 1, classes >= 2 and an even modes >= 2; "
                              f"got n={self.n}, classes={self.classes}, modes={self.modes}")
        sizes = {"seed": self.seed, "audio_dim": self.audio_dim, "visual_dim": self.visual_dim,
                 "latent": self.latent, "hidden": self.hidden}
        low = [f"{k}={v}" for k, v in sizes.items() if v < (0 if k == "seed" else 1)]
        if low or self.noise < 0 or self.spread < 0:
            got = ", ".join(low) or f"noise={self.noise}, spread={self.spread}"
            raise ConfigError(f"synthetic: need seed >= 0, widths >= 1, noise and spread >= 0; "
                              f"got {got}")
        limits = {"n": (self.n, MAX_ROWS), "classes": (self.classes, 10_000),
                  "modes": (self.modes, 64), "latent": (self.latent, 1024),
                  "hidden": (self.hidden, 4096), "audio_dim": (self.audio_dim, 65536),
                  "visual_dim": (self.visual_dim, 65536),
                  "hidden x width": (self.hidden * max(self.audio_dim, self.visual_dim), 2**26)}
        over = [f"{k}={v} (at most {top})" for k, (v, top) in limits.items() if v > top]
        if over:
            raise ConfigError(f"synthetic: {', '.join(over)}")


def parse_spec(arg: str) -> dict:
    """`'20000'` or `'n=20000,seed=1,noise=0.3'` -> keyword arguments of `SyntheticSpec`;
    `ConfigError` naming the option and value that is not a number of the right kind."""
    if not arg:
        return {}
    if "=" not in arg:
        return {"n": _number(arg, int, "n", arg)}
    fields = {f.name: f.type for f in dataclasses.fields(SyntheticSpec)}
    out = {}
    for item in arg.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in fields:
            raise ConfigError(f"synthetic: unknown option {key!r}; known: {', '.join(fields)}")
        out[key] = _number(value, float if fields[key] == "float" else int, key, arg)
    return out


def _number(text: str, kind, key: str, arg: str):
    try:
        value = kind(text.strip())
    except ValueError:
        raise ConfigError(f"synthetic:{arg}: {key}={text.strip()!r} is not "
                          f"{'a number' if kind is float else 'an integer'}") from None
    if kind is float and not np.isfinite(value):
        raise ConfigError(f"synthetic:{arg}: {key}={value} is not finite")
    return value


def _params(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([spec.seed, 2**31 - 1])
    half = rng.normal(size=(spec.classes, spec.modes // 2, spec.latent))
    mu = np.concatenate([half, -half], axis=1)  # (C, M, L) symmetric modes
    mu /= np.linalg.norm(mu, axis=2, keepdims=True)
    g = lambda *s: rng.normal(size=s) / np.sqrt(s[0])  # noqa: E731
    return {"mu": mu * np.sqrt(spec.latent) / 2,
            "wa": g(spec.latent, spec.hidden) * 2, "ua": g(spec.hidden, spec.audio_dim),
            "wv": g(spec.latent, spec.hidden) * 2, "uv": g(spec.hidden, spec.visual_dim)}


def _block(spec: SyntheticSpec, params: dict, b: int, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([spec.seed, b])
    labels = rng.integers(spec.classes, size=rows)
    modes = rng.integers(spec.modes, size=rows)
    z = params["mu"][labels, modes] + spec.spread * rng.normal(size=(rows, spec.latent))
    audio = np.tanh(z @ params["wa"]) @ params["ua"]
    visual = np.tanh(z @ params["wv"]) @ params["uv"]
    audio += spec.noise * rng.normal(size=audio.shape)
    visual += spec.noise * rng.normal(size=visual.shape)
    ids = np.array([f"syn{spec.seed}-{b * BLOCK + i:09d}" for i in range(rows)])
    return {"audio": audio.astype(np.float32), "visual": visual.astype(np.float32),
            "labels": labels, "clip_ids": ids}


def iter_synthetic(chunk_rows: int = BLOCK, **kwargs) -> Iterator[Pairs]:
    """Yield the data set of `synthetic(**kwargs)` as consecutive `Pairs` of ~chunk_rows rows.

    Memory is bounded by the chunk size (rounded up to whole blocks), not by N.
    """
    spec = SyntheticSpec(**kwargs)
    params = _params(spec)
    per_chunk = max(1, -(-chunk_rows // BLOCK))
    nblocks = -(-spec.n // BLOCK)
    names = [f"class{c}" for c in range(spec.classes)]
    for start in range(0, nblocks, per_chunk):
        parts = [_block(spec, params, b, min(BLOCK, spec.n - b * BLOCK))
                 for b in range(start, min(start + per_chunk, nblocks))]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        yield make_pairs(cat["audio"], cat["visual"], cat["labels"], cat["clip_ids"],
                         names, f"synthetic:n={spec.n},seed={spec.seed}")


def synthetic_labels(**kwargs) -> np.ndarray:
    """Only the labels of `synthetic(**kwargs)`, cheaply (for fold assignment before writing)."""
    spec = SyntheticSpec(**kwargs)
    nblocks = -(-spec.n // BLOCK)
    return np.concatenate([np.random.default_rng([spec.seed, b]).integers(
        spec.classes, size=min(BLOCK, spec.n - b * BLOCK)) for b in range(nblocks)])


def synthetic(**kwargs) -> Pairs:
    """The whole synthetic data set in memory (see the module docstring for the model); a set
    larger than this machine's memory is refused (`jobs.make_shards` streams any size)."""
    spec = SyntheticSpec(**kwargs)
    need = spec.n * (spec.audio_dim + spec.visual_dim) * 4
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") \
        else need
    if need > memory:
        raise ConfigError(f"synthetic: n={spec.n} needs {need / 2**30:.0f} GiB in memory, more "
                          f"than this machine's {memory / 2**30:.0f} GiB; write it as shards "
                          "(jobs.make_shards streams it) and read those")
    chunks = list(iter_synthetic(chunk_rows=10**9, **kwargs))
    return chunks[0]
