"""The retrieval methods `jobs.crossval` compares, by name.

Each method is `fit(train: Pairs, cfg: MethodsConfig, log) -> Encoder`; the encoder embeds the
test fold's audio and visual features into one space compared by cosine similarity.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from tnn.methods.baselines import BASELINES, BaselinesConfig, baseline_params
from tnn.config import to_dict
from tnn.core.encoder import Encoder
from tnn.errors import ConfigError
from tnn.methods.tnn import CCAConfig, TNNConfig, TrainConfig, fit_linear, fit_tnn
from tnn.data.sources import Pairs


def _e2e_default() -> TNNConfig:
    """tnn-e2e defaults, chosen on validation splits of the training folds (README)."""
    return TNNConfig(pipeline="e2e", preset="wide_bn", dropout=0.5,
                     train=TrainConfig(distance="cosine", margin=0.2, w_cca=0.1))


def _two_stage_default() -> TNNConfig:
    """tnn-c-cca: the authors' network and loss; small batches (they used ~45) for enough steps."""
    return TNNConfig(train=TrainConfig(batch_size=64))


@dataclasses.dataclass(frozen=True)
class MethodsConfig:
    """Settings of every method; `cca.dim` is the common-space width of all of them."""

    cca: CCAConfig = dataclasses.field(default_factory=CCAConfig)
    tnn_c_cca: TNNConfig = dataclasses.field(default_factory=_two_stage_default)
    tnn_e2e: TNNConfig = dataclasses.field(default_factory=_e2e_default)
    baselines: BaselinesConfig = dataclasses.field(default_factory=BaselinesConfig)
    """kcca, c-kcca, dcca, c-dcca (`tnn.methods.baselines`); k, ridge and beta come from `cca`."""

    def with_dim(self, dim: int) -> "MethodsConfig":
        """The same config with the CCA dimension set everywhere."""
        def put(c):
            return dataclasses.replace(c, cca=dataclasses.replace(c.cca, dim=dim))
        return dataclasses.replace(self, cca=put(self).cca, tnn_c_cca=put(self.tnn_c_cca),
                                   tnn_e2e=put(self.tnn_e2e))


Fit = Callable[[Pairs, MethodsConfig, Callable[[str], None]], Encoder]


def _tnn(attr: str) -> Fit:
    return lambda train, cfg, log: fit_tnn(train, getattr(cfg, attr), log)[0]


def _baseline(name: str) -> Fit:
    return lambda train, cfg, log: BASELINES[name](train, cfg.baselines, cfg.cca, log)


METHODS: dict[str, Fit] = {  # the paper's order
    "cca": lambda train, cfg, log: fit_linear(train, cfg.cca, beta=1.0),
    "kcca": _baseline("kcca"),
    "dcca": _baseline("dcca"),
    "c-cca": lambda train, cfg, log: fit_linear(train, cfg.cca, beta=cfg.cca.beta),
    "c-kcca": _baseline("c-kcca"),
    "c-dcca": _baseline("c-dcca"),
    "tnn-c-cca": _tnn("tnn_c_cca"),
    "tnn-e2e": _tnn("tnn_e2e"),
}


def method_params(name: str, cfg: MethodsConfig) -> dict:
    """The settings a method used, for the results JSON."""
    if name in BASELINES:
        return baseline_params(name, cfg.baselines, cfg.cca)
    if name in ("cca", "c-cca"):
        d = to_dict(cfg.cca)
        return {**d, "beta": 1.0} if name == "cca" else d
    return to_dict(getattr(cfg, name.replace("-", "_")))


def get(name: str) -> Fit:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]
