"""End-to-end tests of ``filterdb evaluate`` on the demo's trained digits checkpoints.

Everything runs on the CPU against the real code: the trainer's checkpoints (the session-scoped
fixture ``demo_home``), sklearn's bundled digits (8x8 grey images, test split of 360), the
real attacks (PGD, CW, pyautoattack) and the real database. Checkpoints are copied to a
private directory before they are evaluated, so results files never land in the shared
fixture. The budgets are the demo's (Linf 0.1, L2 0.5) next to the defaults' 1/255: the
defaults' 8/255 barely moves a digits model, so it cannot tell a PGD-trained model from its
normal twin.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from filterdb.cli import main
from filterdb.errors import FilterDBError

PAIR = "cnn4-16-s0"
ROLES = ("normal", "pgd")
ATTACKS = ("pgd-10", "cw-10", "autoattack:apgd-ce")
BUDGETS = (("Linf", "1/255"), ("Linf", "0.1"), ("L2", "0.5"))
N_SAMPLES = 150
TOL = 1e-6  # float32 rounding of x + delta


def demo_checkpoint(demo_home: Path, role: str) -> Path:
    return demo_home / "demo-checkpoints" / PAIR / role / "last.pt"


def copy_checkpoint(demo_home: Path, role: str, directory: Path) -> Path:
    """A private copy of a demo checkpoint (evaluation writes beside it)."""
    target = directory / role / "last.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(demo_checkpoint(demo_home, role), target)
    return target


def invoke(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def attack_row(summary: dict, attack: str, norm: str, label: str) -> dict:
    (row,) = [a for a in summary["attacks"] if (a["attack"], a["norm"], a["eps_label"]) == (attack, norm, label)]
    return row


def budget_row(summary: dict, norm: str, label: str) -> dict:
    (row,) = [b for b in summary["budgets"] if (b["norm"], b["eps_label"]) == (norm, label)]
    return row


@pytest.fixture(scope="module")
def evaluated(demo_home, tmp_path_factory) -> dict:
    """The normal and the PGD-trained twin evaluated in one ``filterdb evaluate`` call:
    PGD, CW and AutoAttack (APGD-CE) at three budgets, spatial grid with border fill."""
    directory = tmp_path_factory.mktemp("evaluated")
    paths = {role: copy_checkpoint(demo_home, role, directory) for role in ROLES}
    t0 = time.perf_counter()
    result = invoke("evaluate", paths["normal"], paths["pgd"], "--attacks", "pgd-10,cw-10,autoattack:apgd-ce",
                    "--linf", "1/255,0.1", "--l2", "0.5", "--n-samples", N_SAMPLES, "--batch-size", 64, "--seed", 7,
                    "--rotations", "-20,0,20", "--translations", "-1/8,0,1/8", "--fill", "border",
                    "--format", "json", "--no-progress")
    seconds = time.perf_counter() - t0
    assert result.exit_code == 0, result.output
    from filterdb.evaluation_files import load_evaluation
    return {"paths": paths, "summaries": {role: load_evaluation(p) for role, p in paths.items()},
            "records": json.loads(result.stdout), "stderr": result.stderr, "seconds": seconds}


# ---------------------------------------------------------------------------- the results


def test_results_file_matches_the_returned_result_and_defaults(demo_home, tmp_path):
    """Default budgets; the JSON beside the checkpoint is the returned summary (NaN as null);
    the same seed gives the same numbers and maps."""
    from filterdb.evaluation_files import evaluation_path, load_perturbation_maps, maps_path
    from filterdb.integrity import sha256_file
    from filterdb.output import json_safe
    from filterdb.training.evaluation import evaluate_checkpoint
    from filterdb.training.evaluation_config import EvaluationConfig

    path = copy_checkpoint(demo_home, "normal", tmp_path)
    config = EvaluationConfig(attacks="pgd-5,cw-5", n_samples=60, batch_size=32, seed=3, spatial=False)
    assert config.budgets == [("Linf", 1 / 255), ("Linf", 8 / 255), ("L2", 0.1), ("L2", 0.5)]
    result = evaluate_checkpoint(path, config)
    s = result.summary
    assert evaluation_path(path).is_file() and maps_path(path).is_file()
    assert json.loads(evaluation_path(path).read_text()) == json_safe(s)
    assert s["n_samples"] == 60 and s["num_classes"] == 10 and s["dataset"] == "digits"
    assert s["checkpoint_sha256"] == sha256_file(path) and s["model_string"] == "cnn4-16"
    # the checkpoint's own budget (Linf 0.1, not among the defaults) is added and is the headline
    assert [(a["attack"], a["norm"], a["eps_label"]) for a in s["attacks"]] == [
        (k, n, e) for n, e in (("Linf", "1/255"), ("Linf", "8/255"), ("Linf", "0.1"), ("L2", "0.1"), ("L2", "0.5"))
        for k in ("pgd-5", "cw-5")]
    assert attack_row(s, "cw-5", "L2", "0.5")["params"]["loss"] == "cw"
    assert attack_row(s, "pgd-5", "L2", "0.5")["params"]["loss"] == "ce"
    assert s["spatial"] is None and s["config"]["seed"] == 3 and s["config"]["batch_size"] == 32
    assert s["headline"] == {"threat_model": "Linf", "eps": pytest.approx(0.1), "eps_label": "0.1",
                             "robust_acc": budget_row(s, "Linf", "0.1")["robust_acc"], "robust_attack": "pgd-5+cw-5"}

    again = evaluate_checkpoint(path, config, save=False)
    assert [a["robust_acc"] for a in again.summary["attacks"]] == [a["robust_acc"] for a in s["attacks"]]
    assert again.summary["clean_acc"] == s["clean_acc"]
    maps = load_perturbation_maps(path)
    assert maps.keys() == again.maps.keys()
    for key, pmap in again.maps.items():
        np.testing.assert_array_equal(np.asarray(pmap, np.float16), maps[key])


def test_clean_accuracy_agrees_with_training(demo_home, tmp_path):
    """On the whole test split, evaluation sees the trainer's data: the same clean accuracy."""
    from filterdb.training.checkpoint import load_checkpoint
    from filterdb.training.evaluation import evaluate_checkpoint
    from filterdb.training.evaluation_config import EvaluationConfig

    path = demo_checkpoint(demo_home, "pgd")
    result = evaluate_checkpoint(path, EvaluationConfig(attacks="", spatial=True, rotations="0",
                                                        translations="0", n_samples=10_000), save=False)
    assert result.summary["n_samples"] == 360
    assert result.summary["clean_acc"] == pytest.approx(load_checkpoint(path).metrics["clean_acc"])
    assert not Path(str(path) + ".eval.json").exists()


