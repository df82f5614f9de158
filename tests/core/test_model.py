"""TwoBranchNet and BranchConfig: shapes, presets, sharing, output ranges, dropout, errors."""

import inspect

import pytest
import torch

from tnn.errors import ConfigError, DataError
from tnn.core.losses import combined_loss
from tnn.core.model import PRESETS, BranchConfig, TwoBranchNet


def inputs(b=8, audio_dim=128, visual_dim=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, audio_dim, generator=g), torch.randn(b, visual_dim, generator=g)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_shapes(preset):
    model = TwoBranchNet.from_preset(preset, 128, 1024)
    audio, visual = inputs()
    out = model(audio, visual)
    assert set(out) == {"audio_emb", "visual_emb"}
    assert out["audio_emb"].shape == out["visual_emb"].shape == (8, PRESETS[preset].out_dim)
    assert model.encode_audio(audio).shape == (8, 10) and not model.shared
    if PRESETS[preset].final == "l2":
        torch.testing.assert_close(out["visual_emb"].norm(dim=1), torch.ones(8))


def test_paper_preset_is_the_authors_branch():
    cfg = PRESETS["paper"]
    assert (cfg.hidden, cfg.out_dim, cfg.activation, cfg.dropout, cfg.final) == \
        ((100, 100, 100), 10, "tanh", 0.1, "sigmoid")
    model = TwoBranchNet.from_preset("paper", 10, 10)  # two-stage: both inputs are 10-d C-CCA
    layers = [type(m).__name__ for m in model.audio_branch.layers]
    assert layers == ["Linear", "Tanh", "Dropout"] * 4
    assert model.shared and model.visual_branch is None
    assert sum(p.numel() for p in model.parameters()) == 10 * 100 + 2 * 100 * 100 + 100 * 10 + 310


def test_shared_uses_one_network_and_separate_uses_two():
    x = torch.randn(5, 10)
    shared = TwoBranchNet(10, 10, shared=True).eval()
    torch.testing.assert_close(shared.encode_audio(x), shared.encode_visual(x))
    separate = TwoBranchNet(10, 10, shared=False).eval()
    assert not torch.allclose(separate.encode_audio(x), separate.encode_visual(x))
    n_shared = sum(p.numel() for p in shared.parameters())
    assert sum(p.numel() for p in separate.parameters()) == 2 * n_shared


def test_sigmoid_output_range():
    model = TwoBranchNet.from_preset("paper", 128, 1024).eval()
    out = model(*inputs())
    for emb in out.values():
        # sigmoid(tanh(z)) lies in (sigmoid(-1), sigmoid(1))
        assert (emb > 0.26).all() and (emb < 0.74).all()
    raw = TwoBranchNet(4, 4, BranchConfig(final="none", head_activation=False)).eval()
    assert (raw.encode_audio(100 * torch.randn(50, 4)).abs() > 1).any()


def test_dropout_only_in_training():
    model = TwoBranchNet.from_preset("paper", 128, 1024)
    audio, _ = inputs()
    model.train()
    assert not torch.equal(model.encode_audio(audio), model.encode_audio(audio))
    model.eval()
    assert torch.equal(model.encode_audio(audio), model.encode_audio(audio))


def test_init_is_deterministic_given_the_seed():
    torch.manual_seed(3)
    a = TwoBranchNet.from_preset("wide", 128, 1024)
    torch.manual_seed(3)
    b = TwoBranchNet.from_preset("wide", 128, 1024)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_forward_keys_are_loss_arguments():
    params = inspect.signature(combined_loss).parameters
    model = TwoBranchNet.from_preset("paper", 128, 1024)
    out = model(*inputs())
    assert set(out) <= set(params)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    combined_loss(**out, labels=labels)["total"].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert list(model(audio=inputs()[0])) == ["audio_emb"]


def test_layernorm_and_batchnorm_options():
    cfg = BranchConfig(hidden=[32], norm="batchnorm", input_norm="layernorm")  # YAML gives lists
    assert cfg.hidden == (32,)
    model = TwoBranchNet(6, 6, cfg)
    names = [type(m).__name__ for m in model.audio_branch.layers]
    assert names[:3] == ["LayerNorm", "Linear", "BatchNorm1d"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden=(100, 0)), "hidden"), (dict(out_dim=0), "out_dim"),
    (dict(activation="swish"), "activation must be one of"), (dict(dropout=1.0), "dropout"),
    (dict(norm="groupnorm"), "norm must be one of"), (dict(input_norm="zscore"), "input_norm"),
    (dict(final="softmax"), "final must be one of"),
])
def test_branch_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BranchConfig(**kwargs)


def test_model_errors():
    with pytest.raises(ConfigError, match="audio_dim=128 and visual_dim=1024"):
        TwoBranchNet(128, 1024, shared=True)
    with pytest.raises(ConfigError, match="one config"):
        TwoBranchNet(10, 10, PRESETS["paper"], PRESETS["wide"], shared=True)
    with pytest.raises(ConfigError, match="out_dim"):
        TwoBranchNet(10, 20, BranchConfig(out_dim=10), BranchConfig(out_dim=8))
    with pytest.raises(ConfigError, match="unknown model preset"):
        TwoBranchNet.from_preset("huge", 10, 10)
    with pytest.raises(DataError, match=r"visual input must be \(B, 1024\)"):
        TwoBranchNet(128, 1024).encode_visual(torch.randn(3, 128))
