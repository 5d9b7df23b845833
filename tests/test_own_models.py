"""The researcher's own models, from files written by the real libraries: state dicts with an
architecture, safetensors, ONNX, TorchScript, pickled modules and manifests; filters bit for bit."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

from filterdb.cli import main
from filterdb.extract import conv_modules, execution_order
from filterdb.store import open_database

FACTORY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.b = nn.Conv2d(width, 6, 3, padding=1)   # defined first, runs second
        self.a = nn.Conv2d(1, width, 3, stride=2)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.bn(self.a(x)))).mean((2, 3)))


def make(width=4):
    return Net(width)
'''


def cli(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def forward_convs(model: nn.Module, input_shape) -> list[nn.Conv2d]:
    named = conv_modules(model)
    order = execution_order(model, [m for _, m in named], input_shape)
    return [m for _, m in sorted(named, key=lambda nm: order[id(nm[1])])]


def stored_filters(db_path, key_part: str) -> tuple[list[np.ndarray], object]:
    with open_database(db_path) as db:
        models = db.models[db.models["key"].str.contains(key_part, regex=False)]
        assert len(models) == 1, list(db.models["key"])
        layers = db.layers[db.layers["model_id"] == models.index[0]].sort_values("layer_index")
        return [db.read_layer(row) for _, row in layers.iterrows()], (models.iloc[0], layers)


def assert_bitwise(filters: list[np.ndarray], convs: list[nn.Conv2d]) -> None:
    assert len(filters) == len(convs)
    for got, conv in zip(filters, convs):
        w = conv.weight.detach().numpy()
        assert np.array_equal(got, w.reshape(-1, *w.shape[-2:]))


def tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.suffix != ".lock"}


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults, so folding would show
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.5, 0.5)
                m.weight.uniform_(0.5, 1.5)
    return model


def test_torchvision_state_dict_under_state_dict_with_module_prefix(tmp_path, resnet18):
    path = tmp_path / "r18.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in resnet18.state_dict().items()}}, path)
    db = tmp_path / "db"
    r = cli("add", path, "--arch", "torchvision:resnet18", "--arch-kwargs", '{"num_classes": 10}',
            "--input-shape", "3,32,32", "--set", "training=robust", "--set", "eps=8/255", "--db", db)
    assert r.exit_code == 0, r.output
    assert "weights from state_dict, prefix 'module.' stripped" in r.output
    filters, (row, layers) = stored_filters(db, "r18@")
    assert_bitwise(filters, forward_convs(resnet18, (3, 32, 32)))
    assert row["training"] == "robust" and row["eps"] == pytest.approx(8 / 255)
    assert row["architecture"] == "ResNet-18" and row["source"] == "local"
    assert set(layers["weight_kind"]) == {"plain"}


def test_safetensors(tmp_path, resnet18):
    from safetensors.torch import save_file

    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18.state_dict().items()}, str(path))
    r = cli("add", path, "--arch", "torchvision:resnet18", "--arch-kwargs", '{"num_classes": 10}',
            "--input-shape", "3,32,32", "--db", tmp_path / "db")
    assert r.exit_code == 0, r.output
    assert "weights from safetensors" in r.output
    filters, _ = stored_filters(tmp_path / "db", "r18@")
    assert_bitwise(filters, forward_convs(resnet18, (3, 32, 32)))


def export_onnx(model, path, **kwargs):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 32, 32), str(path), dynamo=False, **kwargs)


def test_onnx_without_constant_folding_stores_the_conv_weights_in_forward_order(tmp_path, resnet18):
    path = tmp_path / "r18.onnx"
    export_onnx(resnet18, path, do_constant_folding=False)
    r = cli("add", path, "--set", "dataset=cifar10", "--db", tmp_path / "db")
    assert r.exit_code == 0, r.output
    filters, (row, layers) = stored_filters(tmp_path / "db", "r18@")
    convs = forward_convs(resnet18, (3, 32, 32))
    assert_bitwise(filters, convs)
    assert set(layers["weight_kind"]) == {"onnx_initializer"}
    assert list(layers["stride_h"]) == [c.stride[0] for c in convs]
    assert list(layers["padding"]) == [f"{c.padding[0]},{c.padding[1]}" for c in convs]
    assert row["input_shape"] == "3x32x32" and layers["conv_depth_norm"].iloc[-1] == 1.0


def test_onnx_default_export_stores_batchnorm_folded_filters(tmp_path, resnet18):
    path = tmp_path / "r18f.onnx"
    export_onnx(resnet18, path)  # eval mode, constant folding: BatchNorm folded into the convs
    assert cli("add", path, "--db", tmp_path / "db").exit_code == 0
    filters, _ = stored_filters(tmp_path / "db", "r18f@")
    conv, bn = resnet18.conv1, resnet18.bn1
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    folded = (conv.weight.detach() * scale[:, None, None, None]).numpy()
    assert np.allclose(filters[0], folded.reshape(-1, 7, 7), atol=1e-6)
    assert not np.allclose(filters[0], conv.weight.detach().numpy().reshape(-1, 7, 7))


def test_onnx_reading_never_imports_torch(tmp_path, resnet18):
    path = tmp_path / "r18.onnx"
    export_onnx(resnet18, path, do_constant_folding=False)
    code = textwrap.dedent(f"""
        import sys
        from filterdb.cli import main
        try:
            main(["add", {str(path)!r}, "--db", {str(tmp_path / "db")!r}])
        except SystemExit as exc:
            assert not exc.code
        print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_module_callable_factory(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "my_models.py").write_text(FACTORY)
    sys.path.insert(0, str(tmp_path / "pkg"))
    try:
        import my_models
        torch.manual_seed(1)
        model = my_models.make(width=5).eval()
        path = tmp_path / "best.ckpt"
        torch.save({"model_state_dict": model.state_dict(), "optimizer": {}}, path)
        r = cli("add", path, "--arch", "my_models:make", "--arch-kwargs", '{"width": 5}', "--input-shape", "1,9,9",
                "--set", "name=mine", "--db", tmp_path / "db")
        assert r.exit_code == 0, r.output
        filters, (row, _) = stored_filters(tmp_path / "db", "local:mine")
        assert_bitwise(filters, [model.a, model.b])  # forward order, not definition order
    finally:
        sys.path.remove(str(tmp_path / "pkg"))
        sys.modules.pop("my_models", None)


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_state_dict_that_does_not_fit_is_one_line_and_leaves_the_database_unchanged(tmp_path, damage):
    torch.manual_seed(0)
    db = tmp_path / "db"
    good = tmp_path / "good.pt"
    torch.save(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).state_dict(), good)
    assert cli("add", good, "--arch", "cnn4-8", "--db", db).exit_code != 0  # wrong arch: refused as well
    state = {k: v for k, v in nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).state_dict().items()}
    torch.save(state, good)
    from filterdb.training.registry import create_model
    model = create_model("cnn4-8", in_chans=1)
    ok = tmp_path / "ok.pt"
    torch.save(model.state_dict(), ok)
    assert cli("add", ok, "--arch", "cnn4-8", "--arch-kwargs", '{"in_chans": 1}', "--set", "dataset=digits",
               "--db", db).exit_code == 0
    before = tree_digest(db)
    sd = model.state_dict()
    key = next(k for k in sd if k.endswith("weight") and sd[k].dim() == 4)
    if damage == "missing":
        del sd[key]
    else:
        sd[key] = torch.zeros(sd[key].shape[0] + 1, *sd[key].shape[1:])
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    r = cli("add", bad, "--arch", "cnn4-8", "--arch-kwargs", '{"in_chans": 1}', "--set", "dataset=digits",
            "--db", db)
    assert r.exit_code == 1
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0] and "'module.'" in errors[0]
    assert ("missing" if damage == "missing" else "shape mismatch") in errors[0]
    assert tree_digest(db) == before


