"""The ``filterdb`` command line: one click group, each command a thin layer over the Python API.

The commands live in the modules of this package, one per part of the toolkit
(``database``: build/add/export/info/demo; ``analysis``: metrics/compare; ``report``; ``sources``:
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
    "report": ("filterdb.cli.report", "report",
        "Write one self-contained HTML report: the database's overview, and with two groups their comparison, "
        "by depth, and their first-layer filters."),
    "show": ("filterdb.cli.analysis", "show",
        "A model's layers with their metrics; a layer's filters as a picture or a .npy."),
    "train": ("filterdb.cli.training", "train",
        "Train models: one run, a matched normal/robust pair, or a RobustBench counterpart."),
    "verify": ("filterdb.cli.verify", "verify",
        "Check every shard, the master and the metrics cache against their checksums; exit 0 only when whole."),
}


class FilterDBGroup(click.Group):
    """The group: a command of ``lazy_commands`` (name -> module, attribute, help) is imported
    when it is looked up (``get_command``) and listed from its help line without importing it
    (click's extension points for lazy subcommands); FilterDBError becomes a one-line message
    and exit code 1, Ctrl-C one line and exit code 130 (no traceback)."""

    def __init__(self, *args, lazy_commands: dict[str, tuple[str, str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        module_name, attribute, _ = self.lazy_commands[cmd_name]
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:  # click suggests near names from self.commands alone
            raise click.exceptions.NoSuchCommand(exc.command_name, possibilities=self.list_commands(ctx),
                                                 ctx=ctx) from None

    def format_commands(self, ctx, formatter):
        # A lazy command is listed through a stand-in carrying its help line, so that click shortens
        # it as it would the command's own, and the command's module is not imported.
        rows = [(name, command) for name in self.list_commands(ctx)
                for command in [self.commands.get(name) or click.Command(name, help=self.lazy_commands[name][2])]
                if not command.hidden]
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FilterDBError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=FilterDBGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="filterdb")
def main():
    """filterdb: convolution filters of robust and normal CNNs, in one HDF5 database."""
