"""Render the one Amazon States Language template that Terraform renders with `templatefile`.

The template uses only plain `${name}` placeholders, so this substitution and Terraform's
produce the same document (tests compare them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cosmicai.artifacts import state_machine_template

TEMPLATE = state_machine_template()
_PLACEHOLDER = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")


def template_variables(template: Path = TEMPLATE) -> set[str]:
    """The placeholder names the template uses."""
    return set(_PLACEHOLDER.findall(template.read_text()))


def render_state_machine(variables: dict[str, object], template: Path = TEMPLATE) -> str:
    """Substitute every `${name}`; missing or unused variables are errors, as in Terraform."""
    text = template.read_text()
    names = set(_PLACEHOLDER.findall(text))
    missing, unused = names - variables.keys(), variables.keys() - names
    if missing or unused:
        raise ValueError(
            f"state machine template {template.name}: missing variables {sorted(missing)}, "
            f"unused variables {sorted(unused)}"
        )
    rendered = _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), text)
    json.loads(rendered)  # a rendering that is not JSON is a template bug: fail here, not in AWS
    return rendered
