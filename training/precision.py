"""Mixed precision as training and evaluation take it (``--amp``): the modes and their autocast dtypes."""
from __future__ import annotations

import torch

AMP_MODES = ("none", "bf16", "fp16")


def autocast_dtype(mode: str) -> torch.dtype:
    """The ``torch.autocast`` dtype of a mode other than "none"."""
    return torch.bfloat16 if mode == "bf16" else torch.float16
