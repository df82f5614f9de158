"""Errors a user can act on. Each message names the file, column or value at fault.

`redact` / `redacted` take credentials out of URIs before anything is printed, logged or stored.
"""

import re


class TnnError(Exception):
    """Base class of every error tnn raises on purpose."""


class DataError(TnnError, ValueError):
    """Input data is malformed: wrong shape, NaN/inf, bad labels, missing keys or files."""


class ConfigError(TnnError, ValueError):
    """A configuration value is unknown, of the wrong type, or impossible for the data."""


class NumericalError(TnnError, ArithmeticError):
    """Training diverged: a loss, an output or a parameter became NaN or inf."""


# --- credentials in URIs (every layer may print, log or store a URI: redact it first) --------

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]*@")


def redact(text: str) -> str:
    """`text` with the `user:password@` (or `token@`) of every URL in it replaced by `***@`:
    `http://u:p@mlflow:5000` -> `http://***@mlflow:5000`. Other text is unchanged."""
    return _USERINFO.sub(r"\g<scheme>***@", text) if isinstance(text, str) and "@" in text \
        else text


def redacted(obj):
    """`obj` (a config dict, list, tuple or string) with `redact` applied to every string."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redacted(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redacted(v) for v in obj) if type(obj) in (list, tuple) else obj
    return obj
