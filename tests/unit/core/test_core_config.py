from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
from trainguard.core import config as core_config
from trainguard.core.config import (
    Config,
    ConfigError,
    NodeConfig,
    apply_flags,
    build_sections,
    dump_sections,
    load_config,
    register_section,
)


@register_section
@dataclass(frozen=True)
class _Demo:
    SECTION: ClassVar[str] = "demo_section"

    interval_s: float = 5.0
    name: str = "x"
    dirs: list[str] = field(default_factory=list)

    def validate(self) -> list[str]:
        return ["interval_s must be > 0"] if self.interval_s <= 0 else []



def test_defaults_when_file_missing(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "none.toml", environ={})
    assert cfg.node.cluster == "default"
    assert cfg.section(_Demo) == _Demo()


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
    demo = cfg.section(_Demo)
    assert demo.dirs == ["/a", "/b"]
    assert demo.interval_s == 3.0


def test_invalid_toml_is_config_error(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[node\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, environ={})
    assert info.value.exit_code == 2


def test_every_area_section_loads_and_names_its_table(tmp_path: Path) -> None:
    # One wheel ships every area: each known section imports, and the class it names says so.
    p = tmp_path / "c.toml"
    p.write_text("".join(f"[{name}]\n" for name in core_config._KNOWN_SECTIONS))
    cfg = load_config(p, environ={})
    for name, section in cfg.sections.items():
        assert type(section).SECTION == name
        assert cfg.section(type(section)) is section


def test_section_of_a_class_not_in_the_file_is_its_defaults() -> None:
    assert Config(source="test").section(NodeConfig) == NodeConfig()


def test_a_section_holding_another_type_is_refused() -> None:
    cfg = Config(source="test", sections={"demo_section": NodeConfig()})
    with pytest.raises(TypeError, match="demo_section"):
        cfg.section(_Demo)


def test_a_section_that_fails_to_import_is_not_skipped(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setitem(core_config._KNOWN_SECTIONS, "ghost", "trainguard.core.no_such:X")
    p = tmp_path / "c.toml"
    p.write_text("[ghost]\nx = 1\n")
    with pytest.raises(ModuleNotFoundError):
        load_config(p, environ={})


def test_flags_override_and_are_validated_like_the_file() -> None:
    base = _Demo(interval_s=2.0)
    assert apply_flags(base, interval_s=None) is base  # a flag not given changes nothing
    assert apply_flags(base, interval_s=7).interval_s == 7.0
    with pytest.raises(ConfigError) as info:
        apply_flags(base, source="--interval", interval_s=-1)
    assert "interval_s must be > 0" in str(info.value) and "--interval" in str(info.value)
    assert info.value.exit_code == 2
    with pytest.raises(ConfigError, match="expected str"):
        apply_flags(base, name=3)


def test_build_sections_reports_every_table_problem() -> None:
    problems: list[str] = []
    built = build_sections(
        {"demo_section": {"interval_s": 1}, "x": {}, "demo2": 3},
        {"demo_section": _Demo, "demo2": _Demo}.get,
        problems,
        known=["demo_section", "demo2"],
    )
    assert built == {"demo_section": _Demo(interval_s=1.0)}
    assert problems == ["unknown section [x] (known: demo_section, demo2)", "[demo2] must be a table"]
