"""The init Lambda's check of the execution input's executor_qualifier."""

from __future__ import annotations

import pytest

from cosmicai.payload import PayloadError, Problem
from cosmicai.pipeline.init import executor_qualifier


@pytest.mark.parametrize(
    ("event", "expected"), [({}, "$LATEST"), ({"executor_qualifier": "live"}, "live")]
)
def test_qualifier_is_the_inputs_else_latest(event: dict[str, object], expected: str) -> None:
    assert executor_qualifier(event) == expected


def test_bad_qualifier_is_one_problem_naming_the_key() -> None:
    with pytest.raises(PayloadError) as raised:
        executor_qualifier({"executor_qualifier": "not an alias"})
    assert len(raised.value.problems) == 1
    problem = raised.value.problems[0]
    assert isinstance(problem, Problem)
    assert problem.key == "executor_qualifier"
    assert "'not an alias' is not a Lambda version or alias name" in str(raised.value)
