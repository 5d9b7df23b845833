"""What ``filterdb add ARG`` accepts: a checkpoint file, or a pretrained model ``timm:NAME`` / ``torchvision:NAME``."""
from __future__ import annotations

from pathlib import Path

from filterdb.errors import FilterDBError
from filterdb.sources.base import ModelSpec
from filterdb.sources.pretrained import LIBRARIES, pretrained_spec

FORMS = ("PATH.pt (a filterdb training checkpoint)", "timm:NAME (e.g. timm:resnet50)",
         "torchvision:NAME (e.g. torchvision:resnet50)")


def spec_for_argument(arg: str) -> ModelSpec:
    if Path(arg).is_file():
        from filterdb.sources.checkpoint import checkpoint_spec
        return checkpoint_spec(Path(arg))
    library, sep, name = arg.partition(":")
    if sep and library in LIBRARIES:
        return pretrained_spec(library, name)
    raise FilterDBError(f"cannot add {arg!r}: not an existing file nor a known form; accepted: {'; '.join(FORMS)}")
