"""First-stage activations: a clean and an adversarial input through the first convolution + ReLU.

*Adversarial Robustness through the Lens of Convolutional Filters* (CVPR-W 2022), the
activation figure (Fig. 5): for a normal and a robust model of one matched pair, one
test image and its adversarial version (PGD-10 against that model, L-inf at the robust
model's eps), passed through the first convolution and a ReLU. Top row: the inputs.
Then per model, the channels whose activation the attack changes most: the filter, the
clean activation, the adversarial activation, and their difference.

The first convolution is rebuilt from the filters stored in the database (the model's
stride, padding and padding mode; the bias is not stored, so none is added, and the
batch norm between convolution and ReLU in these models is left out). The attack needs
the whole model: its checkpoint is found by the sha256 the database recorded, among the
*.pt files under --checkpoints (default: the demo checkpoint cache). By default the pair is
the first matched pair (see filter_grids.py) whose checkpoints are found and whose test
set is available. The image is the first test image both models classify correctly
whose attack fools the normal model.

    python figures/first_stage_activation.py [--db DB] [--out DIR] [--checkpoints DIR ...]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _style  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from filterdb import paths  # noqa: E402
from filterdb.integrity import sha256_file  # noqa: E402
from filterdb.output import first_few  # noqa: E402
from filterdb.training.checkpoint import load_checkpoint  # noqa: E402

NAME = "first_stage_activation"
DEFAULT_EPS = 0.1
MAX_IMAGES = 200  # test images searched for one that suits the figure


def find_checkpoints(directories: list[Path], wanted: set[str]) -> dict[str, Path]:
    """sha256 -> path for the ``*.pt`` files under ``directories`` whose hash is in ``wanted``."""
    found = {}
    for directory in directories:
        for path in sorted(Path(directory).rglob("*.pt")) if Path(directory).is_dir() else []:
            sha = sha256_file(path)
            if sha in wanted:
                found.setdefault(sha, path)
    return found


def first_conv(x: torch.Tensor, layer: pd.Series, filters: np.ndarray) -> torch.Tensor:
    """ReLU(conv(x)) with the stored filters and the layer's geometry (no bias: it is not stored)."""
    groups = int(layer["groups"])
    weight = torch.from_numpy(filters).reshape(int(layer["out_channels"]), int(layer["in_channels"]) // groups,
                                               *filters.shape[1:])
    stride = (int(layer["stride_h"]), int(layer["stride_w"]))
    dilation = (int(layer["dilation_h"]), int(layer["dilation_w"]))
    padding = layer["padding"]
    if padding in ("same", "valid"):
        return F.relu(F.conv2d(x, weight, None, stride, padding, dilation, groups))
    pad_h, pad_w = (int(v) for v in padding.split(","))
    if layer["padding_mode"] != "zeros" and (pad_h or pad_w):
        x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=layer["padding_mode"])
        pad_h = pad_w = 0
    return F.relu(F.conv2d(x, weight, None, stride, (pad_h, pad_w), dilation, groups))


def attackable_pair(pairs: list, directories: list[Path]) -> tuple[dict, dict, object]:
    """The first pair of one dataset whose checkpoints are found and whose test set loads:
    ({"normal": row, "robust": row}, the two models, the test set)."""
    from filterdb.errors import FilterDBError
    from filterdb.training import load_dataset

    pairs = [(r, n) for r, n in pairs if r["dataset"] == n["dataset"]]
    checkpoints = find_checkpoints(directories, {m["weights_sha256"] for pair in pairs for m in pair} - {""})
    problems, datasets = [], {}
    for robust, normal in pairs:
        pair = {"normal": normal, "robust": robust}
        missing = [m["name"] for m in pair.values() if m["weights_sha256"] not in checkpoints]
        if missing:
            problems.append(f"no checkpoint of {' or '.join(missing)}")
            continue
        dataset = robust["dataset"]
        if dataset not in datasets:
            try:
                datasets[dataset] = load_dataset(dataset, "test")
            except FilterDBError as exc:
                datasets[dataset] = exc
        if isinstance(datasets[dataset], Exception):
            problems.append(str(datasets[dataset]))
            continue
        models = {t: load_checkpoint(checkpoints[m["weights_sha256"]]).build_model().eval() for t, m in pair.items()}
        return pair, models, datasets[dataset]
    raise SystemExit("this figure attacks whole models, and no robust/normal pair of one dataset can be attacked: "
                     + first_few(dict.fromkeys(problems), 3, "; ") + ". Checkpoints are searched (by sha256) under "
                     f"{first_few(directories)}: pass --checkpoints DIR")


