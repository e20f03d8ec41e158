"""Backbones for fine-tuning. Each takes raw RGB 0..255 float input and holds its own preprocessing.

INTERFACE (being implemented):
    build_backbone(name, weights="imagenet", input_size=None) -> keras.Model
        name: "resnet50" | "efficientnet-lite0" (| lite1 | lite2)
        weights: "imagenet" | "none" | path to a local no-top weights file
        returns a Model mapping (N, H, W, 3) float32 0..255 → feature map (N, h, w, C)
    default_input_size(name) -> int
    class WeightsUnavailable(RuntimeError): one-line message for the user
"""
