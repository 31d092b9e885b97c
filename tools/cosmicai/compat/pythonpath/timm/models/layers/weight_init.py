"""Compatibility shim for reference scripts, not timm: timm 0.4.12's `trunc_normal_`, which is
the algorithm torch.nn.init.trunc_normal_ took over (same draws for the same RNG state)."""

from torch import Tensor, nn


def trunc_normal_(
    tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0
) -> Tensor:
    """Fill `tensor` from N(mean, std) truncated to [a, b], in place."""
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)
