"""Rebuild tests/data/color-*.tflite: a real TFLite model whose answer is predictable.

The model averages each colour channel and picks the strongest: a red image is
`freshred`, green `freshgreen`, blue `rottenblue`, grey is a three-way tie (uncertain).
Tests use it to assert exact routing with a real interpreter. Needs TensorFlow.
Run: python tests/make_color_model.py
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sorter.card import InputSpec, ModelCard, sha256_file, write_card

LABELS = ["freshred", "freshgreen", "rottenblue"]
SIZE = 32
OUT = Path(__file__).resolve().parent / "data"


def build():
    import keras

    inp = keras.Input((SIZE, SIZE, 3), dtype="float32")
    pooled = keras.layers.GlobalAveragePooling2D()(inp)
    dense = keras.layers.Dense(3, activation="softmax")
    out = dense(pooled)
    dense.set_weights([np.eye(3, dtype=np.float32) * 0.1, np.zeros(3, np.float32)])
    return keras.Model(inp, out)


def convert(model, quant: str) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quant == "int8":
        rng = np.random.default_rng(0)

        def rep():
            for _ in range(64):
                yield [rng.integers(0, 256, (1, SIZE, SIZE, 3)).astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
    return conv.convert()


def main() -> None:
    model = build()
    for quant, dtype in (("float32", "float32"), ("int8", "uint8")):
        path = OUT / f"color-{quant}.tflite"
        path.write_bytes(convert(model, quant))
        card = ModelCard(name=f"color-{quant}", labels=LABELS, rotten_labels=["rottenblue"],
                         input=InputSpec(height=SIZE, width=SIZE, dtype=dtype), quantization=quant,
                         backbone="channel-mean", model_sha256=sha256_file(path),
                         file_size_bytes=path.stat().st_size,
                         created=datetime.date.today().isoformat(), command="python tests/make_color_model.py")
        write_card(path, card)
        print(path, path.stat().st_size)


if __name__ == "__main__":
    main()
