"""`sorter train | evaluate | export | tune`: thin commands over training/ (needs TensorFlow)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Train, evaluate, export and tune models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


# --- train (owner: train helper) ---
@app.command()
def train() -> None:
    """Fine-tune a backbone on class folders."""
    raise NotImplementedError


# --- tune (owner: train helper) ---
@app.command()
def tune() -> None:
    """Search hyper-parameters with k-fold cross-validation."""
    raise NotImplementedError


# --- evaluate (owner: export helper) ---
@app.command()
def evaluate() -> None:
    """Score a Keras model or a .tflite export on a data set."""
    raise NotImplementedError


# --- export (owner: export helper) ---
@app.command()
def export() -> None:
    """Export TFLite variants with model cards and an accuracy gate."""
    raise NotImplementedError
