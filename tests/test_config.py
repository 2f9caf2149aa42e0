"""Config schema: defaults file agrees with the schema; bad keys/values name the key path."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel

from engine.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config, parse_override


def test_default_yaml_is_valid_and_complete() -> None:
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert set(data) == set(Config.model_fields)
    loaded = load_config()
    assert loaded.render.width == data["render"]["width"]


def test_overrides_layer_over_file(tmp_path) -> None:
    user = tmp_path / "user.yaml"
    user.write_text("render:\n  width: 320\nstream:\n  jpeg_quality: 50\n")
    cfg = load_config(user, ["render.width=256", "solve.filter_eyes.beta=0.9"])
    assert cfg.render.width == 256
    assert cfg.stream.jpeg_quality == 50
    assert cfg.solve.filter_eyes.beta == 0.9


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("render.widht=3", "unknown key 'render.widht'"),
        ("rendr.width=3", "unknown key 'rendr'"),
        ("render.width=-5", "invalid value for 'render.width'"),
        ("detail.backend=cuda", "invalid value for 'detail.backend'"),
        ("solve.filter_eyes.min_cutoff=abc", "invalid value for 'solve.filter_eyes.min_cutoff'"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(overrides=[override])


def test_bad_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("render: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_override_values_are_typed() -> None:
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a.b=true") == {"a": {"b": True}}
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}


def test_default_yaml_equals_the_schema_defaults() -> None:
    """configs/default.yaml is what a user reads: it must not drift from the schema's own defaults."""
    assert load_config().model_dump() == Config().model_dump()


def test_default_yaml_names_every_setting() -> None:
    """A user tunes what the file shows: every field of every section (and of nested sections such as the
    filters) is written out, not left to the schema's default."""

    def missing(model: type[BaseModel], data: dict, prefix: str) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            if name not in data:
                out.append(prefix + name)
            elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                out += missing(field.annotation, data[name] or {}, f"{prefix}{name}.")
        return out

    assert missing(Config, yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()), "") == []


def test_a_folder_or_a_binary_file_as_config_is_a_clear_error(tmp_path) -> None:
    binary = tmp_path / "photo.png"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="is not text"):
        load_config(binary)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
