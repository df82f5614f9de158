"""The paper's kernel and deep CCA baselines: kcca, c-kcca, dcca, c-dcca.

Each entry of `BASELINES` is `fit(train: Pairs, cfg: BaselinesConfig, cca: CCAConfig, log)
-> Encoder`. The common dimension k, the ridge (unless a sub-config overrides it) and, for the
c- variants, the cluster blend beta come from the `CCAConfig`; the plain variants use beta = 1.
(The linear cca / c-cca live in `tnn.methods.tnn.fit_linear`.)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from tnn.methods.dcca import DCCAConfig, fit_deep
from tnn.methods.kcca import KCCAConfig, fit_kcca
from tnn.core.encoder import Encoder
from tnn.errors import ConfigError
from tnn.data.sources import Pairs


def _c_dcca_default() -> DCCAConfig:
    return DCCAConfig(hidden=(20, 20), dropout=0.0, head_activation=True)


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    """Settings of the kernel and deep baselines."""

    kcca: KCCAConfig = dataclasses.field(default_factory=KCCAConfig)
    """Nystrom kernel CCA, shared by kcca and c-kcca."""
    dcca: DCCAConfig = dataclasses.field(default_factory=DCCAConfig)
    """Deep CCA: BatchNorm, 3 x Dense(100, sigmoid), dropout 0.1, Dense(k)."""
    c_dcca: DCCAConfig = dataclasses.field(default_factory=_c_dcca_default)
    """Deep cluster-CCA: BatchNorm, Dense 20-20-k, sigmoid on all, no dropout (the paper gives
    none for C-DCCA; with 0.1 it scored 0.77 vs 0.82 validation MAP on the bundled data)."""

    def __post_init__(self) -> None:
        for name, cls in (("kcca", KCCAConfig), ("dcca", DCCAConfig), ("c_dcca", DCCAConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"baselines.{name} must be a {cls.__name__}, "
                                  f"got {type(getattr(self, name)).__name__}")


Fit = Callable[[Pairs, BaselinesConfig, object, Callable[[str], None]], Encoder]

BASELINES: dict[str, Fit] = {
    "kcca": lambda train, cfg, cca, log: fit_kcca(train, cfg.kcca, cca, 1.0, log),
    "c-kcca": lambda train, cfg, cca, log: fit_kcca(train, cfg.kcca, cca, cca.beta, log),
    "dcca": lambda train, cfg, cca, log: fit_deep(train, cfg.dcca, cca, 1.0, log),
    "c-dcca": lambda train, cfg, cca, log: fit_deep(train, cfg.c_dcca, cca, cca.beta, log),
}

SUB_CONFIG = {"kcca": "kcca", "c-kcca": "kcca", "dcca": "dcca", "c-dcca": "c_dcca"}


def baseline_params(name: str, cfg: BaselinesConfig, cca) -> dict:
    """The settings a baseline used, for the results JSON: the CCA config with the beta it
    ran with, and its own sub-config under `name`."""
    from tnn.config import to_dict
    beta = cca.beta if name.startswith("c-") else 1.0
    return {**to_dict(cca), "beta": beta, name: to_dict(getattr(cfg, SUB_CONFIG[name]))}


__all__ = ["BASELINES", "BaselinesConfig", "DCCAConfig", "KCCAConfig", "baseline_params",
           "fit_deep", "fit_kcca"]
