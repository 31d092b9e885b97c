"""Compatibility shims for reference scripts (package data under `pythonpath/`, never imported
by cosmicai itself).

`pythonpath/timm` is a small stand-in for the parts of timm 0.4.12 the CosmicAI reference's
model code and published checkpoint use; the executor puts `timm_pythonpath()` on a script's
PYTHONPATH when no real timm is there (see `cosmicai.pipeline.executor`).
"""

from pathlib import Path


def timm_pythonpath() -> Path:
    """The folder holding the `timm` shim package (a PYTHONPATH entry for scripts)."""
    return Path(__file__).resolve().parent / "pythonpath"
