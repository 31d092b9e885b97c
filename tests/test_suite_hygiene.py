"""The suite's own hygiene: no test asserts that a call equals the same call, with identical
source on both sides (`assert f(x) == f(x)`): that cannot fail, or checks only that a function
is deterministic, never what it computes.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def self_comparisons(source: str) -> list[str]:
    """The `assert` comparisons (==, is) whose two sides are the same call, as source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assert) or not isinstance(node.test, ast.Compare):
            continue
        sides = [node.test.left, *node.test.comparators]
        for (left, right), op in zip(itertools.pairwise(sides), node.test.ops, strict=True):
            calls = any(isinstance(n, ast.Call) for n in ast.walk(left))
            same = ast.dump(left) == ast.dump(right)
            if calls and same and isinstance(op, ast.Eq | ast.Is):
                found.append(f"line {node.lineno}: {ast.unparse(node.test)}")
    return found


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ("assert f(x) == f(x)", True),
        ("def t():\n    assert g(1).a is g(1).a", True),
        ("assert 2 == g(1) == g(1)", True),
        ("assert f(x) == f(y)", False),
        ("assert new_id() != new_id()", False),  # two calls differ: a real check
        ("assert x == x", False),  # no call
    ],
)
def test_the_check_finds_self_comparisons(source: str, flagged: bool) -> None:
    assert bool(self_comparisons(source)) == flagged


@pytest.mark.parametrize("path", sorted(TESTS.rglob("test_*.py")), ids=lambda p: p.name)
def test_no_assert_compares_a_call_with_itself(path: Path) -> None:
    found = self_comparisons(path.read_text())
    assert not found, f"{path.name} compares a call with itself: {found}"


def test_one_place_sets_the_per_test_timeout(pytestconfig: pytest.Config) -> None:
    """pyproject.toml's pytest section sets the limit; the scripts CI runs do not override it."""
    assert float(pytestconfig.getini("timeout")) > 0, "set timeout in [tool.pytest.ini_options]"
    for script in ("scripts/test.sh", ".ci/run"):
        lines = (TESTS.parent / script).read_text().splitlines()
        code = [line for line in lines if not line.lstrip().startswith("#")]
        assert not any("--timeout" in line for line in code), f"{script} sets its own timeout"
