"""``filterdb train``: train one model, a matched pair, or the normal counterpart of a RobustBench model."""
from __future__ import annotations

import functools
from pathlib import Path

import click
import pandas as pd

from filterdb.cli.options import format_option
from filterdb.errors import FilterDBError
from filterdb.output import emit
from filterdb.training.attacks import NORMS, AttackConfig, format_eps, parse_eps
from filterdb.training.data import DATASETS
from filterdb.training.methods import METHODS, ROBUST_METHODS
from filterdb.training.trainer import (
    AMP_MODES,
    SCHEDULES,
    SELECTIONS,
    TrainConfig,
    Trainer,
    TrainResult,
    default_attack,
)


def _eps(_ctx, _param, value):
    return None if value is None else parse_eps(value)


def _milestones(_ctx, _param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated epochs, e.g. 50,75") from None


def training_options(func):
    """The options shared by every subcommand: data, schedule, attack, GPU settings, output."""
    options = [
        click.option("--dataset", "-d", default="digits", show_default=True, type=click.Choice(DATASETS)),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Where the dataset lies in its standard format [default: $FILTERDB_HOME/data]."),
        click.option("--download", is_flag=True, help="Download CIFAR / SVHN into --data-dir if missing."),
        click.option("--epochs", "-e", default=10, show_default=True),
        click.option("--batch-size", "-b", default=128, show_default=True, help="Global batch size (split over GPUs)."),
        click.option("--lr", default=0.1, show_default=True),
        click.option("--momentum", default=0.9, show_default=True),
        click.option("--weight-decay", default=5e-4, show_default=True),
        click.option("--schedule", type=click.Choice(SCHEDULES), default="multistep", show_default=True),
        click.option("--milestones", callback=_milestones, default=None,
                     help="Epochs (0-based) of the LR drops, e.g. 100,150 [default: 50% and 75% of --epochs]."),
        click.option("--gamma", default=0.1, show_default=True, help="LR factor at each milestone."),
        click.option("--seed", default=0, show_default=True),
        click.option("--selection", type=click.Choice(SELECTIONS), default="last", show_default=True,
                     help="Which epoch's weights are the result (best-*: on a held-out validation split)."),
        click.option("--val-fraction", type=float, default=None, help="Held-out share of the training set [0.1 with best-*]."),
        click.option("--norm", type=click.Choice(NORMS), default="Linf", show_default=True, help="Attack norm."),
        click.option("--eps", callback=_eps, default=None, help="Attack budget, e.g. 8/255 [default per dataset]."),
        click.option("--steps", default=10, show_default=True, help="Attack steps of PGD training."),
        click.option("--step-size", callback=_eps, default=None, help="Attack step size, e.g. 2/255 [2.5 * eps / steps]."),
        click.option("--random-start/--no-random-start", default=True, show_default=True),
        click.option("--restarts", default=1, show_default=True, help="Restarts of the evaluation attack."),
        click.option("--eval-steps", default=10, show_default=True, help="PGD steps of the robust accuracy."),
        click.option("--eval-samples", type=int, default=None, help="Evaluate on the first N test images only."),
        click.option("--beta", type=float, default=None, help="TRADES / MART trade-off [6]."),
        click.option("--cusp-rotation", default=30.0, show_default=True, help="CuSP final rotation budget, degrees."),
        click.option("--cusp-translation", default=0.1, show_default=True, help="CuSP final translation, share of the side."),
        click.option("--amp", type=click.Choice(AMP_MODES), default="none", show_default=True, help="Mixed precision."),
        click.option("--channels-last", is_flag=True, help="NHWC memory format (faster convolutions on GPUs)."),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the model."),
        click.option("--workers", default=0, show_default=True, help="DataLoader worker processes."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 [default: cuda if available]."),
        click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Run directory [default: $FILTERDB_HOME/runs/<name>]."),
        click.option("--resume", is_flag=True, help="Continue from the run directory's last.pt if there is one."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
        format_option,
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), func)


def _config(model_string: str, method: str, o: dict) -> TrainConfig:
    default = default_attack(o["dataset"])
    if o["eps"] is None and o["norm"] != default.norm:
        raise FilterDBError(f"--norm {o['norm']} needs --eps as well (the {o['dataset']} default is {default.describe()})")
    attack = AttackConfig(norm=o["norm"], eps=default.eps if o["eps"] is None else o["eps"], steps=o["steps"],
                          step_size=o["step_size"], random_start=o["random_start"])
    eval_attack = AttackConfig(norm=attack.norm, eps=attack.eps, steps=o["eval_steps"], restarts=o["restarts"])
    return TrainConfig(model_string=model_string, dataset=o["dataset"], method=method, attack=attack,
                       eval_attack=eval_attack, beta=o["beta"], cusp_rotation=o["cusp_rotation"],
                       cusp_translation=o["cusp_translation"], epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"],
                       momentum=o["momentum"], weight_decay=o["weight_decay"], schedule=o["schedule"],
                       milestones=o["milestones"], gamma=o["gamma"], seed=o["seed"], selection=o["selection"],
                       val_fraction=o["val_fraction"], eval_samples=o["eval_samples"],
                       data_dir=str(o["data_dir"]) if o["data_dir"] else None, download=o["download"], amp=o["amp"],
                       channels_last=o["channels_last"], compile=o["compile_"], workers=o["workers"], device=o["device"])


def _run_dir(o: dict, name: str) -> Path:
    if o["out"] is not None:
        return o["out"]
    from filterdb.paths import home
    return home() / "runs" / name.replace("/", "-").replace(":", "-")


def _fit(config: TrainConfig, out_dir: Path, o: dict, **trainer_args) -> TrainResult:
    last = out_dir / "last.pt"
    if o["resume"] and last.exists():
        click.echo(f"resuming from {last}", err=True)
        trainer = Trainer.resume(last, out_dir, progress=not o["no_progress"], device=config.device, workers=config.workers)
    else:
        if last.exists() and not o["resume"]:
            raise FilterDBError(f"{out_dir} already holds a run (last.pt); pass --resume to continue it or choose another --out")
        trainer = Trainer(config, out_dir, progress=not o["no_progress"], **trainer_args)
    return trainer.fit()


def _emit_result(frame: pd.DataFrame, fmt: str, title: str) -> None:
    """A run's result, printed once: by rank 0 alone under torchrun (every rank trains, one reports)."""
    from filterdb.training.ddp import is_main_process
    if is_main_process():
        emit(frame, fmt, title=title)


def _row(result: TrainResult, config: TrainConfig) -> dict:
    m = result.metrics
    return {"model": config.model_string, "dataset": config.dataset, "method": config.method,
            "attack": config.attack.describe() if config.attack else "", "epochs": config.epochs,
            "clean_acc": m["clean_acc"], "robust_acc": m["robust_acc"],
            "robust_attack": f"{m['robust_attack']} {m['threat_model']} eps={format_eps(m['eps'])}",
            "checkpoint": str(result.checkpoint)}


@click.group()
def train():
    """Train models: one run, a matched normal/robust pair, or a RobustBench counterpart.

    Runs on the GPU when there is one; under ``torchrun --nproc-per-node N`` on N GPUs.
    Model strings: see 'filterdb models' (e.g. cnn4-16, resnet20-16_k5_reflect, wrn28-10). A RobustBench id
    in a model string (robustbench:cifar10/Linf/Standard) is its architecture with fresh weights; its
    published weights go into a database with 'filterdb add robustbench:cifar10/Linf/Standard'.
    """


@train.command("run")
@click.option("--model", "-m", "model_string", required=True, help="Model string: an architecture, trained from scratch (e.g. resnet20-16, robustbench:cifar10/Linf/Standard; 'filterdb models' lists the grammar).")
@click.option("--method", type=click.Choice(METHODS), default="standard", show_default=True)
@training_options
def run_command(model_string, method, **o):
    """Train one model with one method."""
    config = _config(model_string, method, o)
    out = _run_dir(o, f"{config.model_string}-{config.dataset}-{method}-s{config.seed}")
    result = _fit(config, out, o)
    _emit_result(pd.DataFrame([_row(result, config)]), o["fmt"], "training result")


@train.command("pair")
@click.option("--model", "-m", "model_string", required=True, help="Model string: an architecture, trained from scratch (e.g. resnet20-16, robustbench:cifar10/Linf/Standard; 'filterdb models' lists the grammar).")
@click.option("--robust-method", type=click.Choice(ROBUST_METHODS), default="pgd", show_default=True)
@training_options
def pair_command(model_string, robust_method, **o):
    """Train a matched pair: a normal and a robust model with the same seed, initial
    weights, data order and checkpoint-selection rule (into OUT/normal and OUT/<method>)."""
    from filterdb.training.pair_training import pair_configs, train_pair_config

    robust_cfg = pair_configs(_config(model_string, robust_method, o))[1]
    out = _run_dir(o, f"pair-{robust_cfg.model_string}-{robust_cfg.dataset}-{robust_method}-s{robust_cfg.seed}")
    results = train_pair_config(robust_cfg, out, fit=lambda cfg, run_dir, **kw: _fit(cfg, run_dir, o, **kw))
    rows = [_row(result, cfg) for result, cfg in zip(results, pair_configs(robust_cfg))]
    _emit_result(pd.DataFrame(rows), o["fmt"], "matched pair")


@train.command("counterpart")
@click.argument("robustbench_id")
@click.option("--threat-model", default="Linf", show_default=True, help="Threat model of the RobustBench id.")
@training_options
@click.pass_context
def counterpart_command(ctx, robustbench_id, threat_model, **o):
    """Train a normal model of ROBUSTBENCH_ID's architecture (e.g. Carmon2019Unlabeled), the
    counterpart to compare the robust model with; on the id's dataset unless --dataset says otherwise."""
    from filterdb.training.pair_training import counterpart_model_string

    if ctx.get_parameter_source("dataset") == click.core.ParameterSource.DEFAULT:
        o["dataset"] = _robustbench_dataset(robustbench_id, threat_model)
    model_string = counterpart_model_string(robustbench_id, o["dataset"], threat_model)
    config = _config(model_string, "standard", o)
    out = _run_dir(o, f"counterpart-{model_string}-s{config.seed}")
    result = _fit(config, out, o, pairing={"counterpart_of": model_string})
    _emit_result(pd.DataFrame([_row(result, config)]), o["fmt"], "normal counterpart")


def _robustbench_dataset(robustbench_id: str, threat_model: str) -> str:
    """The dataset a RobustBench id was trained on: from a full id, else from the model table."""
    parts = robustbench_id.removeprefix("robustbench:").split("/")
    if len(parts) == 3:
        dataset = parts[0]
    else:
        from filterdb.sources.robustbench import datasets_of

        found = datasets_of(robustbench_id, threat_model)
        if len(found) != 1:
            why = (f"is on the {threat_model} leaderboards of {', '.join(found)}" if found
                   else f"is not in the {threat_model} RobustBench model table ('filterdb leaderboards' lists them)")
            raise FilterDBError(f"{robustbench_id} {why}; give --dataset")
        dataset = found[0]
    if dataset not in DATASETS:
        raise FilterDBError(f"{robustbench_id}: its dataset {dataset} cannot be trained on here; "
                            f"give --dataset (one of {', '.join(DATASETS)})")
    return dataset


@train.command("show")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@format_option
def show_command(checkpoints, fmt):
    """Describe training checkpoints: model, method, attack, accuracies, epoch, versions."""
    from filterdb.training.checkpoint import load_checkpoint

    rows = []
    for path in checkpoints:
        c = load_checkpoint(path)
        attack = AttackConfig.from_dict(c.attack).describe() if c.attack else ""
        rows.append({"checkpoint": str(path), "model": c.model_string, "dataset": c.dataset, "method": c.method,
                     "attack": attack, "epoch": c.epoch, "selection": c.selection, "selected": c.selected,
                     "clean_acc": c.metrics.get("clean_acc", float("nan")),
                     "robust_acc": c.metrics.get("robust_acc", float("nan")),
                     "robust_attack": c.metrics.get("robust_attack", ""), "torch": c.versions.get("torch", "")})
    emit(pd.DataFrame(rows), fmt, title="checkpoints")


@click.command("models")
@click.argument("model_string", required=False)
def models_command(model_string):
    """The model-string grammar; with MODEL_STRING, check it and show what it builds (on the meta device)."""
    from filterdb.training.registry import (
        architecture_title,
        create_model,
        describe_models,
        parse_model_string,
    )

    if model_string is None:
        click.echo(describe_models())
        return
    import torch

    spec = parse_model_string(model_string)
    with torch.device("meta"):
        model = create_model(model_string)
    n_params = sum(p.numel() for p in model.parameters())
    click.echo(f"{spec}: {architecture_title(spec)}, {n_params:,} parameters")


