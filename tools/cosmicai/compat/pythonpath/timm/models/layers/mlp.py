"""Compatibility shim for reference scripts, not timm: timm 0.4.12's transformer MLP."""

from typing import Any

from torch import Tensor, nn


class Mlp(nn.Module):
    """MLP as used in Vision Transformer: fc1, act, dropout, fc2, dropout."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # nn.GELU pickled by torch < 1.12 has no `approximate`; its forward was the exact GELU
        if isinstance(self.act, nn.GELU) and not hasattr(self.act, "approximate"):
            self.act.approximate = "none"

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))
