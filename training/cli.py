"""`sorter train | evaluate | export | tune`: thin commands over training/ (needs TensorFlow)."""

from __future__ import annotations

import typer

from training.backbone_table import backbone_help

app = typer.Typer(help="Train, evaluate, export and tune models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


def _given(ctx: typer.Context, name: str | None) -> bool:
    """Was this option set on the command line (or by the environment), not left at its default?"""
    source = ctx.get_parameter_source(name) if name else None
    return source is not None and source.name != "DEFAULT"


# --- train (owner: train helper) ---
@app.command()
def train(ctx: typer.Context,
          data: list[str] = typer.Argument(..., help="DATA/<class>/ or DATA/{train,val,test}/<class>/ image "
                                                     "folders; several are merged by class name."),
          backbone: str = typer.Option("resnet50", help=backbone_help()),
          weights: str = typer.Option("imagenet", help="imagenet | none | PATH to a no-top weights file."),
          img_size: int = typer.Option(None, help="Input side in pixels (default: the backbone's)."),
          epochs: int = typer.Option(10, help="Phase 1: epochs training the head on the frozen backbone."),
          fine_tune_epochs: int = typer.Option(10, help="Phase 2: epochs with the top layers unfrozen (0: skip)."),
          unfreeze: int = typer.Option(30, help="Top backbone layers unfrozen in phase 2 (BatchNorm stays frozen)."),
          lr: float = typer.Option(1e-3, help="Phase 1 learning rate."),
          fine_tune_lr: float = typer.Option(1e-5, help="Phase 2 learning rate."),
          batch_size: int = typer.Option(32, help="Images per batch (global, across GPUs)."),
          optimizer: str = typer.Option("adam", help="adam | sgd (momentum 0.9) | rmsprop | nadam | adadelta."),
          dropout: float = typer.Option(0.5, help="Dropout before the classifier layer."),
          seed: int = typer.Option(42, help="Seed for splits, shuffling, augmentation and weights."),
          name: str = typer.Option("train", help="Run name: runs/NAME, then NAME2, NAME3…"),
          runs_dir: str = typer.Option("runs", help="Folder holding the run folders."),
          val_split: float = typer.Option(0.2, help="Share of train carved out for validation when DATA has no val/."),
          test_split: float = typer.Option(0.1, help="Share held out for testing when DATA has no test/."),
          class_weights: bool = typer.Option(False, "--class-weights", help="Weight classes by inverse frequency."),
          no_augment: bool = typer.Option(False, "--no-augment", help="Train on the images as they are."),
          rotation: float = typer.Option(90.0, help="Augmentation: max rotation in degrees."),
          width_shift: float = typer.Option(0.2, help="Augmentation: max horizontal shift (fraction)."),
          height_shift: float = typer.Option(0.2, help="Augmentation: max vertical shift (fraction)."),
          shear: float = typer.Option(0.2, help="Augmentation: max shear (fraction)."),
          zoom: float = typer.Option(0.2, help="Augmentation: max zoom in/out (fraction)."),
          flip: bool = typer.Option(True, "--flip/--no-flip", help="Augmentation: random horizontal flips."),
          vflip: bool = typer.Option(False, "--vflip/--no-vflip", help="Augmentation: random vertical flips."),
          brightness: float = typer.Option(0.0, help="Augmentation: max brightness shift (fraction of 0..255)."),
          contrast: float = typer.Option(0.0, help="Augmentation: max contrast change (fraction)."),
          fill: str = typer.Option("reflect", help="Augmentation: what fills the corners a transform uncovers: "
                                                   "reflect | constant (black, as in pre-augmented photo sets) | "
                                                   "nearest."),
          patience: int = typer.Option(5, help="Early stopping: epochs without a better val loss."),
          binary_sigmoid: bool = typer.Option(False, "--binary-sigmoid",
                                              help="Two classes: one sigmoid output instead of softmax."),
          label_smoothing: float = typer.Option(0.0, help="Label smoothing of the softmax targets (0: off)."),
          ema: float = typer.Option(0.0, help="Phase 2: finish on an exponential moving average of the weights "
                                               "with this momentum, e.g. 0.99 (0: off)."),
          split_files: list[str] = typer.Option([], "--split-file",
                                               help="A `sorter split` file: the train/val/test of the data "
                                                    "folder it names (grouped by near-duplicates). Repeatable."),
          oversample: list[str] = typer.Option([], "--oversample", metavar="ROOT=N",
                                               help="Repeat a data root's training photos N times per epoch "
                                                    "(e.g. fruit_extra=3: the photos most like the field weigh "
                                                    "more). Repeatable."),
          baselines: bool = typer.Option(False, "--baselines",
                                         help="Also fit logistic-regression and linear-SVM heads on frozen "
                                              "features and record their test scores (baselines.json)."),
          config: str = typer.Option(None, "--config",
                                     help="JSON from `sorter tune` or a run's config.json; flags win.")) -> None:
    """Fine-tune a backbone on class folders into runs/NAME (config, history, labels, splits, model.keras)."""
    import json
    from pathlib import Path

    from sorter.console import fail
    from training.tf_quiet import import_tensorflow

    import_tensorflow()
    from training.backbones import WeightsUnavailable
    from training.train import TrainConfig
    from training.train import train as run_train

    values: dict = {}
    try:
        if config:
            values.update(json.loads(Path(config).read_text()))
        for key, value in ctx.params.items():
            if key not in ("data", "config") and _given(ctx, key):  # typer vendors click
                values["augment" if key == "no_augment" else key] = (not value) if key == "no_augment" else value
        result = run_train([Path(d) for d in data], TrainConfig.from_dict(values))
    except (OSError, ValueError, TypeError, WeightsUnavailable) as exc:  # json errors are ValueErrors
        fail(str(exc))
    typer.echo(str(result.run_dir))


@app.command("split")
def split(root: str = typer.Argument(..., help="A photo collection: ROOT/<class>/ (with MANIFEST.tsv naming "
                                               "each photo's source, when it has one)."),
          out: str = typer.Option(..., "--out", help="The split file to write (TSV)."),
          test: float = typer.Option(0.3, help="Least share of every source × class in test."),
          val: float = typer.Option(0.15, help="Share of every source × class in validation (whole groups)."),
          seed: int = typer.Option(42, help="Seed of the group draw."),
          keep_test: bool = typer.Option(False, "--keep-test",
                                         help="Keep the collection's own test photos (MANIFEST split, or "
                                              "ROOT/test/) as test; split the rest into train and val."),
          one_source: str = typer.Option(None, "--one-source",
                                         help="Treat every photo as from this one source (re-hosted "
                                              "copies of one dataset), so near-copies group across hosts.")
          ) -> None:
    """Group near-duplicate photos (same source and class: look-alikes in any orientation, phone
    bursts) and split by whole groups into train/val/test, for `sorter train --split-file`."""
    from pathlib import Path

    from sorter.console import fail
    from training.groups import make_split

    try:
        summary = make_split(Path(root), Path(out), test=test, val=val, seed=seed, keep_test=keep_test,
                             one_source=one_source)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"{out}: {summary['photos']} photos in {summary['groups']} groups; "
               f"train {summary['train']}, val {summary['val']}, test {summary['test']}")