def test_robust_accuracy_never_exceeds_clean_accuracy(evaluated):
    for role, s in evaluated["summaries"].items():
        assert s["n_samples"] == N_SAMPLES and s["config"]["seed"] == 7
        clean = s["clean_acc"]
        assert clean > 90, role
        assert {(a["attack"], a["norm"], a["eps_label"]) for a in s["attacks"]} == {
            (k, n, e) for k in ATTACKS for n, e in BUDGETS}
        for a in s["attacks"]:
            assert 0 <= a["robust_acc"] <= clean, (role, a["attack"])
            # robust = correct and not fooled; fooled samples changed their prediction
            assert a["robust_acc"] == pytest.approx(clean * (1 - a["success_rate"] / 100))
            assert a["fooling_rate"] >= clean - a["robust_acc"] - 1e-9
            assert a["max_perturbation"] <= a["eps"] + TOL, (role, a["attack"], a["norm"])
            assert a["perturbation"]["n_samples"] == round((clean - a["robust_acc"]) * N_SAMPLES / 100)
        for b in s["budgets"]:
            assert b["attacks"] == list(ATTACKS)
            each = [attack_row(s, k, b["norm"], b["eps_label"])["robust_acc"] for k in ATTACKS]
            assert b["robust_acc"] <= min(each)
        # a budget of one grey level is far below the digits' 16 levels: nearly nothing changes
        assert budget_row(s, "Linf", "1/255")["robust_acc"] >= clean - 5
        # the checkpoints' own threat model (Linf 0.1) is the headline
        assert s["headline"]["threat_model"] == "Linf" and s["headline"]["eps"] == pytest.approx(0.1)
        assert s["headline"]["robust_acc"] == budget_row(s, "Linf", "0.1")["robust_acc"]
        assert s["headline"]["robust_attack"] == "+".join(ATTACKS)


