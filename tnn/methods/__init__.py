"""The retrieval methods `jobs.crossval` compares, by name: the registry and its config.

Each method is `fit(train: Pairs, cfg: MethodsConfig, log) -> Encoder`; the encoder embeds the
test fold's audio and visual features into one space compared by cosine similarity.

    cca, c-cca          closed-form linear (cluster-)CCA      `tnn.methods.linear.fit_linear`
    kcca, c-kcca        Nystrom kernel (cluster-)CCA           `tnn.methods.kcca.fit_kcca`
    dcca, c-dcca        deep (cluster-)CCA                     `tnn.methods.dcca.fit_deep`
    tnn-c-cca, tnn-e2e  the paper's triplet network            `tnn.methods.tnn.fit_tnn`
    tnn-label           proxy/triplet net, label-space readout  `tnn.methods.label.fit_label`

The common dimension k, the ridge (unless a baseline's sub-config overrides it) and, for the
c- variants, the cluster blend beta come from `MethodsConfig.cca`; the plain variants use
beta = 1. `e2e_default()` and `two_stage_default()` are the TNN settings the registry uses.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from tnn.config import to_dict
from tnn.core.encoder import Encoder
from tnn.data.pairs import Pairs
from tnn.errors import ConfigError
from tnn.methods.dcca import DCCAConfig, fit_deep
from tnn.methods.kcca import KCCAConfig, fit_kcca
from tnn.methods.label import LabelConfig, fit_label, label_default
from tnn.methods.linear import CCAConfig, fit_linear
from tnn.methods.tnn import TNNConfig, TrainConfig, fit_tnn


def e2e_default() -> TNNConfig:
    """tnn-e2e defaults, chosen on validation splits of the training folds (README)."""
    return TNNConfig(pipeline="e2e", preset="wide_bn", dropout=0.5,
                     train=TrainConfig(distance="cosine", margin=0.2, w_cca=0.1))


def two_stage_default() -> TNNConfig:
    """tnn-c-cca: the authors' network and loss; small batches (they used ~45) for enough steps."""
    return TNNConfig(train=TrainConfig(batch_size=64))


def c_dcca_default() -> DCCAConfig:
    """c-dcca: the authors' Dense 20-20-k, sigmoid on all layers, no dropout."""
    return DCCAConfig(hidden=(20, 20), dropout=0.0, head_activation=True)


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    """Settings of the kernel and deep baselines."""

    kcca: KCCAConfig = dataclasses.field(default_factory=KCCAConfig)
    """Nystrom kernel CCA, shared by kcca and c-kcca."""
    dcca: DCCAConfig = dataclasses.field(default_factory=DCCAConfig)
    """Deep CCA: BatchNorm, 3 x Dense(100, sigmoid), dropout 0.1, Dense(k)."""
    c_dcca: DCCAConfig = dataclasses.field(default_factory=c_dcca_default)
    """Deep cluster-CCA: BatchNorm, Dense 20-20-k, sigmoid on all, no dropout (the paper gives
    none for C-DCCA; with 0.1 it scored 0.77 vs 0.82 validation MAP on the bundled data)."""

    def __post_init__(self) -> None:
        for name, cls in (("kcca", KCCAConfig), ("dcca", DCCAConfig), ("c_dcca", DCCAConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"baselines.{name} must be a {cls.__name__}, "
                                  f"got {type(getattr(self, name)).__name__}")


@dataclasses.dataclass(frozen=True)
class MethodsConfig:
    """Settings of every method; `cca.dim` is the common-space width of all of them."""

    cca: CCAConfig = dataclasses.field(default_factory=CCAConfig)
    tnn_c_cca: TNNConfig = dataclasses.field(default_factory=two_stage_default)
    tnn_e2e: TNNConfig = dataclasses.field(default_factory=e2e_default)
    tnn_label: LabelConfig = dataclasses.field(default_factory=label_default)
    baselines: BaselinesConfig = dataclasses.field(default_factory=BaselinesConfig)
    """kcca, c-kcca, dcca, c-dcca (`BASELINES`); k, ridge and beta come from `cca`."""

    def with_dim(self, dim: int) -> "MethodsConfig":
        """The same config with the CCA dimension set everywhere."""
        def put(c):
            return dataclasses.replace(c, cca=dataclasses.replace(c.cca, dim=dim))
        return dataclasses.replace(self, cca=put(self).cca, tnn_c_cca=put(self.tnn_c_cca),
                                   tnn_e2e=put(self.tnn_e2e), tnn_label=put(self.tnn_label))


Fit = Callable[[Pairs, MethodsConfig, Callable[[str], None]], Encoder]
BaselineFit = Callable[[Pairs, BaselinesConfig, CCAConfig, Callable[[str], None]], Encoder]

BASELINES: dict[str, BaselineFit] = {
    "kcca": lambda train, cfg, cca, log: fit_kcca(train, cfg.kcca, cca, 1.0, log),
    "c-kcca": lambda train, cfg, cca, log: fit_kcca(train, cfg.kcca, cca, cca.beta, log),
    "dcca": lambda train, cfg, cca, log: fit_deep(train, cfg.dcca, cca, 1.0, log),
    "c-dcca": lambda train, cfg, cca, log: fit_deep(train, cfg.c_dcca, cca, cca.beta, log),
}
SUB_CONFIG = {"kcca": "kcca", "c-kcca": "kcca", "dcca": "dcca", "c-dcca": "c_dcca"}


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
    "tnn-label": lambda train, cfg, log: fit_label(train, cfg.tnn_label, log),
}


def baseline_params(name: str, cfg: BaselinesConfig, cca: CCAConfig) -> dict:
    """The settings a baseline used, for the results JSON: the CCA config with the beta it
    ran with, and its own sub-config under `name`."""
    beta = cca.beta if name.startswith("c-") else 1.0
    return {**to_dict(cca), "beta": beta, name: to_dict(getattr(cfg, SUB_CONFIG[name]))}


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
