"""tnn.core.cca_loss: the batch (cluster-)CCA loss against the closed form and the pair reference."""
import pytest
import torch

from tests.reference import cca as ref
from tnn.core.cca import CCAStats, fit_cca
from tnn.errors import ConfigError, DataError
from tnn.core.cca_loss import cluster_cca_loss, dcca_loss


def batch(sizes, dx=5, dy=4, seed=0, dtype=torch.float64):
    """Correlated views with class structure; sizes[c] rows of class c, rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    z = torch.randn(len(sizes), 3, generator=g, dtype=torch.float64)[labels]
    z = z + 0.5 * torch.randn(labels.numel(), 3, generator=g, dtype=torch.float64)
    x = z @ torch.randn(3, dx, generator=g, dtype=torch.float64) + 0.7 * torch.randn(
        labels.numel(), dx, generator=g, dtype=torch.float64) + 2.0
    y = z @ torch.randn(3, dy, generator=g, dtype=torch.float64) + 0.7 * torch.randn(
        labels.numel(), dy, generator=g, dtype=torch.float64)
    return x.to(dtype), labels, y.to(dtype)


def rotation(d, seed=1):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q


def closed_form(x, labels, y, num_classes, **kw):
    stats = CCAStats.from_arrays(x.numpy(), y.numpy(), labels.numpy(), num_classes,
                                 per_class_moments=kw.get("covariance") == "pairs")
    return -fit_cca(stats, **kw).corrs.sum()


@pytest.mark.parametrize("beta,covariance", [(1.0, "plain"), (0.2, "plain"), (0.0, "plain"),
                                             (0.0, "pairs")])
def test_loss_equals_closed_form(beta, covariance):
    x, labels, y = batch([7, 15, 4, 10])
    loss = cluster_cca_loss(x, labels, y, k=3, ridge=1e-3, beta=beta, num_classes=4,
                            covariance=covariance)
    expected = closed_form(x, labels, y, 4, k=3, ridge=1e-3, beta=beta, covariance=covariance)
    assert abs(loss.item() - expected) < 1e-8
    relabelled = cluster_cca_loss(x, labels * 3 + 5, y, k=3, ridge=1e-3, beta=beta,
                                  covariance=covariance)  # num_classes from the batch
    assert abs(relabelled.item() - expected) < 1e-8


def test_pairs_loss_equals_cca_of_enumerated_pairs():
    x, labels, y = batch([3, 12, 7, 9])
    loss = cluster_cca_loss(x, labels, y, k=3, ridge=1e-2, beta=0.0, covariance="pairs")
    corrs, _, _ = ref.pair_cca(x.numpy(), y.numpy(), labels.numpy(), 3, 1e-2)
    assert abs(loss.item() + corrs.sum()) < 1e-8


def test_balanced_plain_loss_is_pair_cca_scaled():
    x, labels, y = batch([6, 6, 6, 6])
    loss = cluster_cca_loss(x, labels, y, k=3, ridge=0.0, beta=0.0)
    corrs, _, _ = ref.pair_cca(x.numpy(), y.numpy(), labels.numpy(), 3)
    assert abs(loss.item() + corrs.sum() * 23 / 24) < 1e-8  # corr_plain = (m-1)/m corr_pairs


def test_identical_and_rotated_views_reach_minus_k():
    x, labels, _ = batch([10, 10, 10], dx=4)
    for y in (x, x @ rotation(4)):
        assert abs(dcca_loss(x, y, k=4, ridge=1e-7).item() + 4) < 1e-4
        assert abs(cluster_cca_loss(x, labels, y, k=4, ridge=1e-7, beta=1.0).item() + 4) < 1e-4


def test_invariant_to_rotating_one_view():
    x, labels, y = batch([8, 11, 9])
    base = cluster_cca_loss(x, labels, y, k=2, beta=0.2)
    for xr, yr in ((x, y @ rotation(4)), (x @ rotation(5, seed=2), y)):
        assert abs(cluster_cca_loss(xr, labels, yr, k=2, beta=0.2).item() - base.item()) < 1e-10


@pytest.mark.parametrize("beta,covariance", [(1.0, "plain"), (0.2, "plain"), (0.0, "pairs")])
def test_gradcheck(beta, covariance):
    x, labels, y = batch([4, 3, 5], dx=3, dy=3)
    x.requires_grad_(True)
    y.requires_grad_(True)
    fn = lambda a, b: cluster_cca_loss(a, labels, b, k=2, ridge=1e-2, beta=beta,
                                       covariance=covariance)
    assert torch.autograd.gradcheck(fn, (x, y))


def grads(x, labels, y, **kw):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    loss = cluster_cca_loss(x, labels, y, **kw)
    loss.backward()
    return loss, x.grad, y.grad


@pytest.mark.parametrize("case", ["missing_class", "batch_below_dim", "identical_views"])
def test_gradients_finite_in_degenerate_batches(case):
    x, labels, y = batch([6, 5, 7, 4], dx=8, dy=6)
    kw = dict(k=3, ridge=1e-3, beta=0.0, num_classes=4)
    if case == "missing_class":  # a zero singular value inside the top k
        keep = labels != 3
        x, labels, y = x[keep], labels[keep], y[keep]
    elif case == "batch_below_dim":  # rank-deficient covariances: repeated eigenvalues
        x, labels, y = x[:5], labels[:5], y[:5]
    else:  # repeated singular values
        y, kw = x, dict(k=6, ridge=1e-3, beta=1.0)
    for dtype in (torch.float64, torch.float32):
        loss, gx, gy = grads(x.to(dtype), labels, y.to(dtype), **kw)
        assert loss.dtype == dtype and torch.isfinite(loss)
        assert torch.isfinite(gx).all() and torch.isfinite(gy).all()


def test_float32_close_to_float64():
    x, labels, y = batch([9, 12, 7, 10])
    kw = dict(k=3, ridge=1e-4, beta=0.2)
    l64, gx64, gy64 = grads(x, labels, y, **kw)
    l32, gx32, gy32 = grads(x.float(), labels, y.float(), **kw)
    assert abs(l32.item() - l64.item()) < 1e-5
    torch.testing.assert_close(gx32.double(), gx64, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(gy32.double(), gy64, atol=1e-6, rtol=1e-4)


def test_dcca_loss_is_plain_cca():
    x, labels, y = batch([9, 12, 7])
    corrs, _, _ = ref.linear_cca(x.numpy(), y.numpy(), 3, 1e-3)
    assert abs(dcca_loss(x, y, k=3, ridge=1e-3).item() + corrs.sum()) < 1e-10
    paired = cluster_cca_loss(x, labels, y, labels.clone(), k=3, ridge=1e-3, beta=1.0)
    assert abs(paired.item() + corrs.sum()) < 1e-10


def test_errors():
    x, labels, y = batch([5, 6, 7])
    with pytest.raises(DataError, match="y_labels differ"):
        cluster_cca_loss(x, labels, y, labels.flip(0), k=1)
    with pytest.raises(ConfigError, match=r"k=5 must be in \[1, min\(Dx=5, Dy=4\)\]"):
        cluster_cca_loss(x, labels, y, k=5)
    with pytest.raises(ConfigError, match=r"k=3 .*classes-1=2\).*rank"):
        cluster_cca_loss(x, labels, y, k=3, beta=0.0)
    with pytest.raises(ConfigError, match="needs beta=0"):
        cluster_cca_loss(x, labels, y, k=1, covariance="pairs")
    with pytest.raises(ConfigError, match="ridge=-1"):
        cluster_cca_loss(x, labels, y, k=1, ridge=-1)
    with pytest.raises(DataError, match="paired rows"):
        cluster_cca_loss(x, labels, y[:-1], k=1)
    with pytest.raises(DataError, match="at least 2 rows"):
        cluster_cca_loss(x[:1], labels[:1], y[:1], k=1, beta=1.0)
    with pytest.raises(DataError, match="singular.*use ridge > 0"):
        cluster_cca_loss(x[:3], labels[:3], y[:3], k=1, ridge=0.0, beta=1.0)
