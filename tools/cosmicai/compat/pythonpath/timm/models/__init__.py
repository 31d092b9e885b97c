"""Compatibility shim for reference scripts, not timm: `timm.models` as of timm 0.4.12, limited
to `layers` and `vision_transformer`."""

from . import layers, vision_transformer
from .vision_transformer import VisionTransformer

__all__ = ["VisionTransformer", "layers", "vision_transformer"]
