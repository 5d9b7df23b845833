"""Padding: where adversarial perturbations sit, per padding mode, with the border ratio.

*On the Interplay of Convolutional Padding and Adversarial Robustness* (ICCV-W 2023),
the perturbation-map figure (Fig. 3): for models that differ only in the padding mode of
their convolutions (zeros, reflect, replicate, circular, none), the mean |perturbation|
per pixel of an attack on the test set (averaged over channels and over the images that
were classified correctly and fooled), on one shared color scale; and the border ratio,
the mean over the one-pixel frame that 3x3 padding touches divided by the mean over the
interior (1 = no preference for the border).

The models are the training checkpoints under --models, one per padding mode (the mode
is read from each checkpoint's model string). With --train, missing ones are trained
first: the demo's variants are ``cnn3-16_<mode>`` on digits (standard training, seed 0,
cached). The maps are computed here with ``filterdb.training.attacks.pgd`` and
``filterdb.training.perturbation`` (L2 PGD-10, eps 1.0 on 8x8 digits) and cached beside
each checkpoint; --db is accepted for a uniform command line but not read (the figure
needs whole models, not filters).

    python figures/padding_perturbation.py [--out DIR] [--models DIR] [--train]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from filterdb import paths  # noqa: E402

NAME = "padding_perturbation"
MODES = ("zeros", "reflect", "replicate", "circular", "nopad")
MODE_LABELS = {"zeros": "Zeros", "reflect": "Reflect", "replicate": "Replicate", "circular": "Circular",
               "nopad": "No padding"}
DEMO_MODEL = "cnn3-16"
DEMO_EPOCHS = 8
ATTACK = {"norm": "L2", "eps": 1.0, "steps": 10, "random_start": False}
FRAME = 1
MAPS_FILE = "perturbation_map.json"


def default_models_dir() -> Path:
    return paths.home() / "figures" / "padding-models"


def mode_of(model_string: str) -> str:
    from filterdb.training import parse_model_string
    padding = parse_model_string(model_string).padding
    return "nopad" if padding == "none" else padding


def train_missing(directory: Path, epochs: int = DEMO_EPOCHS) -> None:
    """Train ``cnn3-16_<mode>`` on digits for every padding mode without a finished checkpoint."""
    from filterdb.training import TrainConfig, train

    for mode in MODES:
        out = directory / mode
        if _finished(out / "last.pt"):
            continue
        config = TrainConfig(model_string=f"{DEMO_MODEL}_{mode}", dataset="digits", method="standard", epochs=epochs,
                             batch_size=64, lr=0.05, seed=0)
        train(config, out)


def _finished(path: Path) -> bool:
    from filterdb.errors import FilterDBError
    from filterdb.training import load_checkpoint
    try:
        return "clean_acc" in load_checkpoint(path).metrics
    except FilterDBError:
        return False


def perturbation_map(checkpoint: Path) -> dict:
    """Mean |x_adv - x| per pixel over correctly classified, fooled test images; cached beside the checkpoint."""
    from filterdb.records import sha256_file
    from filterdb.training import AttackConfig, load_checkpoint, load_dataset, pgd
    from filterdb.training.perturbation import PerturbationMap, border_stats

    cache = checkpoint.with_name(checkpoint.stem + "." + MAPS_FILE)
    sha = sha256_file(checkpoint)
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("sha256") == sha and cached.get("attack") == ATTACK and cached.get("frame") == FRAME:
            return cached
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model()
    data = load_dataset(ckpt.dataset, "test")
    attack = AttackConfig(**ATTACK)
    pmap = PerturbationMap(*ckpt.input_shape[1:])
    torch.manual_seed(0)
    for start in range(0, len(data), 256):
        batch = [data[i] for i in range(start, min(start + 256, len(data)))]
        x = torch.stack([b[0] for b in batch])
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        y = torch.stack([torch.as_tensor(b[1]) for b in batch]).long()
        x_adv = pgd(model, x, y, attack)
        with torch.no_grad():
            mask = (model(x).argmax(1) == y) & (model(x_adv).argmax(1) != y)
        pmap.add(x, x_adv, mask)
    mean = pmap.mean()
    result = {"sha256": sha, "attack": ATTACK, "frame": FRAME, "model_string": ckpt.model_string,
              "mode": mode_of(ckpt.model_string), "clean_acc": ckpt.metrics.get("clean_acc"),
              "n_samples": pmap.count, "map": mean.tolist(), **border_stats(mean, FRAME)}
    cache.write_text(json.dumps(result))
    return result


def collect(directory: Path) -> dict[str, dict]:
    """Padding mode -> perturbation map of the first checkpoint (path order) with that mode."""
    results = {}
    for path in sorted(directory.rglob("last.pt")) or sorted(directory.rglob("*.pt")):
        from filterdb.training import load_checkpoint
        mode = mode_of(load_checkpoint(path).model_string)
        if mode not in results:
            results[mode] = perturbation_map(path)
    return {m: results[m] for m in MODES if m in results}


def plot(results: dict[str, dict]) -> plt.Figure:
    n = len(results)
    fig = plt.figure(figsize=(2.3 * n + 3.6, 3.3))
    grid = fig.add_gridspec(1, n + 2, width_ratios=[1] * n + [0.08, 1.6], wspace=0.25)
    maps = {m: np.asarray(r["map"], dtype=float) for m, r in results.items()}
    vmax = max((float(v.max()) for v in maps.values() if np.isfinite(v).all()), default=0.0) or 1.0
    for i, (mode, r) in enumerate(results.items()):
        ax = fig.add_subplot(grid[0, i])
        image = ax.imshow(maps[mode], cmap=_style.ACTIVATION_CMAP, vmin=0, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        summary = f"border ratio {r['ratio']:.2f}" if r["n_samples"] else "no image fooled"
        ax.set_title(f"{MODE_LABELS[mode]}\n{summary}", fontsize="medium")
        ax.set_xlabel(f"{r['n_samples']} fooled images", fontsize="small")
    cbar = fig.colorbar(image, cax=fig.add_subplot(grid[0, n]))
    cbar.set_label("Mean |perturbation| per pixel")
    ax = fig.add_subplot(grid[0, n + 1])
    modes = list(results)
    colors = [sns_color(i) for i in range(len(modes))]
    ax.bar(range(len(modes)), [results[m]["ratio"] for m in modes], color=colors)
    ax.axhline(1.0, color=_style.REFERENCE_COLOR, linestyle="--", linewidth=1)
    ax.text(len(modes) - 0.5, 1.0, "no preference", ha="right", va="bottom", fontsize="x-small",
            color=_style.REFERENCE_COLOR)
    ax.set_xticks(range(len(modes)), [MODE_LABELS[m] for m in modes], rotation=45, ha="right",
                  rotation_mode="anchor")
    ax.set_ylabel("Border ratio\n(border / interior)")
    ax.set_xlabel("Padding mode")
    attack = f"L2 PGD-{ATTACK['steps']}, eps {ATTACK['eps']:g}"
    fig.suptitle(f"Where the attack perturbs the input ({attack}; border = outer {FRAME}-pixel frame)", y=1.04)
    return fig


def sns_color(i: int):
    import seaborn as sns
    return sns.color_palette("colorblind")[i]


def main(argv=None) -> list[Path]:
    p = _style.parser(__doc__)
    p.add_argument("--models", type=Path, default=None,
                   help="folder of checkpoints, one per padding mode [default: $FILTERDB_HOME/figures/padding-models]")
    p.add_argument("--train", action="store_true", help=f"train the missing {DEMO_MODEL} padding variants on digits first")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"epochs of those variants [default: {DEMO_EPOCHS}]")
    args = p.parse_args(argv)
    _style.apply_style()
    directory = args.models or default_models_dir()
    if args.train:
        train_missing(directory, args.epochs)
    results = collect(directory) if directory.is_dir() else {}
    if not results:
        raise SystemExit(f"no checkpoints under {directory}: pass --models DIR with one checkpoint per padding mode, "
                         f"or --train to train the {DEMO_MODEL} variants on digits")
    return _style.save(plot(results), args.out, NAME)


if __name__ == "__main__":
    main()
