"""Compatibility shim for reference scripts, not timm: the `timm.models.layers` names that
vision transformers use, as in timm 0.4.12."""

from .drop import DropPath, drop_path
from .helpers import to_2tuple
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .weight_init import trunc_normal_

__all__ = ["DropPath", "Mlp", "PatchEmbed", "drop_path", "to_2tuple", "trunc_normal_"]
