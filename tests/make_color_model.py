"""Rebuild tests/data/color-*.tflite: a real TFLite model whose answer is predictable.

The model averages each colour channel and picks the strongest: a red image is
`freshred`, green `freshgreen`, blue `rottenblue`, grey is a three-way tie (uncertain).
Tests use it to assert exact routing with a real interpreter. Needs TensorFlow.
Run: python tests/make_color_model.py

`python tests/make_color_model.py logits` builds only tests/data/color-logits-*.tflite: the same
channel means, but the model outputs logits (0.1 × the mean of each channel, 0..25.5) and its card
carries a temperature, a P(rotten) decision rule and an energy OOD threshold, so the runtime's
calibrated decision path can be tested on a real interpreter. Energy = logsumexp(logits): a
saturated colour scores about 25.5, a grey or black-and-white picture about 13.9 (all three
channels at half), so with the threshold at 18 the colours pass and grey comes out `unknown`.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sorter.card import DecisionRule, InputSpec, ModelCard, OodRule, sha256_file, write_card

LABELS = ["freshred", "freshgreen", "rottenblue"]
SIZE = 32
OUT = Path(__file__).resolve().parent / "data"


# the logits bundles' card: P(rotten) = softmax(logits / TEMPERATURE)[rottenblue]
TEMPERATURE = 5.0
DECISION = DecisionRule(rotten_at=0.6, fresh_at=0.3, goal="test rule: hand-picked round thresholds",
                        chosen_on="none (tests/make_color_model.py)")
OOD = OodRule(threshold=18.0, chosen_on="none: between grey (13.9) and a saturated colour (25.5)")


def build(activation: str | None = "softmax"):
    import keras

    inp = keras.Input((SIZE, SIZE, 3), dtype="float32")
    pooled = keras.layers.GlobalAveragePooling2D()(inp)
    dense = keras.layers.Dense(3, activation=activation)
    out = dense(pooled)
    dense.set_weights([np.eye(3, dtype=np.float32) * 0.1, np.zeros(3, np.float32)])
    return keras.Model(inp, out)


def _noise(rng):
    return rng.integers(0, 256, (1, SIZE, SIZE, 3)).astype(np.float32)


def _solid(rng):
    """Solid random colours: their channel means span 0..255, so the quantised logits cover 0..25.5
    (noise alone averages to 127 in every channel and would clip a saturated colour's logit)."""
    return np.broadcast_to(rng.integers(0, 256, (1, 1, 1, 3)), (1, SIZE, SIZE, 3)).astype(np.float32)


def convert(model, quant: str, sample=_noise) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quant == "int8":
        rng = np.random.default_rng(0)

        def rep():
            for _ in range(64):
                yield [sample(rng)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
    return conv.convert()


def main_logits() -> None:
    model = build(activation=None)
    for quant, dtype in (("float32", "float32"), ("int8", "uint8")):
        path = OUT / f"color-logits-{quant}.tflite"
        path.write_bytes(convert(model, quant, _solid))
        card = ModelCard(name=f"color-logits-{quant}", labels=LABELS, rotten_labels=["rottenblue"],
                         input=InputSpec(height=SIZE, width=SIZE, dtype=dtype), quantization=quant,
                         output="logits", temperature=TEMPERATURE, decision=DECISION, ood=OOD,
                         backbone="channel-mean", model_sha256=sha256_file(path),
                         file_size_bytes=path.stat().st_size, created=datetime.date.today().isoformat(),
                         command="python tests/make_color_model.py logits")
        write_card(path, card)
        print(path, path.stat().st_size)


def main() -> None:
    if sys.argv[1:] == ["logits"]:
        main_logits()
        return
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
