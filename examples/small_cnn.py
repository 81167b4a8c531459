"""A model of your own, as pat_ray meets it: a plain ``nn.Module`` class in your package.

``pipelines/digits_own_model.yaml`` names it by import path (``examples.small_cnn:SmallCNN``); the
README's Python examples hand the class over directly. ``num_classes`` and ``in_channels`` come
from the data because the constructor takes them.
"""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(in_channels, width),
            block(width, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            block(2 * width, 2 * width),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
