"""A second output for the exported graph: how far an image's features lie from every class it was trained on.

The energy of the logits tells a grey face crop from produce only about four times in five: a
classifier's logits are trained to separate the six classes, not to stay small away from them. The
features before the classifier (the pooled backbone output) keep more: minus the Mahalanobis
distance to the nearest training class mean (class means, one covariance shared by all classes,
shrunk by Ledoit-Wolf: 1,280 dimensions, hardly fewer than the training photos) is a standard OOD score
(Lee et al., 2018) and flags far more of the non-produce photos at the same in-distribution pass rate.
It is computed inside the graph (a Dense layer and a small layer holding the class means), so it is
quantised with the rest; the runtime reads it as a second, one-column output:
    g = f @ L                   (P = L Lᵀ, the shared precision matrix)
    d²_k = Σ_j (g_j - m_kj)²    (m_k = μ_k @ L; the differences first: |g|² - 2g·m + |m|² loses
                                 the small distances to float32 and int8 rounding)
    score = -sqrt(min_k d²_k)   (higher = more familiar, like energy)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES_LAYER = "pool"  # training.train.build_classifier's GlobalAveragePooling2D


@dataclass(frozen=True)
class DistanceParams:
    """What the head needs: the whitening factor L and the class means mapped through it."""

    L: np.ndarray  # (D, D): the precision matrix is L @ L.T
    means: np.ndarray  # (C, D): class means @ L

    def score(self, features: np.ndarray) -> np.ndarray:
        """The head's output computed in numpy (the reference the graph is tested against)."""
        g = np.asarray(features, dtype=np.float64) @ self.L
        d2 = ((g[:, None, :] - self.means[None]) ** 2).sum(axis=2)
        return -np.sqrt(d2.min(axis=1))


def fit(features: np.ndarray, y: np.ndarray, n_classes: int) -> DistanceParams:
    """Class means and a shared, shrunk covariance of the training photos' features."""
    from sklearn.covariance import LedoitWolf

    features, y = np.asarray(features, dtype=np.float64), np.asarray(y, dtype=int)
    missing = sorted(set(range(n_classes)) - set(y.tolist()))
    if missing:
        raise ValueError(f"no training photos of class(es) {missing} to place their feature mean")
    mu = np.stack([features[y == k].mean(axis=0) for k in range(n_classes)])
    precision = LedoitWolf().fit(features - mu[y]).precision_
    L = np.linalg.cholesky((precision + precision.T) / 2)
    return DistanceParams(L, mu @ L)


def feature_model(model):
    """The classifier up to its pooled features (the layer the distance is measured in)."""
    import keras

    return keras.Model(model.input, model.get_layer(FEATURES_LAYER).output)


def with_distance(model, params: DistanceParams):
    """`model` (image → logits) with a second output, the distance score."""
    import keras

    features = model.get_layer(FEATURES_LAYER).output
    whiten = keras.layers.Dense(params.L.shape[0], use_bias=False, dtype="float32", name="whiten")
    g = whiten(features)
    whiten.set_weights([params.L.astype(np.float32)])
    score = _nearest_mean_layer(params.means)(g)
    return keras.Model(model.input, [model.output, score], name=model.name)


def _nearest_mean_layer(means: np.ndarray):
    """A layer holding the whitened class means: minus the distance to the nearest one."""
    import keras

    class NearestMeanDistance(keras.layers.Layer):
        def build(self, input_shape):
            self.means = self.add_weight(shape=means.shape, initializer="zeros", trainable=False, name="means")

        def call(self, g):
            diff = keras.ops.expand_dims(g, 1) - self.means[None]
            d2 = keras.ops.sum(keras.ops.square(diff), axis=-1)
            return -keras.ops.sqrt(keras.ops.min(d2, axis=-1, keepdims=True))

    layer = NearestMeanDistance(name="ood_distance", dtype="float32")
    layer.build((None, means.shape[1]))
    layer.set_weights([means.astype(np.float32)])
    return layer
