"""tnn.methods.label's loss goes through the framework-free `tnn.core.losses.proxy_loss`: the
same numbers as the formula written out with `combined_loss` (the loss before the move)."""

import pytest
import torch
import torch.nn.functional as F

from tnn.core.losses import combined_loss
from tnn.methods.label import LabelConfig, ProxyNet, batch_loss, proxy_logits


def written_out(net, xa, xv, labels, cfg):
    out = net(xa, xv)
    ce = 0.5 * sum(F.cross_entropy(cfg.scale * out[k] @ F.normalize(net.proxies, dim=1).T, labels)
                   for k in ("audio_emb", "visual_emb"))
    total = cfg.w_proxy * ce
    if cfg.w_triplet:
        trip = combined_loss(out["audio_emb"], out["visual_emb"], labels,
                             directions=("a2v", "v2a"), margin=cfg.margin, distance="cosine",
                             miner="batch_all", reduction="mean_positive")["triplet"]
        total = total + cfg.w_triplet * trip
    return total


@pytest.mark.parametrize("kw", [{}, dict(w_proxy=0.5, w_triplet=2.0, scale=8.0, margin=0.3),
                                dict(w_triplet=0.0)])
def test_batch_loss_equals_the_written_out_formula(kw):
    cfg = LabelConfig(hidden=(16,), dropout=0.0, out_dim=4, **kw)
    g = torch.Generator().manual_seed(0)
    xa, xv = torch.randn(24, 6, generator=g), torch.randn(24, 5, generator=g)
    labels = torch.arange(24) % 3
    torch.manual_seed(0)
    net = ProxyNet(6, 5, 3, cfg).train()
    got = batch_loss(net, xa, xv, labels, cfg)
    got_grads = torch.autograd.grad(got, list(net.parameters()))
    want = written_out(net, xa, xv, labels, cfg)
    want_grads = torch.autograd.grad(want, list(net.parameters()))
    assert torch.equal(got, want)
    for g_got, g_want in zip(got_grads, want_grads):
        torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-6)
    z = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    assert torch.equal(proxy_logits(z, net.proxies, 3.0),
                       3.0 * z @ F.normalize(net.proxies, dim=1).T)
