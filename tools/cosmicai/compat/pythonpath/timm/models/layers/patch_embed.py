"""Compatibility shim for reference scripts, not timm: timm 0.4.12's 2D patch embedding."""

from collections.abc import Callable

from torch import Tensor, nn

from .helpers import to_2tuple


class PatchEmbed(nn.Module):
    """2D image to patch embedding: a strided conv, flattened to tokens, then `norm`."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Callable[[int], nn.Module] | None = None,
        flatten: bool = True,
    ) -> None:
        super().__init__()
        img_size = to_2tuple(img_size)
        patch_size = to_2tuple(patch_size)
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.shape
        if (height, width) != tuple(self.img_size):
            raise AssertionError(  # timm 0.4.12 asserts
                f"Input image size ({height}*{width}) doesn't match model "
                f"({self.img_size[0]}*{self.img_size[1]})."
            )
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # BCHW -> BNC
        return self.norm(x)