def pick_image(models: dict, data, attack) -> tuple[torch.Tensor, int, dict]:
    """The first test image both models classify correctly whose attack fools the normal model;
    failing that, the first both classify correctly; failing that, the first."""
    from filterdb.training import pgd

    n = min(len(data), MAX_IMAGES)
    x = torch.stack([data[i][0] for i in range(n)])
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    y = torch.stack([torch.as_tensor(data[i][1]) for i in range(n)]).long()
    torch.manual_seed(0)
    adversarial = {t: pgd(m, x, y, attack) for t, m in models.items()}
    with torch.no_grad():
        correct = torch.stack([m(x).argmax(1) == y for m in models.values()]).all(0)
        fooled = models["normal"](adversarial["normal"]).argmax(1) != y
    preference = 2 * (correct & fooled).int() + correct.int()
    i = int(torch.argmax(preference))  # the first of the highest preference
    return x[i:i + 1], int(y[i]), {t: a[i:i + 1] for t, a in adversarial.items()}


def image_axis(ax, image: np.ndarray, title: str, **kwargs):
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize="small", fontweight="normal")
    return ax.imshow(image, **kwargs)


def show_input(ax, x: torch.Tensor, title: str) -> None:
    image = x[0].permute(1, 2, 0).numpy()
    if image.shape[2] == 1:
        image_axis(ax, image[..., 0], title, cmap="gray_r", vmin=0, vmax=1)
    else:
        image_axis(ax, np.clip(image, 0, 1), title)


MODEL_NAMES = {"normal": "Normal", "robust": "Robust"}


def _colorbar(fig, ax, image) -> None:
    """A colorbar beside ``ax`` that takes no room from it (every panel keeps one size)."""
    cbar = fig.colorbar(image, cax=ax.inset_axes([1.04, 0.0, 0.06, 1.0]))
    cbar.ax.tick_params(labelsize="x-small")


def plot(rows: dict, inputs: dict, n_channels: int) -> plt.Figure:
    n_rows = 1 + len(rows) * n_channels
    fig, axes = plt.subplots(n_rows, 4, figsize=(8.6, 1.95 * n_rows + 0.4), squeeze=False,
                             gridspec_kw={"wspace": 0.45, "hspace": 0.5})
    x, label, predictions = inputs["clean"], inputs["label"], inputs["predictions"]
    show_input(axes[0, 0], x, f"Clean input\n(true class {label})")
    for col, training in enumerate(_style.TRAINING_ORDER, start=1):
        show_input(axes[0, col], inputs[training], f"Attack on the {MODEL_NAMES[training].lower()} model\n"
                                                   f"(it predicts {predictions[training]})")
    axes[0, 3].axis("off")
    axes[0, 3].text(0.05, 0.5, f"PGD-10, L-inf,\neps = {inputs['eps']:g},\nagainst each model",
                    transform=axes[0, 3].transAxes, va="center", fontsize="small")
    r = 1
    for training, data in rows.items():
        for i, channel in enumerate(data["channels"]):
            clean, adv, f = data["clean"][channel], data["adv"][channel], data["filters"][channel]
            top = float(max(clean.max(), adv.max())) or 1.0
            diff = adv - clean
            dmax = float(np.abs(diff).max()) or 1.0
            fmax = float(np.abs(f).max()) or 1.0
            ax = axes[r]
            first = i == 0
            if f.ndim == 3:  # RGB: grey is 0
                image_axis(ax[0], 0.5 + f / (2 * fmax), "Filter (RGB)" if first else "")
            else:
                _colorbar(fig, ax[0], image_axis(ax[0], f, "Filter" if first else "", cmap=_style.WEIGHT_CMAP,
                                                 vmin=-fmax, vmax=fmax))
            image_axis(ax[1], clean, "Clean activation" if first else "", cmap=_style.ACTIVATION_CMAP, vmin=0, vmax=top)
            im = image_axis(ax[2], adv, "Adversarial activation\n(same scale)" if first else "",
                            cmap=_style.ACTIVATION_CMAP, vmin=0, vmax=top)
            _colorbar(fig, ax[2], im)
            im = image_axis(ax[3], diff, "Difference\n(adversarial - clean)" if first else "",
                            cmap=_style.WEIGHT_CMAP, vmin=-dmax, vmax=dmax)
            _colorbar(fig, ax[3], im)
            ax[0].set_ylabel(f"{data['label']}\nchannel {channel}", fontsize="small",
                             color=_style.TRAINING_COLORS[training], fontweight="bold")
            r += 1
    fig.subplots_adjust(left=0.1, right=0.93, bottom=0.02, top=0.96)  # saved with a tight box
    return fig


