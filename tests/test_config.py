"""Configuration precedence: defaults < stoq.toml < STOQ_* environment < command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoq.config import ConfigError, load_settings, parse_plugin_options
from stoq.registry import Registry, make_options


def write_toml(tmp_path: Path) -> Path:
    path = tmp_path / "stoq.toml"
    path.write_text('[stoq]\nmax_depth = 3\nmax_children = 7\nworkers = ["yara"]\ntimeout = 9.5\n'
                    '[plugins.nest]\ncount = 4\nsame = true\n')
    return path


def test_defaults_without_any_layer(tmp_path: Path) -> None:
    s = load_settings(None, env={})
    assert (s.max_depth, s.max_children, s.max_bytes, s.timeout, s.workers) == (8, 1000, 512 * 1024 * 1024, 60.0, [])


def test_each_layer_overrides_the_one_below(tmp_path: Path, testplugins_site: Path) -> None:
    toml = write_toml(tmp_path)
    s = load_settings(toml, env={})
    assert (s.max_depth, s.max_children, s.workers, s.timeout) == (3, 7, ["yara"], 9.5)
    assert s.plugins == {"nest": {"count": 4, "same": True}}

    env = {"STOQ_MAX_DEPTH": "5", "STOQ_WORKERS": "peinfo, yara", "STOQ_NEST__COUNT": "6"}
    s = load_settings(toml, env=env)
    assert (s.max_depth, s.max_children, s.workers) == (5, 7, ["peinfo", "yara"])
    assert s.plugins == {"nest": {"count": "6", "same": True}}

    s = load_settings(toml, env=env, overrides={"max_depth": 1, "workers": None},
                      plugin_options=parse_plugin_options(["nest.count=2"]))
    assert (s.max_depth, s.workers) == (1, ["peinfo", "yara"])  # None means "not given on the command line"
    assert s.plugins == {"nest": {"count": "2", "same": True}}
    nest = Registry.discover().get("nest")
    options = make_options(nest, s.plugins["nest"])
    assert (options.count, options.same) == (2, True)  # text coerced to the option's type


def test_config_file_found_through_STOQ_CONFIG_and_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = write_toml(tmp_path)
    assert load_settings(env={"STOQ_CONFIG": str(toml)}).max_depth == 3
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).max_depth == 3


def test_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_depth"):
        load_settings(env={"STOQ_MAX_DEPTH": "deep"})
    with pytest.raises(ConfigError, match="PLUGIN.OPTION=VALUE"):
        parse_plugin_options(["yara-rules"])
    broken = tmp_path / "bad.toml"
    broken.write_text("[stoq\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(broken, env={})