# --- tune (owner: train helper) ---
@app.command()
def tune(data: str = typer.Argument(..., help="DATA/<class>/ or DATA/{train,val,test}/<class>/ image folders."),
         search: str = typer.Option("random", help="random | grid."),
         trials: int = typer.Option(None, help="Settings to try (default: 10 random, or the whole grid)."),
         folds: int = typer.Option(3, help="Stratified k-fold CV folds on train+val."),
         epochs: int = typer.Option(3, help="Epochs per phase in each fold."),
         backbone: str = typer.Option("resnet50", help=backbone_help()),
         weights: str = typer.Option("imagenet", help="imagenet | none | PATH to a no-top weights file."),
         img_size: int = typer.Option(None, help="Input side in pixels (default: the backbone's)."),
         out: str = typer.Option("runs/tune", help="Output folder (tune, tune2, … never overwritten)."),
         seed: int = typer.Option(42, help="Seed for the split, the folds, the search and training.")) -> None:
    """Search learning rate, dropout, unfrozen layers, batch size and optimizer with k-fold CV,
    beside frozen-embedding baselines; writes best.json for `sorter train --config`."""
    from pathlib import Path

    from rich.console import Console

    from sorter.console import fail
    from training.tf_quiet import import_tensorflow

    import_tensorflow()
    from training.backbones import WeightsUnavailable
    from training.tune import tune as run_tune

    try:
        result = run_tune(Path(data), search=search, trials=trials, folds=folds, epochs=epochs,
                          backbone=backbone, weights=weights, img_size=img_size, out=Path(out), seed=seed)
    except (OSError, ValueError, WeightsUnavailable) as exc:
        fail(str(exc))
    Console().print(result.table())
    typer.echo(result.recommendation)
    typer.echo(str(result.out_dir / "best.json"))