def test_pgd_trained_model_beats_its_normal_twin(evaluated):
    normal, robust = evaluated["summaries"]["normal"], evaluated["summaries"]["pgd"]
    for attack in ATTACKS:
        n, r = attack_row(normal, attack, "Linf", "0.1"), attack_row(robust, attack, "Linf", "0.1")
        assert r["robust_acc"] >= n["robust_acc"] + 25, attack  # 16-pair demo, cnn4-16-s0: +28.7 (CW) to +36.7
        n, r = attack_row(normal, attack, "L2", "0.5"), attack_row(robust, attack, "L2", "0.5")
        assert r["robust_acc"] >= n["robust_acc"] + 20, attack
    assert budget_row(robust, "Linf", "0.1")["robust_acc"] >= budget_row(normal, "Linf", "0.1")["robust_acc"] + 30
    # AutoAttack's APGD is at least as strong as 10 PGD steps on the normal model
    assert (attack_row(normal, "autoattack:apgd-ce", "Linf", "0.1")["robust_acc"]
            <= attack_row(normal, "pgd-10", "Linf", "0.1")["robust_acc"] + 2)


def test_cli_prints_what_the_files_hold(evaluated):
    records, paths = evaluated["records"], evaluated["paths"]
    for role, path in paths.items():
        assert f"results: {path}.eval.json" in evaluated["stderr"]
        s = evaluated["summaries"][role]
        rows = [r for r in records if r["checkpoint"] == str(path)]
        attacks = [r for r in rows if r["attack"] in ATTACKS]
        assert len(attacks) == len(ATTACKS) * len(BUDGETS)
        for r in attacks:
            a = attack_row(s, r["attack"], r["threat_model"], r["eps"])
            assert r["robust_acc"] == a["robust_acc"] and r["fooling_rate"] == a["fooling_rate"]
            assert r["clean_acc"] == s["clean_acc"] and r["model"] == "cnn4-16"
        worst = [r for r in rows if r["attack"] == "worst case"]
        assert [(r["threat_model"], r["eps"], r["robust_acc"]) for r in worst] == [
            (b["norm"], b["eps_label"], b["robust_acc"]) for b in s["budgets"]]
        (spatial,) = [r for r in rows if r["attack"] == "spatial"]
        assert spatial["threat_model"] == "grid x27 border" and spatial["robust_acc"] == s["spatial"]["worst_case_acc"]


