"""The retrieval methods `jobs.crossval` compares, by name.

Each method is `fit(train: Pairs, cfg: MethodsConfig, log) -> Encoder`; the encoder embeds the
test fold's audio and visual features into one space compared by cosine similarity.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from tnn.encoder import Encoder
from tnn.errors import ConfigError
from tnn.pipelines import CCAConfig, TNNConfig, TrainConfig, fit_linear, fit_tnn
from tnn.sources import Pairs


def _e2e_default() -> TNNConfig:
    """tnn-e2e defaults, chosen on validation splits of the training folds (README)."""
    return TNNConfig(pipeline="e2e", preset="wide_bn", dropout=0.5,
                     train=TrainConfig(distance="cosine", margin=0.2, w_cca=0.1))


@dataclasses.dataclass(frozen=True)
class MethodsConfig:
    """Settings of every method; `cca.dim` is the common-space width of all of them."""

    cca: CCAConfig = dataclasses.field(default_factory=CCAConfig)
    tnn_c_cca: TNNConfig = dataclasses.field(default_factory=TNNConfig)
    tnn_e2e: TNNConfig = dataclasses.field(default_factory=_e2e_default)

    def with_dim(self, dim: int) -> "MethodsConfig":
        """The same config with the CCA dimension set everywhere."""
        def put(c):
            return dataclasses.replace(c, cca=dataclasses.replace(c.cca, dim=dim))
        return MethodsConfig(dataclasses.replace(self.cca, dim=dim), put(self.tnn_c_cca),
                             put(self.tnn_e2e))


Fit = Callable[[Pairs, MethodsConfig, Callable[[str], None]], Encoder]


def _tnn(attr: str) -> Fit:
    return lambda train, cfg, log: fit_tnn(train, getattr(cfg, attr), log)[0]


METHODS: dict[str, Fit] = {
    "cca": lambda train, cfg, log: fit_linear(train, cfg.cca, beta=1.0),
    "c-cca": lambda train, cfg, log: fit_linear(train, cfg.cca, beta=cfg.cca.beta),
    "tnn-c-cca": _tnn("tnn_c_cca"),
    "tnn-e2e": _tnn("tnn_e2e"),
}


def method_params(name: str, cfg: MethodsConfig) -> dict:
    """The settings a method used, for the results JSON."""
    from tnn.config import to_dict
    if name in ("cca", "c-cca"):
        d = to_dict(cfg.cca)
        return {**d, "beta": 1.0} if name == "cca" else d
    return to_dict(getattr(cfg, name.replace("-", "_")))


def get(name: str) -> Fit:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]
