"""Fine-tune a trained classifier further: the top of the network only (quick), or its whole recipe.

`quick` is for a CPU beside a conveyor: the bottom of the network is frozen anyway, so its output is
computed once per photo and cached, and only the part above a cut (the head and the top backbone
blocks) is trained on the cached features, a few epochs in seconds instead of a full forward pass per
photo per epoch. The price is no augmentation (a cached feature is one view of the photo). The cut
lies where the graph narrows to one tensor (after a block's residual add), so the part above it is a
graph of its own; the trained layers are the original model's, so the model is updated in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUICK_LAYERS = 20  # backbone layers above the cut: EfficientNet-Lite's head conv and its last two blocks


@dataclass
class Weighted:
    """Training photos (uint8 pixels, label indices) with a weight each (field photos weigh more), and
    which of them the model already knows (the base photos: their targets may keep its own answers)."""

    images: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    known: np.ndarray | None = None


def targets(labels: np.ndarray, known: np.ndarray | None, before: np.ndarray, keep: float) -> np.ndarray:
    """One-hot targets; on the photos the model already knows, `keep` of the target is its own answer
    before training (Learning without Forgetting, Li & Hoiem 2016). Fine-tuning the top of a network on
    a few hundred photos of a new line otherwise moves its answers on the photos it knew, and the base
    test set then refuses the challenger; the line's photos keep plain one-hot targets, so the new
    knowledge comes only from them."""
    onehot = np.eye(before.shape[1], dtype=np.float32)[labels]
    if known is None or keep <= 0:
        return onehot
    mix = np.where(known[:, None], (1 - keep) * onehot + keep * before.astype(np.float32), onehot)
    return mix.astype(np.float32)


def find_backbone(model):
    """The nested backbone model of a `training.train.build_classifier` graph, or None (a flat model)."""
    import keras

    return next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)


def _sources(layer) -> list[str]:
    return [t._keras_history[0].name for node in layer._inbound_nodes[:1] for t in node.input_tensors]


def cut_points(graph) -> list[int]:
    """Indices i of `graph.layers` such that no layer after i reads a layer before i: the output of
    layer i is then all the graph above it needs, and that part is a graph of its own."""
    layers = graph.layers
    position = {layer.name: i for i, layer in enumerate(layers)}
    reads = [min((position[s] for s in _sources(layer) if s in position), default=i) for i, layer in enumerate(layers)]
    cuts, lowest_read_after = [], len(layers)
    for i in range(len(layers) - 2, -1, -1):
        lowest_read_after = min(lowest_read_after, reads[i + 1])
        if lowest_read_after >= i:
            cuts.append(i)
    return sorted(cuts)


def choose_cut(graph, layers_above: int) -> int:
    """The highest cut with at least `layers_above` layers above it (the lowest cut when none has)."""
    cuts = cut_points(graph)
    if not cuts:
        raise ValueError(f"{graph.name} has no layer to cut at: it cannot be fine-tuned quickly")
    last = len(graph.layers) - 1
    fit = [c for c in cuts if last - c >= layers_above]
    return max(fit) if fit else min(cuts)


def split_model(model, layers_above: int = QUICK_LAYERS):
    """(bottom, top, trainable layers): bottom maps pixels to the cached tensor, top maps it to the
    probabilities through the model's own layers (backbone part called with training=False, as
    training.train does, so BatchNorm keeps its statistics)."""
    import keras

    backbone = find_backbone(model)
    graph = backbone or model
    cut = graph.layers[choose_cut(graph, layers_above)]
    above = graph.layers[graph.layers.index(cut) + 1:]
    bottom_graph = keras.Model(graph.input, cut.output)
    if backbone is None:
        top = keras.Model(cut.output, model.output)
        bottom = bottom_graph
    else:
        upper = keras.Model(cut.output, backbone.output)
        inp = keras.Input(tuple(cut.output.shape[1:]))
        x = upper(inp, training=False)
        for layer in model.layers[model.layers.index(backbone) + 1:]:
            x = layer(x)
        top = keras.Model(inp, x)
        bottom = keras.Model(model.input, bottom_graph(model.input, training=False))
    return bottom, top, above


def _freeze_all_but(model, trainable: list) -> None:
    import keras

    from training.train import _leaves

    for leaf in _leaves(model):
        leaf.trainable = False
    keep = {id(layer) for layer in trainable}
    for leaf in _leaves(model):
        if id(leaf) in keep and not isinstance(leaf, keras.layers.BatchNormalization):
            leaf.trainable = True
    backbone = find_backbone(model)
    if backbone is not None:
        backbone.trainable = True  # the nested model's flag gates its leaves'
        for leaf in _leaves(backbone):
            leaf.trainable = id(leaf) in keep and not isinstance(leaf, keras.layers.BatchNormalization)
    for layer in model.layers:
        if layer is not backbone and not getattr(layer, "layers", None):
            layer.trainable = True  # the head (pooling, dropout, classifier)


def features(bottom, images: np.ndarray, batch: int = 32) -> np.ndarray:
    parts = [np.asarray(bottom(images[i: i + batch].astype(np.float32), training=False))
             for i in range(0, len(images), batch)]
    return np.concatenate(parts)


def quick(model, data: Weighted, *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 32,
          layers_above: int = QUICK_LAYERS, seed: int = 42, keep: float = 0.0, verbose: int = 0) -> dict:
    """Train the head and the top `layers_above` backbone layers on cached features; the model's
    weights change in place. `keep`: the share of a known photo's target that is the model's own answer
    before training (`targets`). Returns the history."""
    import keras

    keras.utils.set_random_seed(seed)
    bottom, top, above = split_model(model, layers_above)
    _freeze_all_but(model, above)
    cached = features(bottom, data.images, batch_size)
    before = np.asarray(top.predict(cached, batch_size=batch_size, verbose=0))
    goal = targets(data.labels, data.known, before, keep)
    top.compile(keras.optimizers.Adam(lr), "categorical_crossentropy", metrics=["categorical_accuracy"])
    done = top.fit(cached, goal, sample_weight=data.weights, epochs=epochs, batch_size=batch_size,
                   shuffle=True, verbose=verbose)
    return {k: [float(v) for v in vs] for k, vs in done.history.items()}


def full(model, config, data: Weighted, val: tuple[np.ndarray, np.ndarray] | None, verbose: int = 0) -> dict:
    """The run's own two-phase recipe (training.train.fit: augmentation, phases, early stopping),
    starting from the model's weights; field photos are repeated round(weight) times per epoch."""
    from training.data import make_dataset
    from training.train import fit, pick_strategy

    backbone = find_backbone(model)
    if backbone is None:
        raise ValueError("the full recipe needs a model with a nested backbone (training.train's layout)")
    index = np.repeat(np.arange(len(data.labels)), np.maximum(1, np.rint(data.weights)).astype(int))
    train_ds = make_dataset(data.images[index], data.labels[index], config.batch_size, training=True,
                            augment=config.augmentation(), seed=config.seed)
    val_ds = (make_dataset(val[0], val[1], config.batch_size, training=False) if val is not None and len(val[1])
              else None)
    return fit(model, backbone, config, train_ds, val_ds, strategy=pick_strategy(), verbose=verbose)
