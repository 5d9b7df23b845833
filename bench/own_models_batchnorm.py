"""What each path of `filterdb add` stores for a model with BatchNorm: max |stored - conv.weight|.

torchvision resnet18 (random weights, BatchNorm statistics and affine drawn away from their
defaults), written as a state dict, as safetensors, as ONNX (torch.onnx.export, legacy
exporter, eval mode, with and without constant folding) and as TorchScript, each added with
`filterdb add`; prints one row per path. Run: .venv/bin/python bench/own_models_batchnorm.py
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from filterdb.cli import main
from filterdb.extract import conv_modules, execution_order
from filterdb.store import open_database


def main_() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.5, 0.5)
                m.weight.uniform_(0.5, 1.5)
    named = conv_modules(model)
    order = execution_order(model, [m for _, m in named], (3, 32, 32))
    convs = [m for _, m in sorted(named, key=lambda nm: order[id(nm[1])])]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save({"state_dict": model.state_dict()}, tmp / "sd.pth")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "st.safetensors"))
        x = torch.zeros(1, 3, 32, 32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, x, str(tmp / "nofold.onnx"), dynamo=False, do_constant_folding=False)
            torch.onnx.export(model, x, str(tmp / "default.onnx"), dynamo=False)
            torch.jit.save(torch.jit.script(model), str(tmp / "ts.pt"))
        arch = ["--arch", "torchvision:resnet18", "--arch-kwargs", '{"num_classes": 10}', "--input-shape", "3,32,32"]
        paths = [("state dict (.pth, under state_dict)", "sd.pth", arch),
                 ("safetensors", "st.safetensors", arch),
                 ("ONNX, do_constant_folding=False", "nofold.onnx", []),
                 ("ONNX, default export (constant folding)", "default.onnx", []),
                 ("TorchScript (--trust-code)", "ts.pt", ["--trust-code"])]
        print("| path | layers | max abs(stored - conv.weight) | layers differing |")
        print("|---|---|---|---|")
        for what, name, extra in paths:
            db = tmp / f"db-{name}"
            r = CliRunner().invoke(main, ["add", str(tmp / name), *extra, "--db", str(db)])
            assert r.exit_code == 0, r.output
            with open_database(db) as handle:
                layers = handle.layers.sort_values("layer_index")
                stored = [handle.read_layer(row) for _, row in layers.iterrows()]
            diffs = [float(np.abs(s - c.weight.detach().numpy().reshape(s.shape)).max()) for s, c in zip(stored, convs)]
            print(f"| {what} | {len(stored)} | {max(diffs):.3g} | {sum(d > 0 for d in diffs)} of {len(diffs)} |")


if __name__ == "__main__":
    main_()
