"""tnn.core.cca: closed-form CCA / cluster-CCA against independent implementations and invariants."""

import numpy as np
import pytest

from tests.reference import cca as ref
from tests.support import SHARED
from tnn.core.cca import (
    CCAProjection,
    CCAStats,
    fit_cca,
    fit_cluster_cca,
    fit_linear_cca,
    standardized_stats,
)
from tnn.errors import ConfigError, DataError

UCI = SHARED / "data" / "uci_mfeat"


def load_uci_view(name):
    """(features, labels) of one UCI Multiple Features view; header row, label in last column."""
    path = UCI / f"mfeat-{name}.csv"
    if not path.exists():
        pytest.skip(f"UCI Multiple Features not found at {path}")
    a = np.loadtxt(path, delimiter=",", skiprows=1)
    return a[:, :-1], a[:, -1].astype(np.int64)


@pytest.fixture(scope="module")
def uci():
    (x, labels), (y, labels_y) = load_uci_view("fou"), load_uci_view("kar")
    assert (labels == labels_y).all()
    return x, y, labels


def toy(sizes, dx=5, dy=4, seed=0):
    """Correlated views with class structure; sizes[c] rows of class c."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    z = rng.normal(size=(len(sizes), 3))[labels] + 0.5 * rng.normal(size=(labels.size, 3))
    x = z @ rng.normal(size=(3, dx)) + 0.7 * rng.normal(size=(labels.size, dx)) + 3.0
    y = z @ rng.normal(size=(3, dy)) + 0.7 * rng.normal(size=(labels.size, dy)) - 1.0
    return x, y, labels


def stats_of(x, y, labels, **kw):
    return CCAStats.from_arrays(x, y, labels, int(labels.max()) + 1, **kw)


def assert_projection(p, corrs, a, b, tol):
    np.testing.assert_allclose(p.corrs, corrs, atol=tol)
    np.testing.assert_allclose(p.A, ref.align_signs(a, p.A), atol=tol * np.abs(a).max())
    np.testing.assert_allclose(p.B, ref.align_signs(b, p.B), atol=tol * np.abs(b).max())


def test_linear_cca_matches_numpy_reference_on_uci(uci):
    x, y, labels = uci
    for ridge in (0.0, 1e-3):
        p = fit_linear_cca(stats_of(x, y, labels), 8, ridge=ridge)
        assert_projection(p, *ref.linear_cca(x, y, 8, ridge), tol=1e-10)


def test_linear_cca_matches_sklearn_on_uci(uci):
    from sklearn.cross_decomposition import CCA

    x, y, labels = uci
    xs, ys = CCA(n_components=2, max_iter=5000, tol=1e-10).fit(x, y).transform(x, y)
    corrs = [np.corrcoef(xs[:, i], ys[:, i])[0, 1] for i in range(2)]
    p = fit_linear_cca(stats_of(x, y, labels), 2, ridge=0.0)
    np.testing.assert_allclose(p.corrs, corrs, atol=1e-4)


def test_linear_cca_matches_cca_zoo_on_uci(uci):
    zoo = pytest.importorskip("cca_zoo.linear")
    x, y, labels = uci
    za, zb = zoo.CCA(n_components=5).fit([x, y]).transform([x, y])
    corrs = [np.corrcoef(za[:, i], zb[:, i])[0, 1] for i in range(5)]
    np.testing.assert_allclose(fit_linear_cca(stats_of(x, y, labels), 5, ridge=0.0).corrs,
                               corrs, atol=1e-9)


def test_stats_summed_over_uneven_shards_equal_one_pass():
    x, y, labels = toy([9, 14, 4, 11])
    whole = stats_of(x, y, labels, per_class_moments=True)
    cuts = [0, 5, 6, 38]
    parts = [CCAStats.from_arrays(x[a:b], y[a:b], labels[a:b], 4, per_class_moments=True)
             for a, b in zip(cuts[:-1], cuts[1:])]
    for total in (sum(parts), CCAStats.merge(parts), parts[0] + parts[1] + parts[2]):
        for key, value in whole.to_dict().items():
            np.testing.assert_allclose(total.to_dict()[key], value, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(fit_cca(sum(parts), 2).corrs, fit_cca(whole, 2).corrs, atol=1e-10)


def test_dict_round_trips():
    x, y, labels = toy([6, 7, 8])
    for moments in (False, True):
        s = stats_of(x, y, labels, per_class_moments=moments)
        back = CCAStats.from_dict(s.to_dict())
        assert back.to_dict().keys() == s.to_dict().keys()
        np.testing.assert_array_equal(fit_cca(back, 2).A, fit_cca(s, 2).A)
    p = fit_cca(stats_of(x, y, labels), 2)
    q = CCAProjection.from_dict(p.to_dict())
    np.testing.assert_array_equal(q.transform_visual(y), p.transform_visual(y))


def test_pairs_mode_equals_cca_of_enumerated_pairs_unbalanced():
    x, y, labels = toy([3, 12, 7, 20])
    for ridge in (0.0, 1e-2):
        p = fit_cca(stats_of(x, y, labels, per_class_moments=True), 3, ridge=ridge, beta=0.0,
                    covariance="pairs")
        assert_projection(p, *ref.pair_cca(x, y, labels, 3, ridge), tol=1e-8)


def test_plain_mode_is_the_authors_blend_and_not_pair_cca_when_unbalanced():
    x, y, labels = toy([3, 12, 7, 20])
    for beta in (0.0, 0.2, 0.7):
        p = fit_cca(stats_of(x, y, labels), 3, ridge=1e-3, beta=beta)
        assert_projection(p, *ref.blended_cca(x, y, labels, 3, 1e-3, beta), tol=1e-9)
    plain = fit_cca(stats_of(x, y, labels), 3, ridge=0.0, beta=0.0)
    assert not np.allclose(plain.corrs, ref.pair_cca(x, y, labels, 3)[0], atol=1e-3)


def test_balanced_classes_plain_and_pairs_share_directions():
    # Same directions; corr_pairs = m/(m-1) corr_plain once the plain ridge is r (Np-1)/(n (m-1)).
    x, y, labels = toy([8, 8, 8, 8])
    m, n_c, npairs, r = 32, 8, 4 * 64, 1e-2
    pairs = fit_cca(stats_of(x, y, labels, per_class_moments=True), 3, ridge=r, beta=0.0,
                    covariance="pairs")
    plain = fit_cca(stats_of(x, y, labels), 3, ridge=r * (npairs - 1) / (n_c * (m - 1)), beta=0.0)
    assert_projection(pairs, *ref.pair_cca(x, y, labels, 3, r), tol=1e-8)
    np.testing.assert_allclose(pairs.corrs, plain.corrs * m / (m - 1), atol=1e-10)
    scale = np.sqrt(n_c * (m - 1) / (npairs - 1))  # S11_pairs = scale^2 S11_plain
    np.testing.assert_allclose(pairs.A * scale, plain.A, atol=1e-9)


def test_identical_views_correlate_fully_within_the_ridge():
    x, _, labels = toy([10, 10, 10], dx=4)
    r = 1e-3
    lam = np.linalg.eigvalsh(np.cov(x.T))[::-1]
    p = fit_linear_cca(stats_of(x, x, labels), 4, ridge=r)
    np.testing.assert_allclose(p.corrs, lam / (lam + r), atol=1e-12)
    centroids = np.random.default_rng(1).normal(size=(3, 4))
    pc = fit_cca(stats_of(centroids[labels], centroids[labels], labels, per_class_moments=True),
                 2, ridge=0.0, beta=0.0, covariance="pairs")
    np.testing.assert_allclose(pc.corrs, 1.0, atol=1e-9)


def test_ridge_zero_equals_plain_formula_and_corrs_sorted():
    x, y, labels = toy([10, 12, 9])
    p = fit_linear_cca(stats_of(x, y, labels), 4, ridge=0.0)
    assert_projection(p, *ref.linear_cca(x, y, 4), tol=1e-10)
    assert np.all(np.diff(p.corrs) <= 0) and np.all(p.corrs <= 1 + 1e-12)


def test_projection_whitens_and_diagonalises_training_data():
    x, y, labels = toy([10, 12, 9, 15])
    p = fit_cca(stats_of(x, y, labels), 3, ridge=0.0, beta=1.0)
    za, zv = p.transform_audio(x), p.transform_visual(y)
    assert za.shape == (46, 3) and zv.shape == (46, 3)
    np.testing.assert_allclose(np.cov(za.T), np.eye(3), atol=1e-10)
    np.testing.assert_allclose(np.cov(zv.T), np.eye(3), atol=1e-10)
    np.testing.assert_allclose(za.T @ zv / 45, np.diag(p.corrs), atol=1e-10)
    scaled = fit_cca(stats_of(x, y, labels), 3, ridge=0.0, beta=1.0, scale_by_corr=True)
    np.testing.assert_allclose(scaled.A, p.A * p.corrs, atol=1e-12)


def test_cluster_names_and_empty_class_allowed():
    x, y, labels = toy([10, 12, 9])
    s = CCAStats.from_arrays(x, y, labels, num_classes=5)  # classes 3, 4 absent
    np.testing.assert_array_equal(fit_cluster_cca(s, 2).corrs, fit_cca(s, 2, beta=0.2).corrs)
    assert fit_cluster_cca(s, 2, beta=0.0).corrs.shape == (2,)
    np.testing.assert_array_equal(fit_linear_cca(s, 2).corrs, fit_cca(s, 2, beta=1.0).corrs)


def test_errors():
    x, y, labels = toy([10, 12, 9], dx=6)
    s = stats_of(x, y, labels)
    with pytest.raises(ConfigError, match=r"k=5 exceeds min\(Dx=6, Dy=4\)"):
        fit_cca(s, 5)
    with pytest.raises(ConfigError, match=r"k=3 exceeds min\(Dx=6, Dy=4, classes-1=2\).*rank"):
        fit_cca(s, 3, beta=0.0)
    with pytest.raises(ConfigError, match="k=0"):
        fit_cca(s, 0)
    with pytest.raises(ConfigError, match="ridge=-0.1"):
        fit_cca(s, 2, ridge=-0.1)
    with pytest.raises(ConfigError, match="got ridge=0.0001, beta=1.5"):
        fit_cca(s, 2, beta=1.5)
    with pytest.raises(ConfigError, match="covariance='pair'"):
        fit_cca(s, 2, covariance="pair")
    with pytest.raises(ConfigError, match="per_class_moments=True"):
        fit_cca(s, 2, beta=0.0, covariance="pairs")
    with pytest.raises(ConfigError, match="needs beta=0"):
        fit_cca(stats_of(x, y, labels, per_class_moments=True), 2, covariance="pairs")


def test_data_errors():
    x, y, labels = toy([10, 12, 9])
    with pytest.raises(DataError, match="class 2 has 1 item"):
        fit_cca(stats_of(x[:23], y[:23], np.r_[labels[:22] % 2, 2]), 1)
    with pytest.raises(DataError, match="at least 2 classes with items, got 1"):
        fit_cca(CCAStats.from_arrays(x, y, np.zeros(31, int), 3), 1)
    assert fit_linear_cca(CCAStats.from_arrays(x, y), 2).corrs.shape == (2,)
    with pytest.raises(DataError, match="at least 2 rows.*n=1"):
        fit_linear_cca(CCAStats.from_arrays(x[:1], y[:1]), 1)
    bad = stats_of(x, y, labels)
    bad.xy[0, 0] = np.nan
    with pytest.raises(DataError, match="'xy' contains NaN"):
        fit_cca(bad, 1)
    x_nan = x.copy()
    x_nan[4, 1] = np.inf
    with pytest.raises(DataError, match="x contains NaN or inf at row 4"):
        stats_of(x_nan, y, labels)
    with pytest.raises(DataError, match="label 7 at row 0 is outside"):
        CCAStats.from_arrays(x, y, np.r_[7, labels[1:]], 3)
    with pytest.raises(DataError, match="must be paired"):
        CCAStats.from_arrays(x, y[:-1], labels)
    with pytest.raises(DataError, match=r"class_n has shape \(3,\) vs \(4,\)"):
        stats_of(x, y, labels) + CCAStats.from_arrays(x, y, labels, 4)
    with pytest.raises(DataError, match="with and without class_xx"):
        stats_of(x, y, labels) + stats_of(x, y, labels, per_class_moments=True)
    with pytest.raises(DataError, match=r"lacks keys \['xx'\]"):
        CCAStats.from_dict({k: v for k, v in stats_of(x, y, labels).to_dict().items() if k != "xx"})
    with pytest.raises(DataError, match=r"audio has shape \(31, 4\), expected \(rows, 5\)"):
        fit_linear_cca(stats_of(x, y, labels), 2).transform_audio(y)


@pytest.mark.parametrize("scale", [True, False])
def test_standardized_stats_equal_those_of_standardised_rows(scale):
    x, y, labels = toy([40, 25, 35], dx=6, dy=5, seed=3)
    x[:, 2] = 7.0  # a constant feature keeps the scale 1 (as `tnn.core.encoder.standardizer`)
    (mx, sx), (my, sy), z = standardized_stats(CCAStats.from_arrays(x, y, labels, 3), scale=scale)
    np.testing.assert_allclose(mx, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(my, y.mean(0), rtol=1e-12)
    std = x.std(0)
    want_sx = 1 / np.where(std > 1e-6, std, 1) if scale else np.ones(6)
    np.testing.assert_allclose(sx, want_sx, rtol=1e-9)
    assert sx[2] == 1.0
    want = CCAStats.from_arrays((x - mx) * sx, (y - my) * sy, labels, 3)
    for key, value in want.to_dict().items():
        np.testing.assert_allclose(z.to_dict()[key], value, rtol=1e-9, atol=1e-9)