# --- evaluate (owner: export helper) ---
@app.command()
def evaluate(model: str = typer.Argument(..., help="Run folder, model.keras, or a .tflite bundle."),
             data: list[str] = typer.Argument(..., help="Data folders (class folders or train/val/test); several "
                                                        "are merged by class name and each reported apart."),
             out: str = typer.Option("", "--out", help="Output folder (default: evaluations/MODEL-SPLIT)."),
             split: str = typer.Option("test", "--split", help="train, val or test."),
             worst: int = typer.Option(16, "--worst", help="Thumbnails in the worst-errors gallery."),
             split_files: list[str] = typer.Option([], "--split-file",
                                                  help="A `sorter split` file: the train/val/test of the data "
                                                       "folder it names. Repeatable."),
             config: str = typer.Option(None, "--config",
                                        help="The sorter.toml the runtime reads: its rotten_at, fresh_at, "
                                             "unknown_below… make the verdict rule scored.")) -> None:
    """Score a Keras model or a .tflite export on one or several data sets, per set, under the
    runtime's verdict rule: calibration, the threshold settings and the unknown verdict."""
    import logging
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape

    from sorter.config import ConfigError, Settings, load_settings
    from training.evaluate import evaluate as run_evaluate
    from training.evaluate import split_name
    from training.evaluate_field import summary_lines

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    err = Console(stderr=True)
    try:
        split = split_name(split)
        settings = load_settings(Path(config)) if config else Settings()
        folder = Path(out or f"evaluations/{Path(model).name.removesuffix('.tflite')}-{split}")
        metrics = run_evaluate(Path(model), [Path(d) for d in data], folder, split, worst,
                               [Path(f) for f in split_files], settings)
    except (FileNotFoundError, ValueError, RuntimeError, ConfigError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for warning in metrics["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    typer.echo(f"accuracy {metrics['accuracy']:.4f} on {metrics['n']} {split} images; "
               f"macro F1 {metrics['macro']['f1']:.4f}")
    for line in summary_lines(metrics):
        typer.echo(line)
    typer.echo(f"report: {folder / 'report.html'}  metrics: {folder / 'metrics.json'}")


# --- export (owner: export helper) ---
def command_line(ctx: typer.Context) -> str:
    """The command as a user would retype it: the verb, the arguments, and the options they set."""
    import shlex

    words = ["sorter", ctx.info_name or ""]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            words.append(str(value))
        elif _given(ctx, param.name):
            flag = param.opts[0] if not isinstance(value, bool) or value else (param.secondary_opts or [""])[0]
            words += [flag] if isinstance(value, bool) else [flag, str(value)]
    return shlex.join(w for w in words if w)


@app.command()
def export(ctx: typer.Context,
           source: str = typer.Argument(..., metavar="RUN_OR_MODEL", help="Run folder or model.keras."),
           data: str = typer.Option("", "--data", help="Data folder (default: the run's config.json)."),
           formats: str = typer.Option("float32,float16,dynamic,int8", "--formats",
                                       help="Comma-separated: float32, float16, dynamic, int8."),
           out: str = typer.Option("models", "--out", help="Folder for the .tflite bundles."),
           name: str = typer.Option("", "--name", help="Bundle name prefix (default: the run name)."),
           calibration: int = typer.Option(500, "--calibration", help="int8 calibration images (train)."),
           allow_drop: bool = typer.Option(False, "--allow-drop", help="Keep exports that fail the gate."),
           max_drop: float = typer.Option(1.0, "--max-drop",
                                         help="Max accuracy drop in points vs float, refused only when beyond "
                                              "chance on this test set (exact McNemar, p < 0.05)."),
           latency_runs: int = typer.Option(30, "--latency-runs", help="Timed batch-1 runs per export."),
           rotten_recall: float = typer.Option(0.98, "--rotten-recall",
                                               help="Goal: share of rotten validation photos not passed as fresh."),
           fresh_kept: float = typer.Option(0.95, "--fresh-kept",
                                            help="Goal: share of fresh validation photos not binned as rotten."),
           unknown_pass: float = typer.Option(0.95, "--unknown-pass",
                                              help="Validation share above the unknown threshold."),
           ood_score: str = typer.Option("distance", "--ood-score",
                                         help="What unknown is measured on: distance (to the training classes "
                                              "in feature space, a second output) or energy (of the logits).")
           ) -> None:
    """Export TFLite variants with model cards and an accuracy gate. The card carries a temperature, P(rotten)
    thresholds for the goal at the lowest uncertain rate and an unknown threshold, all chosen on validation
    photos, and the figures they make on each data root's test split."""
    import logging
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape

    from training.tf_quiet import import_tensorflow

    import_tensorflow()
    from training.decide import Goal
    from training.export import FORMATS, ExportError, GateRefused, export_table, parse_formats
    from training.export import export as run_export

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    err, console = Console(stderr=True), Console()
    try:
        names = parse_formats(formats)
        console.print(export_table([FORMATS[n] for n in names]))
        results = run_export(Path(source), Path(data) if data else None, names, Path(out), name or None,
                             calibration, allow_drop, max_drop, command_line(ctx),
                             latency_runs, Goal(rotten_recall, fresh_kept), unknown_pass, ood_score)
    except (ExportError, FileNotFoundError, ValueError) as exc:
        if isinstance(exc, GateRefused):  # what every format scored, refused ones included
            console.print(export_table(exc.results))
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(export_table(results))
    best = next((r for r in results if r.format == "int8" and not r.problem), results[-1])
    console.print(f"run it: sorter classify --model {best.path} IMAGES", highlight=False, soft_wrap=True)


# --- retrain (owner: retrain helper) ---
@app.command()
def retrain(ctx: typer.Context,
            db: str = typer.Option(..., "--db", help="The results database with the operators' audits."),
            base_data: list[str] = typer.Option(..., "--base-data",
                                                help="Data folders the model in use was trained on (merged as "
                                                     "`sorter train` merges them). Repeatable."),
            out: str = typer.Option(..., "--out", help="Folder for the field data set, the run, the challenger "
                                                       "bundle and comparison.json."),
            model: str = typer.Option(None, "--model", help="The model in use (default: `current` in --dir)."),
            models_dir: str = typer.Option("/var/lib/sorter/models", "--dir",
                                           help="Models folder holding `current` (what --install swaps)."),
            install: bool = typer.Option(False, "--install",
                                         help="Install the challenger (sorter model install's checks) when it "
                                              "wins."),
            quick: bool = typer.Option(None, "--quick/--full",
                                       help="Quick: head and top layers on cached features, few epochs "
                                            "(default without a GPU); full: the model's own run recipe."),
            field_test: float = typer.Option(0.3, "--field-test", help="Share of every true label's field "
                                                                       "photos held back as the field test."),
            field_val: float = typer.Option(0.15, "--field-val",
                                            help="Share of the rest held as validation: the card's "
                                                 "temperature, thresholds and unknown threshold fit the line."),
            field_share: float = typer.Option(0.3, "--field-share",
                                              help="Share of each epoch the field training photos make up "
                                                   "(their weight is set so)."),
            since: str = typer.Option(None, "--since", help="Only items received within this age (e.g. 30d)."),
            include_unaudited_confident: float = typer.Option(
                None, "--include-unaudited-confident",
                help="Also train on unaudited fresh/rotten items at or above this confidence (pseudo-labels)."),
            split_files: list[str] = typer.Option([], "--split-file",
                                                  help="A `sorter split` file for a base data folder. Repeatable."),
            alpha: float = typer.Option(0.05, "--alpha", help="Install only when the field win's one-sided exact "
                                                              "McNemar p is below this."),
            base_tolerance: float = typer.Option(1.0, "--base-tolerance",
                                                 help="Accuracy points the challenger may lose on the base "
                                                      "test set."),
            quick_epochs: int = typer.Option(6, "--quick-epochs", help="Epochs of the quick fine-tune."),
            quick_lr: float = typer.Option(1e-3, "--quick-lr", help="Learning rate of the quick fine-tune."),
            quick_layers: int = typer.Option(20, "--quick-layers",
                                             help="Backbone layers the quick fine-tune trains (at least; the "
                                                  "cut lies at a block boundary)."),
            keep_base: float = typer.Option(0.3, "--keep-base",
                                            help="Quick: share of each base photo's target that is the model's own "
                                                 "answer before training (less forgetting of the base data)."),
            seed: int = typer.Option(42, "--seed", help="Seed of the field split and the fine-tune."),
            name: str = typer.Option(None, "--name", help="Bundle name (default: PARENT-rYYYYMMDDHHMM)."),
            min_control_accuracy: float = typer.Option(
                0.9, "--min-control-accuracy",
                help="Refuse the audits (exit 1, nothing trained) when their samples' control photos of known "
                     "label (`sorter audit sample --control-data`) were answered right less often than this.")
            ) -> None:
    """Retrain on the line's audits: a challenger fine-tuned from the model in use, compared with it on held-out
    field photos and the base test set, installed (with --install) only when it wins beyond chance.
    Exit 0: the challenger wins; 1: it loses (the current model stays); 2: an error."""
    import logging
    from pathlib import Path

    from rich.console import Console

    from sorter.console import fail
    from sorter.store import parse_age
    from training.tf_quiet import import_tensorflow

    import_tensorflow()
    from training.retrain import RetrainConfig, RetrainError
    from training.retrain import retrain as run_retrain

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        config = RetrainConfig(
            Path(db), [Path(d) for d in base_data], Path(out), model=Path(model) if model else None,
            models_dir=Path(models_dir), install=install, quick=quick, field_test=field_test, field_val=field_val,
            field_share=field_share, since=parse_age(since) if since else None,
            include_unaudited_confident=include_unaudited_confident, split_files=[Path(f) for f in split_files],
            seed=seed, alpha=alpha, base_tolerance=base_tolerance, quick_epochs=quick_epochs, quick_lr=quick_lr,
            quick_layers=quick_layers, keep_base=keep_base, name=name, command=command_line(ctx),
            min_control_accuracy=min_control_accuracy)
        result = run_retrain(config, Console(stderr=True))
    except (RetrainError, ValueError, OSError) as exc:
        fail(str(exc))
    Console().print(result.decision.reason, highlight=False, soft_wrap=True)
    if result.installed:
        typer.echo(f"current -> {result.installed.name}; restart the services to load it "
                   "(sorter model rollback undoes this)")
    typer.echo(f"comparison: {result.out / 'comparison.json'}")
    raise typer.Exit(0 if result.decision.install else 1)