def test_torchscript_is_refused_without_trust_code_and_added_with_it(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 2, 3, stride=2, padding=1, padding_mode="reflect")).eval()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    db = tmp_path / "db"
    r = cli("add", path, "--db", db)
    assert r.exit_code == 1 and "--trust-code" in r.output and "TorchScript" in r.output
    assert not db.exists()
    r = cli("add", path, "--trust-code", "--db", db)
    assert r.exit_code == 0, r.output
    filters, (_, layers) = stored_filters(db, "scripted@")
    assert_bitwise(filters, [model[0], model[3]])
    assert list(layers["stride_h"]) == [1, 2] and set(layers["weight_kind"]) == {"probe_verified"}
    assert list(layers["padding_mode"]) == ["zeros", "reflect"] and list(layers["padding"]) == ["0,0", "1,1"]


def test_pickled_module_with_a_payload_is_refused_and_the_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "evil_model.py").write_text(textwrap.dedent(f"""
        import os
        from torch import nn

        def plant():
            open({str(marker)!r}, "w").write("ran")
            return nn.Conv2d(1, 1, 3)

        class Evil(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(1, 2, 3)

            def __reduce__(self):
                return (plant, ())
    """))
    path = tmp_path / "whole.pt"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkg")}
    subprocess.run([sys.executable, "-c", f"import torch, evil_model; torch.save(evil_model.Evil(), {str(path)!r})"],
                   check=True, env=env, timeout=300)
    assert not marker.exists()
    sys.path.insert(0, str(tmp_path / "pkg"))
    try:
        for extra in ([], ["--arch", "cnn4-8"]):
            r = cli("add", path, *extra, "--db", tmp_path / "db")
            assert r.exit_code == 1 and "--trust-code" in r.output, r.output
            assert not marker.exists()
    finally:
        sys.path.remove(str(tmp_path / "pkg"))
        sys.modules.pop("evil_model", None)


