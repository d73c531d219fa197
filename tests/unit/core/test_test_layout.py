"""The test tree's own invariant: pytest imports test files by basename (rootdir-relative
"prepend" mode, which the area helpers rely on), so two test files with the same name in
different folders break collection of the whole suite."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[2]


def test_test_file_basenames_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
