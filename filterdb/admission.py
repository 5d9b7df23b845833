"""What a model must satisfy before its filters are stored (beyond finite weights, checked while writing).

Three cases that were once accepted silently, each decided here:

* **A NaN or Inf in a buffer only** (say a BatchNorm ``running_var``), with finite weights:
  **refused**. The filters themselves would be stored exactly, but the network computes NaN
  with that buffer, so its recorded accuracies cannot describe it and a comparison of
  "robust vs normal" filters would include a model that does not work. The error names the
  model and the buffer.
* **float16 (or bfloat16) weights**: **accepted**. Every float16 value is exactly a float32
  value, so the stored float32 filters are the model's weights bit for bit after the exact
  upcast; nothing is rounded. (The forward pass that orders the layers runs in the model's dtype.)
* **An input shape smaller than the model's kernels** (e.g. 1x1x1): **refused**. The input
  shape is the one the model is meant to take (it is recorded in the model table); a spatial
  size below the largest kernel means every convolution sees only padding, which no trained
  CNN is used on, so the shape is a mistake (a wrong ``--input-shape`` or source default).
"""
from __future__ import annotations

from filterdb.errors import FilterDBError


def check_admissible(members: list, input_shape: tuple[int, ...], model_name: str) -> None:
    """Raise ``FilterDBError`` naming the model if it has non-finite buffers or an impossible input shape."""
    import torch
    from torch import nn

    if len(input_shape) != 3 or min(int(s) for s in input_shape) < 1:
        raise FilterDBError(f"{model_name}: input shape {input_shape} is not C,H,W with positive sizes; "
                            "give the model's input shape (--input-shape C,H,W)")
    for i, member in enumerate(members):
        where = f"{model_name}" + (f" member {i}" if len(members) > 1 else "")
        for name, buffer in member.named_buffers():
            if buffer.is_floating_point() and not bool(torch.isfinite(buffer).all()):
                bad = int((~torch.isfinite(buffer)).sum())
                raise FilterDBError(f"{where}, buffer {name}: {bad} value(s) are NaN or Inf (the model computes NaN); "
                                    "the checkpoint is corrupt or training diverged - re-export it from a healthy run")
        kernels = [m.kernel_size for m in member.modules() if isinstance(m, nn.Conv2d)]
        if kernels:
            kh, kw = max(k[0] for k in kernels), max(k[1] for k in kernels)
            _, h, w = (int(s) for s in input_shape)
            if h < kh or w < kw:
                shape = "x".join(str(int(s)) for s in input_shape)
                raise FilterDBError(f"{where}: input shape {shape} is smaller than its {kh}x{kw} kernels; "
                                    "give the model's real input shape (--input-shape C,H,W)")
