"""The ``filterdb`` command line: one click group, each command a thin layer over the Python API.

The commands live in the modules of this package, one per part of the toolkit
(``database``: build/add/export/info/demo; ``analysis``: metrics/compare; ``sources``:
leaderboards/pairs; ``importing``: import; ``training``: train/models; ``evaluate``;
``verify``), and share the options of ``filterdb.cli.options``. Importing this package costs
click and nothing else: a command's module loads on first use (``--help`` lists the commands
from ``COMMANDS``), so ``filterdb --help`` and the read-only commands never import torch.
One error path for all of them: a ``FilterDBError`` becomes one line and exit code 1,
Ctrl-C one line and exit code 130.
"""
from __future__ import annotations

import importlib
import sys

import click

from filterdb.errors import FilterDBError

# Every command: name -> (module, attribute, the command's one-line help).
# tests/test_lazy_imports.py checks that each help line is the command's own.
COMMANDS = {
    "add": ("filterdb.cli.database", "add",
        "Add models: filterdb training checkpoints (FILE.pt), your own state dicts (FILE --arch ARCH), "
        "safetensors, ONNX (.onnx) and, with --trust-code, TorchScript; pretrained names (timm:NAME, "
        "torchvision:NAME) or RobustBench ids (robustbench:cifar10/Linf/Standard: the published weights)."),
    "build": ("filterdb.cli.database", "build",
        "Build (or complete) a filter database from a leaderboard or a checkpoint directory."),
    "compare": ("filterdb.cli.analysis", "compare",
        "Compare two groups of models: per-layer metrics, paired, unpaired and permutation statistics, filter"
        " divergence."),
    "demo": ("filterdb.cli.database", "demo",
        "Build the demo database (16 matched pairs trained on digits; cached) and compare robust vs normal."),
    "evaluate": ("filterdb.cli.evaluate", "evaluate",
        "Evaluate training checkpoints: clean and robust accuracy (PGD, CW, AutoAttack at Linf and L2 "
        "budgets), where the perturbations sit (border vs interior) and the fooling rate under rotations and "
        "translations."),
    "export": ("filterdb.cli.database", "export",
        "Pack the database into one self-contained .h5 file that every read-only command opens with --db."),
    "import": ("filterdb.cli.importing", "import_group",
        "Import a published filter database into a filterdb database."),
    "info": ("filterdb.cli.database", "info",
        "Models, layers, filters per kernel size and size on disk of a database."),
    "leaderboards": ("filterdb.cli.sources", "leaderboards",
        "List the leaderboards that 'filterdb build --leaderboard' accepts, with model counts; or the models "
        "of NAME."),
    "metrics": ("filterdb.cli.analysis", "metrics", "Per-layer metrics of the filters in the database."),
    "models": ("filterdb.cli.training", "models_command",
        "The model-string grammar; with MODEL_STRING, check it and show what it builds (on the meta device)."),
    "pairs": ("filterdb.cli.sources", "pairs",
        "For each robust model, the normal models of the same architecture, the counterparts still missing, "
        "and its twin: the normal model trained with it as a matched pair (same seed, initial weights and "
        "data order; the paired statistics compare twins)."),
    "show": ("filterdb.cli.analysis", "show",
        "A model's layers with their metrics; a layer's filters as a picture or a .npy."),
    "train": ("filterdb.cli.training", "train",
        "Train models: one run, a matched normal/robust pair, or a RobustBench counterpart."),
    "verify": ("filterdb.cli.verify", "verify",
        "Check every shard, the master and the metrics cache against their checksums; exit 0 only when whole."),
}


class LazyCommands(dict):
    """The group's name -> command mapping; a contributed command is imported on first lookup."""

    def __init__(self, lazy: dict[str, tuple[str, str, str]]):
        super().__init__()
        self.lazy = dict(lazy)

    def _load(self, name: str) -> None:
        if dict.__contains__(self, name) or name not in self.lazy:
            return
        module_name, attribute, _ = self.lazy[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            del self.lazy[name]  # an optional part that is not installed
            return
        dict.__setitem__(self, name, getattr(module, attribute))

    def loaded(self, name: str) -> bool:
        return dict.__contains__(self, name)

    def __getitem__(self, name):
        self._load(name)
        return dict.__getitem__(self, name)

    def get(self, name, default=None):
        self._load(name)
        return dict.get(self, name, default)

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self.lazy

    def __iter__(self):
        return iter(sorted({*dict.keys(self), *self.lazy}))

    def __len__(self) -> int:
        return len({*dict.keys(self), *self.lazy})

    def keys(self):
        return list(self)

    def values(self):
        return [self[name] for name in self]

    def items(self):
        return [(name, self[name]) for name in self]


class FilterDBGroup(click.Group):
    """Turns FilterDBError into a one-line message and exit code 1, Ctrl-C into one line and
    exit code 130 (no traceback); lists contributed commands without importing them."""

    commands: LazyCommands  # main.commands = LazyCommands(COMMANDS), below

    def format_commands(self, ctx, formatter):
        helps = {}  # name -> the command's one-line help (a function of the width)
        for name in self.list_commands(ctx):
            if self.commands.loaded(name):
                if not self.commands[name].hidden:
                    helps[name] = self.commands[name].get_short_help_str
            else:
                helps[name] = lambda limit, text=self.commands.lazy[name][2]: click.utils.make_default_short_help(text, limit)
        if not helps:
            return
        limit = formatter.width - 6 - max(len(name) for name in helps)
        rows = [(name, short_help(limit)) for name, short_help in helps.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FilterDBError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=FilterDBGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="filterdb")
def main():
    """filterdb: convolution filters of robust and normal CNNs, in one HDF5 database."""


main.commands = LazyCommands(COMMANDS)