def test_set_rejects_unknown_columns_and_bad_values(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(1)}, path)
    for item, said in (("colour=red", "valid: name"), ("training=adversarial", "robust, normal"),
                       ("eps=eight", "8/255"), ("seed=x", "not an int")):
        r = cli("add", path, "--arch", "cnn4-8", "--set", item, "--db", tmp_path / "db")
        assert r.exit_code == 1 and said in r.output, (item, r.output)
    assert not (tmp_path / "db").exists()


def test_manifest_of_mixed_checkpoints_with_two_bad_rows(tmp_path):
    from filterdb.training.registry import create_model

    folder = tmp_path / "ckpts"
    folder.mkdir()
    rows = ["path,arch,arch_kwargs,training,dataset,threat_model,eps,training_method"]
    expected = {}
    for i in range(20):
        arch = ["cnn4-8", "cnn4-16", "resnet8-8"][i % 3]
        torch.manual_seed(i)
        model = create_model(arch, in_chans=1)
        path = folder / f"m{i:02d}.pth"
        wrap = {"state_dict": model.state_dict()} if i % 2 else model.state_dict()
        torch.save(wrap, path)
        robust = i % 2 == 0
        rows.append(f"ckpts/{path.name},{arch},\"{{\"\"in_chans\"\": 1}}\",{'robust' if robust else 'normal'},digits,"
                    f"{'Linf' if robust else ''},{'8/255' if robust else ''},{'pgd' if robust else 'standard'}")
        expected[path.stem] = (model, robust)
    rows.append("ckpts/missing.pth,cnn4-8,,normal,digits,,,standard")
    torch.save(create_model("cnn4-8", in_chans=1).state_dict(), folder / "wrong.pth")
    rows.append("ckpts/wrong.pth,cnn4-16,\"{\"\"in_chans\"\": 1}\",normal,digits,,,standard")
    manifest = tmp_path / "models.csv"
    manifest.write_text("\n".join(rows) + "\n")
    db = tmp_path / "db"
    r = cli("add", "--manifest", manifest, "--db", db)
    assert r.exit_code == 1
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and any("missing.pth" in e for e in errors) and any("wrong.pth" in e for e in errors)
    assert "20 added" in r.output
    with open_database(db) as handle:
        models = handle.models
        assert len(models) == 20
        for stem, (_model, robust) in expected.items():
            row = models[models["name"].str.startswith(stem + "@")].iloc[0]
            assert row["training"] == ("robust" if robust else "normal") and row["dataset"] == "digits"
            if robust:
                assert row["threat_model"] == "Linf" and row["eps"] == pytest.approx(8 / 255)
        filters, _ = stored_filters(db, "m00@")
        assert_bitwise(filters, forward_convs(expected["m00"][0], (1, 8, 8)))
    before = tree_digest(db)
    r = cli("add", "--manifest", manifest, "--db", db)
    assert r.exit_code == 1 and "0 added, 20 already present, 2 failed" in r.output
    assert tree_digest(db) == before
    r = cli("compare", "training=robust", "training=normal", "--db", db)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("given, shape", [("3,32,32", (3, 32, 32)), ("1x8x8", (1, 8, 8)), ((3, 8, 8), (3, 8, 8)),
                                          ([np.int64(1), 9, 9], (1, 9, 9)), (None, None)])
