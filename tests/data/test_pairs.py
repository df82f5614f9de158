"""tnn.data.pairs: `make_pairs` converts and checks (the sources' bad-input cases: test_sources.py)."""

import pytest

from tnn.data.pairs import make_pairs
from tnn.errors import DataError


def test_ragged_rows_are_refused():
    with pytest.raises(DataError, match="'audio' is ragged"):
        make_pairs([[1.0, 2.0], [3.0]], [[1.0], [2.0]], [0, 1])


def test_labels_are_remapped_to_the_classes_present_so_size_never_follows_a_label_value():
    import numpy as np
    p = make_pairs(np.ones((4, 2)), np.ones((4, 3)), [0, 10**12, 0, 10**12])
    assert p.class_names == ("0", "1000000000000") and p.labels.tolist() == [0, 1, 0, 1]
    p = make_pairs(np.ones((3, 2)), np.ones((3, 3)), np.array([2.0, 5.0, 2.0]))
    assert p.class_names == ("2", "5") and p.labels.tolist() == [0, 1, 0]


@pytest.mark.parametrize("audio, labels, message", [
    ("zero-width", [0, 1], "'audio' has no features (shape (2, 0)); each row needs at least one"),
    ("complex", [0, 1], "'audio' must be real numbers; got dtype complex128"),
    (None, [0, 2**64 - 1], "'labels' row 1 is 18446744073709551615, above the int64 range"),
    (None, [0, 1e300], "'labels' must be integers; row 1 is 1e+300"),
])
def test_widths_dtypes_and_label_ranges_are_refused(audio, labels, message):
    import numpy as np
    a = {"zero-width": np.ones((2, 0)), "complex": np.ones((2, 2), complex)}.get(audio,
                                                                                 np.ones((2, 2)))
    y = np.array(labels, dtype=np.uint64) if labels[-1] == 2**64 - 1 else np.array(labels)
    with pytest.raises(DataError) as err:
        make_pairs(a, np.ones((2, 3)), y, name="d.npz")
    assert str(err.value) == "d.npz: " + message
