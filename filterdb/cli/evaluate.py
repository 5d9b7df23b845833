"""``filterdb evaluate``: robust accuracy, perturbation at the image borders and spatial fooling rate of checkpoints."""
from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from filterdb.cli.options import format_option
from filterdb.evaluation_files import evaluation_path
from filterdb.output import emit
from filterdb.training.evaluation import evaluate_checkpoint
from filterdb.training.evaluation_config import (
    CPU_DEFAULT_ATTACKS,
    DEFAULT_ATTACKS,
    DEFAULT_BORDER_WIDTHS,
    DEFAULT_ROTATIONS,
    DEFAULT_TRANSLATIONS,
    EvaluationConfig,
)
from filterdb.training.precision import AMP_MODES
from filterdb.training.spatial import FILL_MODES


def _join(values) -> str:
    return ",".join(f"{v:g}" for v in values)


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--attacks", "-a", default=None,
              help="pgd[-STEPS], cw[-STEPS] (PGD on the CW margin loss; 20 steps by default), autoattack "
                   "(standard) or a subset such as autoattack:apgd-ce,square; 'none' for no attack "
                   f"[default: {DEFAULT_ATTACKS} on a GPU, {CPU_DEFAULT_ATTACKS} on a CPU, where AutoAttack is slow: "
                   "asked for on a CPU, it prints an estimate of its cost first].")
@click.option("--linf", default="1/255,8/255", show_default=True, help="Linf budgets ('none' for none).")
@click.option("--l2", default="0.1,0.5", show_default=True, help="L2 budgets ('none' for none).")
@click.option("--n-samples", "-n", default=1000, show_default=True, help="Evaluate the first N test images.")
@click.option("--batch-size", "-b", default=256, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seeds every attack's random draws.")
@click.option("--border-widths", default=_join(DEFAULT_BORDER_WIDTHS), show_default=True,
              help="Frame widths (pixels) of the border-vs-interior perturbation ratio.")
@click.option("--rotations", default=_join(DEFAULT_ROTATIONS), show_default=True, help="Spatial grid: degrees.")
@click.option("--translations", default=_join(DEFAULT_TRANSLATIONS), show_default=True,
              help="Spatial grid: shifts in x and in y as fractions of the image side (3/32 = 3 px on CIFAR).")
@click.option("--fill", type=click.Choice(FILL_MODES), default="zeros", show_default=True,
              help="What fills the pixels a rotation or translation brings in.")
@click.option("--spatial-attack", default=None, metavar="NORM:EPS",
              help="Also attack every transformed image with PGD-10, e.g. Linf:8/255.")
@click.option("--no-spatial", is_flag=True, help="Skip the rotation/translation grid.")
@click.option("--headline", default=None, metavar="NORM:EPS",
              help="Budget behind the model table's robust_acc, one of the evaluated budgets "
                   "[the checkpoint's own threat model (added to the budgets if missing), else Linf:8/255].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the dataset lies in its standard format [default: $FILTERDB_HOME/data].")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 [default: cuda if available].")
@click.option("--amp", type=click.Choice(AMP_MODES), default="none", show_default=True,
              help="Mixed precision for the attacks' search (every counted prediction is float32).")
@click.option("--channels-last", is_flag=True, help="NHWC memory format (faster convolutions on GPUs).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@format_option
def evaluate(checkpoints, attacks, linf, l2, n_samples, batch_size, seed, border_widths, rotations, translations,
             fill, spatial_attack, no_spatial, headline, data_dir, device, amp, channels_last, no_progress, fmt):
    """Evaluate training checkpoints: clean and robust accuracy (PGD, CW, AutoAttack at Linf
    and L2 budgets), where the perturbations sit (border vs interior) and the fooling rate
    under rotations and translations.

    Results go beside each checkpoint (CHECKPOINT.eval.json, perturbation maps in
    CHECKPOINT.eval.h5) and into the model table when the checkpoint is ingested.
    """
    if attacks is not None and attacks.strip().lower() == "none":
        attacks = ""
    config = EvaluationConfig(attacks=attacks, linf=linf, l2=l2,
                              n_samples=n_samples, batch_size=batch_size, seed=seed, border_widths=border_widths,
                              spatial=not no_spatial, rotations=rotations, translations=translations, fill=fill,
                              spatial_attack=spatial_attack, headline=headline, amp=amp, channels_last=channels_last,
                              device=device, data_dir=str(data_dir) if data_dir else None)
    frames = []
    for path in checkpoints:
        result = evaluate_checkpoint(path, config, progress=not no_progress)
        frames.append(result.frame().assign(checkpoint=str(path)))
        click.echo(f"results: {evaluation_path(path)}", err=True)
    emit(pd.concat(frames, ignore_index=True), fmt, title="evaluation")