def main(argv=None) -> list[Path]:
    from filterdb.training import AttackConfig

    p = _style.parser(__doc__)
    p.add_argument("--checkpoints", type=Path, action="append", default=None,
                   help="folder searched (recursively) for the models' *.pt checkpoints; repeatable "
                        "[default: the demo checkpoint cache, $FILTERDB_HOME/demo-checkpoints]")
    p.add_argument("--robust", default=None, help="the robust model (id or name) [default: from the first pair]")
    p.add_argument("--normal", default=None, help="the normal model (id or name) [default: from the first pair]")
    p.add_argument("--channels", type=int, default=3, help="channels shown per model [default: 3]")
    args = p.parse_args(argv)
    _style.apply_style()
    directories = args.checkpoints or [paths.demo_checkpoint_dir()]
    with _style.open_db(args.db) as db:
        pair, models, data = attackable_pair(_style.matched_pairs(db, args.robust, args.normal), directories)
        first = {t: db.layers[(db.layers["model_id"] == m["model_id"]) & (db.layers["conv_depth"] == 0)
                              & (db.layers["member"] == 0)].iloc[0] for t, m in pair.items()}
        filters = {t: db.read_layer(row) for t, row in first.items()}
    robust = pair["robust"]
    eps = float(robust["eps"]) if np.isfinite(robust["eps"]) and robust["eps"] > 0 else DEFAULT_EPS
    attack = AttackConfig(norm="Linf", eps=eps, steps=10, random_start=False)
    x, label, adversarial = pick_image(models, data, attack)
    with torch.no_grad():
        predictions = {t: int(m(adversarial[t]).argmax(1)) for t, m in models.items()}
    rows = {}
    for t in _style.TRAINING_ORDER:
        with torch.no_grad():
            clean = first_conv(x, first[t], filters[t])[0].numpy()
            adv = first_conv(adversarial[t], first[t], filters[t])[0].numpy()
        change = np.abs(adv - clean).reshape(len(adv), -1).sum(1)
        channels = [int(c) for c in np.argsort(-change, kind="stable")[:args.channels]]
        in_per_group = int(first[t]["in_channels"]) // int(first[t]["groups"])
        per_channel = filters[t].reshape(len(adv), in_per_group, *filters[t].shape[1:])
        per_channel = per_channel.transpose(0, 2, 3, 1) if in_per_group == 3 else per_channel.mean(1)
        rows[t] = {"clean": clean, "adv": adv, "filters": per_channel, "channels": channels,
                   "label": f"{MODEL_NAMES[t]} model\n{_style.model_label(pair[t])}"}
    inputs = {"clean": x, "label": label, "predictions": predictions, "eps": eps, **adversarial}
    return _style.save(plot(rows, inputs, args.channels), args.out, NAME)


if __name__ == "__main__":
    main()
