"""Compatibility shim for reference scripts, not timm.

CosmicAI scripts run where timm cannot be installed (it needs torchvision). This package holds
only what the CosmicAI reference's model code and its published pickled checkpoint use, with
timm 0.4.12's module paths, constructor signatures, attribute names and forward computations,
so `from timm.models.vision_transformer import PatchEmbed, Block` resolves and `torch.load`
restores and runs the checkpoint's timm objects. Anything else of timm (create_model, other
models) is absent: bundle a real timm beside your script to use it.
"""

from . import models

__version__ = "0.4.12"  # the timm release whose behaviour this shim reproduces

__all__ = ["models"]