def test_perturbation_maps(evaluated):
    from filterdb.evaluation_files import load_perturbation_maps, maps_path
    from filterdb.training.perturbation import border_stats

    for role, path in evaluated["paths"].items():
        s = evaluated["summaries"][role]
        with h5py.File(maps_path(path), "r") as f:
            assert f.attrs["format"] == "filterdb-perturbation-maps"
            assert f.attrs["checkpoint_sha256"] == s["checkpoint_sha256"]
            datasets = list(f["maps"].values())
            assert len(datasets) == len(ATTACKS) * len(BUDGETS)
            for ds in datasets:
                assert ds.shape == (8, 8) and ds.dtype == np.float16
                row = attack_row(s, ds.attrs["attack"], ds.attrs["norm"], ds.attrs["eps_label"])
                assert ds.attrs["eps"] == row["eps"] and ds.attrs["n_samples"] == row["perturbation"]["n_samples"]
        maps = load_perturbation_maps(path)
        assert set(maps) == {(k, n, e) for k in ATTACKS for n, e in BUDGETS}
        for a in s["attacks"]:
            pmap = maps[(a["attack"], a["norm"], a["eps_label"])]
            p = a["perturbation"]
            assert [b["width"] for b in p["border"]] == [1, 2, 4]
            wide = p["border"][2]  # a 4-pixel frame covers the whole 8x8 image: no interior
            assert wide["interior_mean"] is None and math.isnan(wide["ratio"])
            if p["n_samples"] == 0:
                assert np.isnan(pmap).all()
                continue
            assert np.isfinite(pmap).all() and (pmap >= 0).all()
            if a["norm"] == "Linf":  # a per-pixel mean of |delta| never exceeds eps
                assert pmap.max() <= a["eps"] * (1 + 1e-3)
            assert p["mean"] == pytest.approx(float(pmap.astype(np.float64).mean()), rel=2e-3)
            for b in p["border"][:2]:
                again = border_stats(pmap, b["width"])
                assert again["border_mean"] == pytest.approx(b["border_mean"], rel=2e-3)
                assert again["interior_mean"] == pytest.approx(b["interior_mean"], rel=2e-3)
                assert b["ratio"] == pytest.approx(b["border_mean"] / b["interior_mean"])
    # the normal model is fooled often at Linf 0.1: its maps rest on many samples
    assert attack_row(evaluated["summaries"]["normal"], "pgd-10", "Linf", "0.1")["perturbation"]["n_samples"] >= 50


def test_spatial_grid(evaluated):
    for s in evaluated["summaries"].values():
        sp = s["spatial"]
        assert sp["fill"] == "border" == s["config"]["fill"] and sp["interpolation"] == "bilinear"
        assert sp["attack"] is None and sp["rotation_unit"] == "degrees"
        assert len(sp["grid"]) == 27
        assert {(p["rotation"], p["tx"], p["ty"]) for p in sp["grid"]} == {
            (r, tx, ty) for r in (-20.0, 0.0, 20.0) for tx in (-0.125, 0.0, 0.125) for ty in (-0.125, 0.0, 0.125)}
        (identity,) = [p for p in sp["grid"] if (p["rotation"], p["tx"], p["ty"]) == (0, 0, 0)]
        assert identity["accuracy"] == s["clean_acc"] and identity["fooling_rate"] == 0
        accuracies = [p["accuracy"] for p in sp["grid"]]
        fooling = [p["fooling_rate"] for p in sp["grid"]]
        assert sp["worst_case_acc"] <= min(accuracies) and sp["any_fooling_rate"] >= max(fooling)
        assert sp["mean_acc"] == pytest.approx(np.mean(accuracies))
        assert sp["mean_fooling_rate"] == pytest.approx(np.mean(fooling))
        # a 20 degree rotation with a 1-pixel shift of an 8x8 digit does change predictions
        assert 0 < sp["any_fooling_rate"] <= 100 and sp["mean_acc"] < s["clean_acc"]


