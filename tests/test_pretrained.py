"""`filterdb add torchvision:NAME` / `timm:NAME` from the libraries' own caches, offline; `filterdb pairs` matches them."""
import os
import subprocess
import sys
import textwrap

import torch
import torchvision
from click.testing import CliRunner
from test_robustbench import assert_filters_equal_checkpoint, write_checkpoint

from filterdb.cli import main
from filterdb.ids import model_id
from filterdb.integrity import sha256_file
from filterdb.store import open_database


def run_cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_torchvision_from_cache_offline_and_paired_with_robustbench(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FILTERDB_OFFLINE", "1")
    db = str(tmp_path / "db")

    missing = run_cli("add", "torchvision:resnet18", "--db", db)
    assert missing.exit_code == 1
    assert "torchvision:resnet18: pretrained weights are not in the local cache" in " ".join(missing.output.split())

    robust = write_checkpoint(tmp_path / "models", "Salman2020Do_R18", seed=3, dataset="imagenet")
    built = run_cli("build", "-l", "linf-imagenet", "-m", "Salman2020Do_R18", "--offline",
                    "--model-dir", str(tmp_path / "models"), "--db", db)
    assert built.exit_code == 0, built.output
    before = run_cli("pairs", "--db", db, "--format", "csv")
    assert "robustbench:imagenet/Linf/Salman2020Do_R18,imagenet,ResNet-18,,torchvision:resnet18" in before.output

    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    added = run_cli("add", "torchvision:resnet18", "--db", db)
    assert added.exit_code == 0, added.output

    with open_database(db) as opened:
        row = opened.models.loc[model_id("torchvision", "resnet18")]
        assert (row["source"], row["architecture"], row["training"], row["dataset"]) == \
            ("torchvision", "ResNet-18", "normal", "imagenet")
        assert row["input_shape"] == "3x224x224"
        assert row["weights_sha256"] == sha256_file(cached)
        state = torch.load(cached)
        layers = opened.layers[opened.layers["model_id"] == row["model_id"]]
        for _, layer in layers.iterrows():
            assert opened.read_layer(layer).tobytes() == \
                state[f"{layer['name']}.weight"].numpy().reshape(-1, layer["kernel_h"], layer["kernel_w"]).tobytes()
        assert_filters_equal_checkpoint(opened, "Salman2020Do_R18", robust, dataset="imagenet")
    after = run_cli("pairs", "--db", db, "--format", "csv")
    assert "robustbench:imagenet/Linf/Salman2020Do_R18,imagenet,ResNet-18,torchvision:resnet18," in after.output


TIMM_SCRIPT = textwrap.dedent("""
    import sys, timm, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from click.testing import CliRunner
    from filterdb.cli import main
    db, cache = sys.argv[1], Path(sys.argv[2])
    missing = CliRunner().invoke(main, ["add", "timm:resnet18", "--db", db])
    assert missing.exit_code == 1 and "not in the local cache" in missing.output, missing.output
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    torch.manual_seed(1)
    state = timm.create_model("resnet18").state_dict()
    save_file(state, folder / "snapshots" / ("0" * 40) / "model.safetensors")
    added = CliRunner().invoke(main, ["add", "timm:resnet18", "--db", db])
    assert added.exit_code == 0, added.output
    from filterdb.store import open_database
    with open_database(db) as opened:
        assert list(opened.models["architecture"]) == ["ResNet-18"]
        for _, layer in opened.layers.iterrows():
            expected = state[layer["name"] + ".weight"].numpy().reshape(-1, layer["kernel_h"], layer["kernel_w"])
            assert opened.read_layer(layer).tobytes() == expected.tobytes(), layer["name"]
    print("ok")
""")


def test_timm_from_the_hugging_face_cache_offline(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "FILTERDB_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", TIMM_SCRIPT, str(tmp_path / "db"), str(tmp_path / "hf")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok")


def test_unknown_argument_lists_the_accepted_forms(tmp_path):
    result = run_cli("add", "resnet50", "--db", str(tmp_path / "db"))
    assert result.exit_code == 1
    assert "timm:NAME" in result.output and "torchvision:NAME" in result.output


TIMM_256_SCRIPT = textwrap.dedent("""
    import json, sys, timm, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from click.testing import CliRunner
    from filterdb.cli import main
    from filterdb.store import open_database
    name, cache = "eca_botnext26ts_256", Path(sys.argv[2])
    assert timm.models.get_pretrained_cfg(name).input_size == (3, 256, 256)
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    torch.manual_seed(2)
    state = timm.create_model(name).state_dict()
    save_file(state, folder / "snapshots" / ("0" * 40) / "model.safetensors")
    small = CliRunner().invoke(main, ["add", "timm:" + name, "--input-shape", "3,224,224", "--db", sys.argv[1] + "/a"])
    assert small.exit_code == 1 and "forward pass on a 1x3x224x224 input failed" in small.output, small.output
    assert "(--input-shape C,H,W)" in small.output, small.output
    bad = CliRunner().invoke(main, ["add", "timm:" + name, "--input-shape", "3,256", "--db", sys.argv[1] + "/a"])
    assert bad.exit_code == 2 and "C,H,W" in bad.output, bad.output
    for db, options in (("a", ["--input-shape", "3,256,256"]), ("b", [])):
        added = CliRunner().invoke(main, ["add", "timm:" + name, *options, "--db", sys.argv[1] + "/" + db])
        assert added.exit_code == 0, added.output
        assert "5 convolution module(s) not stored (5 Conv1d" in " ".join(added.output.split()), added.output
        with open_database(sys.argv[1] + "/" + db) as opened:
            row = opened.models.iloc[0]
            assert row["input_shape"] == "3x256x256", row["input_shape"]
            skipped = json.loads(row["skipped_convs"])
            assert {s["class"] for s in skipped} == {"Conv1d"}
            assert all(state[s["name"] + ".weight"].numel() == s["n_params"] for s in skipped)
            layers = opened.layers
            assert set(layers["weight_kind"]) == {"plain"} and layers["reached"].all()
            for _, layer in layers.iterrows():
                expected = state[layer["name"] + ".weight"].numpy().reshape(-1, layer["kernel_h"], layer["kernel_w"])
                assert opened.read_layer(layer).tobytes() == expected.tobytes(), layer["name"]
    print("ok")
""")


def test_a_256_px_timm_model_lands_with_input_shape_and_by_default_from_its_configuration(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "FILTERDB_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", TIMM_256_SCRIPT, str(tmp_path), str(tmp_path / "hf")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("ok")


def test_torchvision_input_size_is_its_evaluation_crop():
    from filterdb.sources.pretrained import torchvision_input_shape

    assert torchvision_input_shape(torchvision.models.Inception_V3_Weights.DEFAULT) == (3, 299, 299)
    assert torchvision_input_shape(torchvision.models.ResNet18_Weights.DEFAULT) == (3, 224, 224)


def test_build_runs_the_forward_pass_at_the_given_input_shape(tmp_path):
    write_checkpoint(tmp_path / "models", "Salman2020Do_R18", seed=3, dataset="imagenet")
    db = str(tmp_path / "db")
    built = run_cli("build", "-l", "linf-imagenet", "-m", "Salman2020Do_R18", "--offline", "--input-shape", "3,64,48",
                    "--model-dir", str(tmp_path / "models"), "--db", db)
    assert built.exit_code == 0, built.output
    with open_database(db) as opened:
        assert list(opened.models["input_shape"]) == ["3x64x48"]
        assert opened.layers["reached"].all() and len(opened.layers) == 20
    bad = run_cli("build", "-l", "linf-imagenet", "--input-shape", "three", "--db", db)
    assert bad.exit_code == 2 and "give channels, height and width as C,H,W" in bad.output


def test_robustbench_input_size_follows_its_preprocessing():
    from filterdb.sources.robustbench import input_shape, zoo_entry

    assert input_shape("imagenet", zoo_entry("imagenet", "Linf", "Wong2020Fast")) == (3, 288, 288)  # 'Crop288'
    assert input_shape("imagenet", zoo_entry("imagenet", "Linf", "Salman2020Do_R18")) == (3, 224, 224)
    assert input_shape("cifar10", zoo_entry("cifar10", "Linf", "Standard")) == (3, 32, 32)
