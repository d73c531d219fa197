"""OSV matching for `deps audit`: the schema's range semantics on PEP 440 versions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.version import Version
from trainguard.integrity.deps.audit import AuditError, audit_offline, match_record, normalize


def _record(name: str, events: list[dict[str, str]], versions: list[str] | None = None,
            ecosystem: str = "PyPI", vid: str = "GHSA-test") -> dict[str, object]:
    return {"id": vid, "summary": "s", "aliases": ["CVE-2099-1"],
            "affected": [{"package": {"ecosystem": ecosystem, "name": name},
                          "ranges": [{"type": "ECOSYSTEM", "events": events}],
                          "versions": versions or []}]}


@pytest.mark.parametrize(("have", "hit"), [("0.9", True), ("1.9.9", True), ("2.0", False),
                                           ("2.1", False), ("2.0rc1", True)])
def test_introduced_zero_fixed(have: str, hit: bool) -> None:
    rec = _record("demo", [{"introduced": "0"}, {"fixed": "2.0"}])
    assert bool(match_record(rec, {"demo": have})) is hit


def test_several_intervals_and_last_affected() -> None:
    rec = _record("demo", [{"introduced": "1.0"}, {"fixed": "1.2"}, {"introduced": "2.0"},
                           {"last_affected": "2.3"}])
    got = {v: bool(match_record(rec, {"demo": v})) for v in
           ("0.9", "1.0", "1.1", "1.2", "1.9", "2.0", "2.3", "2.4")}
    assert got == {"0.9": False, "1.0": True, "1.1": True, "1.2": False, "1.9": False,
                   "2.0": True, "2.3": True, "2.4": False}


def test_names_are_normalised_and_other_ecosystems_ignored() -> None:
    assert match_record(_record("Foo_Bar.baz", [{"introduced": "0"}]), {normalize("foo-bar-baz"): "1"})
    assert not match_record(_record("foo", [{"introduced": "0"}], ecosystem="npm"), {"foo": "1"})


def test_explicit_versions_match_even_without_ranges() -> None:
    rec = {"id": "X", "affected": [{"package": {"ecosystem": "PyPI", "name": "demo"},
                                    "versions": ["1.0.post1"]}]}
    assert match_record(rec, {"demo": "1.0.post1"}) and not match_record(rec, {"demo": "1.0"})


_versions = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=2, max_size=6,
                     unique=True).map(lambda vs: sorted(Version(f"{a}.{b}") for a, b in vs))


@given(_versions, st.integers(0, 5), st.integers(0, 5))
def test_ranges_agree_with_a_brute_force_interval_check(bounds: list[Version], a: int, b: int) -> None:
    """Alternate introduced/fixed events: affected exactly inside [introduced, fixed)."""
    events = [{"introduced" if i % 2 == 0 else "fixed": str(v)} for i, v in enumerate(bounds)]
    have = Version(f"{a}.{b}")
    pairs = [(bounds[i], bounds[i + 1] if i + 1 < len(bounds) else None)
             for i in range(0, len(bounds), 2)]
    expect = any(lo <= have and (hi is None or have < hi) for lo, hi in pairs)
    assert bool(match_record(_record("demo", events), {"demo": str(have)})) is expect


def test_a_damaged_record_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_text(json.dumps(_record("demo", [{"introduced": "0"}])))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AuditError, match="bad.json"):
        audit_offline({"demo": "1.0"}, tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps(_record("demo", [{"fixed": "not a version!"}])))
    with pytest.raises(AuditError, match="malformed"):
        audit_offline({"demo": "1.0"}, tmp_path)


def test_an_empty_or_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no OSV records"):
        audit_offline({}, tmp_path)
    with pytest.raises(AuditError, match="not a folder"):
        audit_offline({}, tmp_path / "missing")