def test_input_shape_is_read_from_text_or_integers(given, shape):
    from filterdb.sources.base import parse_input_shape

    assert parse_input_shape(given, "--input-shape") == shape


@pytest.mark.parametrize("given", ["3,32", "3,0,8", "three", "", (3, 8.5, 8), (1, 8, 8, 8)])
def test_input_shape_other_than_three_positive_integers_names_the_option_and_value(given):
    from filterdb.errors import FilterDBError
    from filterdb.sources.base import parse_input_shape

    with pytest.raises(FilterDBError) as raised:
        parse_input_shape(given, "input_shape")
    assert str(raised.value) == (f"input_shape {given!r}: give channels, height and width as C,H,W, "
                                 "three integers >= 1, e.g. 3,256,256")


def test_bad_input_shape_from_cli_manifest_and_python_api(tmp_path):
    import filterdb
    from filterdb.training.registry import create_model

    torch.save(create_model("cnn4-8", in_chans=1).state_dict(), tmp_path / "cnn.pt")
    r = cli("add", tmp_path / "cnn.pt", "--arch", "cnn4-8", "--input-shape", "1,8", "--db", tmp_path / "db")
    assert r.exit_code == 2 and "--input-shape '1,8': give channels, height and width as C,H,W" in r.output
    (tmp_path / "models.csv").write_text('path,arch,arch_kwargs,input_shape\ncnn.pt,cnn4-8,"{""in_chans"": 1}",1x8\n')
    r = cli("add", "--manifest", tmp_path / "models.csv", "--db", tmp_path / "db")
    assert r.exit_code == 1 and "models.csv:2 (cnn.pt): input_shape '1x8': give channels" in r.output, r.output
    with filterdb.FilterDB.open(tmp_path / "db", "a") as db:
        with pytest.raises(filterdb.FilterDBError, match=r"input_shape \(1, 0, 8\): give channels"):
            filterdb.add_state_dict(db, tmp_path / "cnn.pt", arch="cnn4-8", arch_kwargs={"in_chans": 1},
                                    input_shape=(1, 0, 8))
        assert db.models.empty


def test_python_api(tmp_path):
    import filterdb

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with filterdb.FilterDB.open(tmp_path / "db", "a") as db:
        mid = filterdb.add_module(db, model, name="seq", input_shape=(1, 8, 8), training="robust", eps="8/255")
        from filterdb.training.registry import create_model
        cnn = create_model("cnn4-8", in_chans=1)
        torch.save({"net": cnn.state_dict()}, tmp_path / "cnn.pt")
        sd_id = filterdb.add_state_dict(db, tmp_path / "cnn.pt", arch="cnn4-8", arch_kwargs={"in_chans": 1},
                                        dataset="digits", training="normal")
        dict_id = filterdb.add_state_dict(db, cnn.state_dict(), arch="cnn4-8", arch_kwargs={"in_chans": 1},
                                          name="cnn-dict", dataset="digits")
        assert db.models.loc[mid, "eps"] == pytest.approx(8 / 255)
        assert db.models.loc[sd_id, "model_string"] == "cnn4-8" and db.models.loc[sd_id, "input_shape"] == "1x8x8"
        for model_id, net in ((mid, model), (sd_id, cnn), (dict_id, cnn)):
            layers = db.layers[db.layers["model_id"] == model_id].sort_values("layer_index")
            assert_bitwise([db.read_layer(row) for _, row in layers.iterrows()], forward_convs(net, (1, 8, 8)))
    with pytest.raises(filterdb.FilterDBError, match="valid"):
        with filterdb.FilterDB.open(tmp_path / "db", "a") as db:
            filterdb.add_module(db, model, name="x", input_shape=(1, 8, 8), colour="red")


def test_pickled_module_is_added_with_trust_code(tmp_path):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3))
    torch.save(model, tmp_path / "whole.pt")
    r = cli("add", tmp_path / "whole.pt", "--db", tmp_path / "db")
    assert r.exit_code == 1 and "--trust-code" in r.output
    r = cli("add", tmp_path / "whole.pt", "--trust-code", "--input-shape", "1,8,8", "--db", tmp_path / "db")
    assert r.exit_code == 0, r.output
    filters, _ = stored_filters(tmp_path / "db", "whole@")
    assert_bitwise(filters, [model[0], model[2]])
