"""A filterdb checkpoint with a malformed metadata field is one error line naming the file, the field
and what was expected, never a traceback: each case is a real ``torch.save`` file, added with the
real CLI, that holds what the trainer writes with one field changed."""
import math
from pathlib import Path

import pytest
import torch
from cli_results import one_error_line, run

from filterdb.training.attacks import AttackConfig
from filterdb.training.checkpoint import load_checkpoint, wrap_state_dict
from filterdb.training.registry import create_model


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> dict:
    """What the trainer writes for a PGD run of a matched pair (all the fields of the format)."""
    torch.manual_seed(0)
    model = create_model("cnn2-4", num_classes=10, in_chans=1)
    path = wrap_state_dict(model.state_dict(), tmp_path_factory.mktemp("base") / "m.pt", "cnn2-4", "digits", 10,
                           (1, 8, 8), method="pgd", attack=AttackConfig(eps=0.1, steps=5).to_dict())
    p = torch.load(path, weights_only=True)
    attack = AttackConfig(eps=0.1)
    p.update(method_params={"beta": None}, selection="best-robust", selected=True, epoch=3,
             metrics={"clean_acc": 96.5, "robust_acc": 70.25, "robust_attack": attack.name,
                      "robust_attack_params": attack.to_dict(), "threat_model": "Linf", "eps": 0.1, "split": "test",
                      "n_eval": 360, "epoch": 3},
             history=[{"epoch": 1, "lr": 0.1}, {"epoch": 2, "lr": 0.1}, {"epoch": 3, "lr": 0.01}],
             pairing={"seed": 0, "data_seed": 0, "init_sha256": "ab" * 32, "pair": "cnn2-4-s0", "role": "robust"},
             config={"model_string": "cnn2-4", "seed": 0})
    return p


def saved(payload: dict, path: Path, field: str, value) -> Path:
    """``payload`` with ``field`` (``a.b`` for a key of a dict field) set to ``value``, saved to ``path``."""
    p = {**payload}
    if "." in field:
        top, sub = field.split(".")
        p[top] = {**p[top], sub: value}
    else:
        p[field] = value
    torch.save(p, path)
    return path


def test_the_trainers_fields_are_accepted(payload, tmp_path):
    path = tmp_path / "ok.pt"
    torch.save(payload, path)
    ckpt = load_checkpoint(path)
    assert ckpt.input_shape == (1, 8, 8) and ckpt.epoch == 3 and ckpt.metrics["clean_acc"] == 96.5
    result = run("add", path, "--db", tmp_path / "db")
    assert result.exit_code == 0 and "1 added" in result.output, result.output


@pytest.mark.parametrize("field, value, expected", [
    # strings
    ("dataset", 7, "a non-empty string"),
    ("model_string", ["cnn2-4"], "a non-empty string"),
    ("method", "adamw", "one of standard, fgsm, pgd, trades, mart, cusp"),
    ("selection", "best", "one of last, best-clean, best-robust"),
    ("metrics.threat_model", 2, "a string"),
    ("pairing.role", None, "a string"),
    # integers
    ("num_classes", "10", "an integer >= 1"),
    ("in_chans", 1.0, "an integer >= 1"),
    ("epoch", -1, "an integer >= 0"),
    ("metrics.n_eval", 360.5, "an integer >= 0"),
    ("pairing.seed", "0", "an integer"),
    ("attack.steps", 0, "an integer >= 1"),
    # floats
    ("metrics.clean_acc", "high", "a number from 0 to 100 (percent)"),
    ("metrics.robust_acc", 170.0, "a number from 0 to 100 (percent)"),
    ("metrics.eps", math.nan, "a finite number >= 0"),
    ("attack.eps", -0.1, "a finite number >= 0"),
    ("attack.step_size", True, "a finite number > 0"),
    ("method_params.beta", "six", "a finite number >= 0"),
    # booleans
    ("selected", "yes", "true or false"),
    ("attack.random_start", 1, "true or false"),
    # the input shape
    ("input_shape", ["a", 8, 8], "three integers >= 1 (C, H, W)"),
    ("input_shape", [1, 8], "three integers >= 1 (C, H, W)"),
    ("input_shape", [1, 0, 8], "three integers >= 1 (C, H, W)"),
    ("input_shape", "1x8x8", "three integers >= 1 (C, H, W)"),
    ("input_shape", [3, 8, 8], "1 channels first, as 'in_chans' says"),
    # dict and list fields
    ("metrics", "96.5%", "a dict"),
    ("attack", "pgd", "a dict"),
    ("attack.norm", "L3", "one of Linf, L2"),
    ("pairing", ["cnn2-4-s0"], "a dict"),
    ("config", 3, "a dict"),
    ("method_params", [6.0], "a dict"),
    ("metrics.robust_attack_params", "pgd-10", "a dict"),
    ("history", {"epoch": 1}, "a list of dicts (one per epoch)"),
    ("history", [{"epoch": 1}, 0.1], "a list of dicts (one per epoch)"),
    ("versions", {"torch": 2.14}, "a dict of version strings"),
    ("train_state", "resume", "a dict"),
    ("model_state", {"0.weight": [[1.0]]}, "a state dict (parameter names to tensors)"),
    ("model_state", {}, "a state dict (parameter names to tensors)"),
])
def test_a_malformed_field_is_one_line_naming_file_and_field(payload, tmp_path, field, value, expected):
    path = saved(payload, tmp_path / "bad_meta.pt", field, value)
    target = tmp_path / "db"
    line = one_error_line(run("add", path, "--db", target), path, f"checkpoint field '{field}'", expected)
    assert f"is {value!r}"[:40] in line or "..." in line
    assert not target.exists()  # nothing was written


def test_a_missing_required_field_is_named(payload, tmp_path):
    p = {k: v for k, v in payload.items() if k not in ("input_shape", "num_classes")}
    torch.save(p, tmp_path / "short.pt")
    one_error_line(run("add", tmp_path / "short.pt", "--db", tmp_path / "db"), tmp_path / "short.pt",
                   "lacks num_classes, input_shape")


def test_optional_fields_left_out_or_none_read_as_their_defaults(payload, tmp_path):
    p = {k: v for k, v in payload.items() if k not in ("history", "pairing", "config", "selection")}
    p.update(metrics=None, attack=None, epoch=None)
    torch.save(p, tmp_path / "sparse.pt")
    ckpt = load_checkpoint(tmp_path / "sparse.pt")
    assert (ckpt.metrics, ckpt.attack, ckpt.epoch, ckpt.selection, ckpt.history, ckpt.pairing) == \
        ({}, None, 0, "last", [], {})
