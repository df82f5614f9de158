"""Typed configs: YAML presets, overrides, refusal of unknown keys and wrong types."""

import dataclasses

import pytest

from tnn.config import flatten, from_dict, load, parse_overrides, to_dict
from tnn.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    hidden: tuple[int, ...] = (100, 100)
    name: str | None = None

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"inner.lr must be > 0; got {self.lr}")


@dataclasses.dataclass(frozen=True)
class Outer:
    epochs: int = 10
    smoke: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_defaults_preset_and_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("epochs: 3\ninner:\n  hidden: [8, 4]\n")
    cfg = load(Outer, [preset], ["inner.lr=0.01", "smoke=true"])
    assert cfg == Outer(epochs=3, smoke=True, inner=Inner(lr=0.01, hidden=(8, 4)))
    assert load(Outer) == Outer()


def test_presets_apply_in_order_then_overrides(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("epochs: 3\ninner:\n  lr: 0.5\n  name: first\n")
    second.write_text("epochs: 4\ninner:\n  name: second\n")
    cfg = load(Outer, [first, second], ["epochs=5"])
    assert cfg == Outer(epochs=5, inner=Inner(lr=0.5, name="second"))
    assert load(Outer, [second, first]).inner == Inner(lr=0.5, name="first")
    with pytest.raises(TypeError, match="list"):
        load(Outer, str(first))


def test_a_preset_is_found_by_name_in_the_search_folder(tmp_path, monkeypatch):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "p.yaml").write_text("epochs: 7\n")
    monkeypatch.chdir(tmp_path)
    assert load(Outer, ["elsewhere/p.yaml"], search=tmp_path / "presets").epochs == 7
    with pytest.raises(ConfigError, match="config file not found: elsewhere/p.yaml"):
        load(Outer, ["elsewhere/p.yaml"])


def test_round_trip_and_flatten():
    cfg = Outer(inner=Inner(hidden=(3,), name="x"))
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert flatten(cfg) == {"epochs": 10, "smoke": False, "inner.lr": 1e-3,
                            "inner.hidden": [3], "inner.name": "x"}


@pytest.mark.parametrize("data, message", [
    ({"epoch": 3}, "unknown key.s. epoch; known under <root>: epochs, smoke, inner"),
    ({"inner": {"lrr": 1}}, "unknown key.s. inner.lrr"),
    ({"epochs": "ten"}, "config epochs: expected int; got 'ten'"),
    ({"epochs": True}, "config epochs: expected int; got True"),
    ({"inner": {"hidden": 5}}, "config inner.hidden: expected a list"),
    ({"inner": {"lr": -1.0}}, "inner.lr must be > 0; got -1.0"),
    ({"inner": 3}, "config inner.: expected a mapping"),
])
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_override_syntax_and_missing_file(tmp_path):
    assert parse_overrides(["a.b=[1, 2]", "c=x"]) == {"a": {"b": [1, 2]}, "c": "x"}
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="config file not found"):
        load(Outer, [tmp_path / "none.yaml"])
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(Outer, [tmp_path / "bad.yaml"])


@dataclasses.dataclass(frozen=True)
class WithFactory:
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(lr=0.5, name="tuned"))


def test_partial_override_keeps_the_default_factory_values():
    cfg = from_dict(WithFactory, {"inner": {"hidden": [1]}})
    assert cfg.inner == Inner(lr=0.5, hidden=(1,), name="tuned")
    with pytest.raises(ConfigError, match="config inner.lr: expected float; got 'abc'"):
        from_dict(WithFactory, {"inner": {"lr": "abc"}})


def test_overrides_yaml_errors_conflicts_and_plain_string_values(tmp_path):
    """`key=value` strings are YAML (`--set`); `(key, value)` pairs are taken as they are (a
    job's options: `--json 'out #1.json'` is that file name, not `out`)."""
    from tnn.config import read_yaml
    assert parse_overrides(["a.b=[1, 2]", ("json", "out #1.json"), ("c", "007")]) == \
        {"a": {"b": [1, 2]}, "json": "out #1.json", "c": "007"}
    with pytest.raises(ConfigError, match=r"^override 'a=\[': the value is not valid YAML "
                                          r"\(while parsing"):
        parse_overrides(["a=["])
    with pytest.raises(ConfigError, match=r"^override 'a.b=2': a was set to a value by an "
                                          r"earlier override, not a mapping$"):
        parse_overrides(["a=1", "a.b=2"])
    with pytest.raises(ConfigError, match=r"^override 'a..b=1': empty part in the key 'a..b'$"):
        parse_overrides(["a..b=1"])
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"list.yaml: a config preset is a YAML mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "bytes.yaml").write_bytes(b"\xff: 1\n")
    with pytest.raises(ConfigError, match=r"bytes.yaml: not UTF-8 text \(invalid start byte "
                                          r"at byte 0\)"):
        read_yaml(tmp_path / "bytes.yaml")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(tmp_path / "bad.yaml")
    assert "\n" not in str(err.value) and "not valid YAML" in str(err.value)