def test_spatial_grid_combined_with_an_attack(demo_home):
    from filterdb.training.evaluation import evaluate_checkpoint
    from filterdb.training.evaluation_config import EvaluationConfig

    path = demo_checkpoint(demo_home, "normal")
    common = dict(attacks="", rotations="0,15", translations="0", fill="zeros", n_samples=100, seed=1)
    plain = evaluate_checkpoint(path, EvaluationConfig(**common), save=False).summary
    combined = evaluate_checkpoint(path, EvaluationConfig(**common, spatial_attack="Linf:0.1"), save=False).summary
    assert plain["attacks"] == [] == combined["attacks"] and combined["budgets"] == []
    assert plain["headline"] is None
    sp, cb = plain["spatial"], combined["spatial"]
    assert sp["attack"] is None
    assert cb["attack"]["norm"] == "Linf" and cb["attack"]["eps"] == pytest.approx(0.1) and cb["attack"]["steps"] == 10
    assert combined["config"]["spatial_attack"] == ["Linf", pytest.approx(0.1)]
    assert cb["worst_case_acc"] <= sp["worst_case_acc"] and cb["mean_acc"] < sp["mean_acc"] - 20
    assert cb["any_fooling_rate"] >= sp["any_fooling_rate"]
    (identity,) = [p for p in cb["grid"] if p["rotation"] == 0]
    assert identity["accuracy"] < combined["clean_acc"] and identity["fooling_rate"] > 0


# ---------------------------------------------------------------------------- the attacks


def _digits_batch(n: int):
    from filterdb.training.data import load_dataset, to_float

    data = load_dataset("digits", "test")
    x = to_float(torch.stack([data[i][0] for i in range(n)]))
    y = torch.tensor([int(data[i][1]) for i in range(n)])
    return x, y


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.5)])
def test_every_attack_stays_inside_the_eps_ball_and_the_unit_box(demo_home, norm, eps):
    """The raw examples of PGD, CW and each of AutoAttack's attacks, before any safety projection."""
    from filterdb.training.attack_specs import AUTOATTACK_PARTS, parse_attacks
    from filterdb.training.checkpoint import load_checkpoint

    model = load_checkpoint(demo_checkpoint(demo_home, "normal")).build_model()
    x, y = _digits_batch(12)
    specs = parse_attacks("pgd-10,cw-10," + ",".join(f"autoattack:{p}" for p in AUTOATTACK_PARTS))
    fooled = {}
    for spec in specs:
        notes: set[str] = set()
        x_adv = spec.run(model, x, y, norm, eps, seed=0, num_classes=10, notes=notes)
        assert x_adv.shape == x.shape and torch.isfinite(x_adv).all(), spec.name
        assert x_adv.min() >= 0 and x_adv.max() <= 1, spec.name
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
        assert size.max() <= eps + TOL, (spec.name, float(size.max()))
        with torch.no_grad():
            fooled[spec.name] = int((model(x_adv).argmax(1) != y).sum())
    assert all(n > 0 for n in fooled.values()), fooled  # every attack did something


def test_examples_outside_the_ball_are_projected_before_counting():
    from filterdb.training.evaluation import _into_ball

    x = torch.full((2, 1, 4, 4), 0.5)
    rogue = x.clone()
    rogue[0, 0, 0, 0], rogue[1, 0, 1, 1] = 0.9, float("nan")
    notes: set[str] = set()
    out = _into_ball(rogue, x, "Linf", 0.1, notes)
    assert (out - x).abs().max() <= 0.1 + TOL and torch.equal(out[1], x[1])
    assert len(notes) == 2 and any("outside the Linf ball" in n for n in notes)
    notes.clear()
    ok = _into_ball(x + 0.05, x, "L2", 1.0, notes)
    assert torch.allclose(ok, x + 0.05) and not notes


