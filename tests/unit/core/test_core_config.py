from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from trainguard.core.config import ConfigError, dump_sections, load_config, register_section


@dataclass(frozen=True)
class _Demo:
    interval_s: float = 5.0
    name: str = "x"
    dirs: list[str] = field(default_factory=list)

    def validate(self) -> list[str]:
        return ["interval_s must be > 0"] if self.interval_s <= 0 else []


register_section("demo_section", _Demo)


def test_defaults_when_file_missing(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "none.toml", environ={})
    assert cfg.node.cluster == "default"
    assert cfg.section("demo_section") == _Demo()


def test_every_error_reported_at_once(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        '[node]\ncluster = 3\nbogus = 1\n[demo_section]\ninterval_s = -1\n[nosuch]\nx = 1\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(p, environ={})
    text = str(info.value)
    assert "[node].cluster" in text
    assert "unknown key 'bogus'" in text
    assert "interval_s must be > 0" in text
    assert "unknown section [nosuch]" in text
    assert len(info.value.problems) == 4


def test_environment_overrides_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[node]\nname = "a"\n[demo_section]\ninterval_s = 2\n')
    cfg = load_config(p, environ={"TRAINGUARD_NODE_NAME": "b", "TRAINGUARD_DEMO_SECTION_X": "1"})
    assert cfg.node.name == "b"


def test_int_accepted_for_float_and_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(dump_sections({"demo_section": _Demo(interval_s=3, dirs=["/a", "/b"])}))
    cfg = load_config(p, environ={})
    assert cfg.section("demo_section").dirs == ["/a", "/b"]
    assert cfg.section("demo_section").interval_s == 3.0


def test_invalid_toml_is_config_error(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[node\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, environ={})
    assert info.value.exit_code == 2
