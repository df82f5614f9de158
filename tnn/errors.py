"""Errors a user can act on. Each message names the file, column or value at fault."""


class TnnError(Exception):
    """Base class of every error tnn raises on purpose."""


class DataError(TnnError, ValueError):
    """Input data is malformed: wrong shape, NaN/inf, bad labels, missing keys or files."""


class ConfigError(TnnError, ValueError):
    """A configuration value is unknown, of the wrong type, or impossible for the data."""


class NumericalError(TnnError, ArithmeticError):
    """Training diverged: a loss, an output or a parameter became NaN or inf."""