def test_autoattack_standard_version(demo_home, tmp_path):
    """The full standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on 8 images, both twins."""
    paths = [copy_checkpoint(demo_home, role, tmp_path) for role in ROLES]
    result = invoke("evaluate", *paths, "-a", "autoattack", "--linf", "0.1", "--l2", "none", "-n", 8,
                    "--no-spatial", "--no-progress", "--format", "json")
    assert result.exit_code == 0, result.output
    from filterdb.evaluation_files import load_evaluation

    robust = {}
    for role, path in zip(ROLES, paths):
        s = load_evaluation(path)
        (a,) = s["attacks"]
        assert a["attack"] == "autoattack" and a["params"]["version"] == "standard"
        assert a["params"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
        assert a["params"]["target_classes"] == 9 and a["params"]["package"].startswith("pyautoattack")
        assert 0 <= a["robust_acc"] <= s["clean_acc"] and a["max_perturbation"] <= 0.1 + TOL
        assert s["headline"]["robust_attack"] == "autoattack"
        robust[role] = a["robust_acc"]
    assert robust["pgd"] >= robust["normal"] + 25, robust


# ---------------------------------------------------------------------------- into the database


def test_evaluated_checkpoints_land_in_the_model_table(evaluated, tmp_path):
    from filterdb.store import open_database
    from filterdb.training.checkpoint import load_checkpoint

    paths = evaluated["paths"]
    db_path = tmp_path / "db"
    result = invoke("add", paths["normal"], paths["pgd"], "--db", db_path)
    assert result.exit_code == 0, result.output
    with open_database(db_path) as db:
        models = db.models.copy()
    assert len(models) == 2
    for role in ROLES:
        s = evaluated["summaries"][role]
        (row,) = models[models["weights_sha256"] == s["checkpoint_sha256"]].to_dict("records")
        stored = json.loads(row["evaluation_json"])
        assert stored["checkpoint_sha256"] == s["checkpoint_sha256"] and stored["clean_acc"] == s["clean_acc"]
        assert [(a["attack"], a["norm"], a["eps"], a["robust_acc"], a["fooling_rate"]) for a in stored["attacks"]] == [
            (a["attack"], a["norm"], a["eps"], a["robust_acc"], a["fooling_rate"]) for a in s["attacks"]]
        assert stored["budgets"] == s["budgets"] and stored["spatial"] == s["spatial"]
        # 150 evaluated images never replace the training run's full-test figures (360 images)
        trained = load_checkpoint(paths[role]).metrics
        assert stored["n_samples"] == N_SAMPLES < trained["n_eval"]
        assert row["clean_acc"] == trained["clean_acc"] and row["robust_acc"] == trained["robust_acc"]
        assert row["robust_attack"] == trained["robust_attack"]
        assert row["threat_model"] == "Linf" and row["eps"] == pytest.approx(0.1)
        assert row["training"] == ("normal" if role == "normal" else "robust")
        assert row["model_string"] == "cnn4-16" and row["dataset"] == "digits"


def test_a_full_test_evaluation_replaces_the_training_figures(demo_home, tmp_path):
    """An evaluation on every test image gives the model table its clean and robust accuracy."""
    from filterdb.store import open_database
    from filterdb.training.checkpoint import load_checkpoint

    path = copy_checkpoint(demo_home, "pgd", tmp_path)
    n_test = load_checkpoint(path).metrics["n_eval"]
    result = invoke("evaluate", path, "-a", "pgd-5", "--l2", "none", "-n", n_test, "--no-spatial", "--no-progress",
                    "--format", "json")
    assert result.exit_code == 0, result.output
    s = json.loads(evaluation_path_of(path).read_text())
    assert s["n_samples"] == n_test and s["headline"]["eps_label"] == "0.1"  # the checkpoint's own budget, added
    assert invoke("add", path, "--db", tmp_path / "db").exit_code == 0
    with open_database(tmp_path / "db") as db:
        (row,) = db.models.to_dict("records")
    assert row["clean_acc"] == s["clean_acc"] and row["robust_acc"] == s["headline"]["robust_acc"]
    assert row["robust_attack"] == "pgd-5" and row["name"].startswith("digits/cnn4-16/s0/pgd/")


def evaluation_path_of(path: Path) -> Path:
    from filterdb.evaluation_files import evaluation_path
    return evaluation_path(path)


def test_cpu_default_is_pgd_and_autoattack_cost_is_estimated(demo_home):
    from filterdb.training.checkpoint import load_checkpoint
    from filterdb.training.data import load_dataset
    from filterdb.training.evaluation import autoattack_cost_seconds
    from filterdb.training.evaluation_config import EvaluationConfig

    assert [a.name for a in EvaluationConfig(device="cpu").attacks] == ["pgd-20"]
    assert [a.name for a in EvaluationConfig(device="cuda").attacks] == ["pgd-20", "cw-20", "autoattack"]
    ckpt = load_checkpoint(demo_checkpoint(demo_home, "normal"))
    model, data = ckpt.build_model(), load_dataset("digits", "test")
    assert autoattack_cost_seconds(model, data, EvaluationConfig(device="cpu")) == 0
    one = autoattack_cost_seconds(model, data, EvaluationConfig(attacks="autoattack", device="cpu", n_samples=100,
                                                                l2="none", linf="0.1"))
    assert one > 0


def test_results_of_earlier_weights_are_not_used(demo_home, tmp_path):
    """A checkpoint rewritten after 'filterdb evaluate' (retrained) loses its results everywhere."""
    from filterdb.evaluation_files import evaluation_record, load_evaluation, load_perturbation_maps
    from filterdb.store import open_database
    from filterdb.training.checkpoint import load_checkpoint

    path = copy_checkpoint(demo_home, "normal", tmp_path)
    result = invoke("evaluate", path, "-a", "pgd-5", "--linf", "0.1", "--l2", "none", "-n", 40, "--no-spatial",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert evaluation_record(path)["robust_attack"] == "pgd-5"
    shutil.copy2(demo_checkpoint(demo_home, "pgd"), path)  # "retrained": other weights, same file
    with pytest.raises(FilterDBError, match="earlier weights"):
        load_evaluation(path)
    with pytest.raises(FilterDBError, match="earlier weights"):
        load_perturbation_maps(path)
    with pytest.warns(UserWarning, match="earlier weights"):
        assert evaluation_record(path) == {}
    db_path = tmp_path / "db"
    with pytest.warns(UserWarning, match="evaluation results ignored"):
        result = invoke("add", path, "--db", db_path)
    assert result.exit_code == 0, result.output
    with open_database(db_path) as db:
        (row,) = db.models.to_dict("records")
    training = load_checkpoint(path).metrics  # the new weights' own training-time metrics
    assert row["evaluation_json"] == "" and row["robust_acc"] == pytest.approx(training["robust_acc"])
    assert row["robust_attack"] == training["robust_attack"] == "pgd-10"
    # evaluating again makes the results current
    result = invoke("evaluate", path, "-a", "pgd-5", "--linf", "0.1", "--l2", "none", "-n", 40, "--no-spatial",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert load_evaluation(path)["checkpoint_sha256"] == row["weights_sha256"]


# ---------------------------------------------------------------------------- bad input


def _without_model_string(path: Path) -> Path:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    del payload["model_string"]
    bad = path.with_name("nostring.pt")
    torch.save(payload, bad)
    return bad


@pytest.mark.parametrize("args,expected", [
    (["--linf", "8"], "Linf eps 8 is out of range"),
    (["--linf", "0"], "Linf eps 0 is out of range"),
    (["--linf", "-1/255"], "invalid eps '-1/255'"),
    (["--l2", "20"], "L2 eps 20 is out of range for (1, 8, 8) inputs"),
    (["--attacks", "pgd,fgsm2"], "unknown attack 'fgsm2'"),
    (["--attacks", "autoattack:apgd-ce+apgd-xx"], "unknown AutoAttack attack apgd-xx"),
    (["--headline", "Linf:0.2"], "headline Linf:0.2 is not among the evaluated budgets"),
    (["--attacks", "none", "--no-spatial"], "nothing to evaluate"),
    ([], "without a model string"),
])
def test_bad_input_is_a_one_line_error(demo_home, tmp_path, args, expected):
    path = copy_checkpoint(demo_home, "normal", tmp_path)
    if not args:
        path = _without_model_string(path)
    result = invoke("evaluate", path, "-n", 20, "--no-progress", *args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    if not args:
        assert str(path) in lines[0]
    assert not list(tmp_path.rglob("*.eval.*"))
