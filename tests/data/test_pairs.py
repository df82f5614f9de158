"""tnn.data.pairs: `make_pairs` converts and checks (the sources' bad-input cases: test_sources.py)."""

import pytest

from tnn.data.pairs import make_pairs
from tnn.errors import DataError


def test_ragged_rows_are_refused():
    with pytest.raises(DataError, match="'audio' is ragged"):
        make_pairs([[1.0, 2.0], [3.0]], [[1.0], [2.0]], [0, 1])
