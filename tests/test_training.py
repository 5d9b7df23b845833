"""Training on the bundled digits: every method learns, PGD-AT buys robustness, resume is exact,
CuSP grows its budgets at the milestones, matched pairs share initial weights and data order."""
from __future__ import annotations

import math

import pytest
import torch

from filterdb.errors import FilterDBError
from filterdb.training import create_model
from filterdb.training.attacks import AttackConfig, robust_accuracy
from filterdb.training.checkpoint import load_checkpoint
from filterdb.training.curriculum import Budgets, CuspCurriculum, random_spatial
from filterdb.training.data import load_dataset
from filterdb.training.methods import METHODS, effective_attack
from filterdb.training.pair_training import check_pair, pair_configs, train_pair
from filterdb.training.trainer import TrainConfig, Trainer, initial_weights, state_sha256

MODEL = "cnn4-16"
ATTACK = AttackConfig(norm="Linf", eps=0.1, steps=2, step_size=0.05)
FAST = dict(batch_size=64, lr=0.05, eval_samples=64)


@pytest.fixture(autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_lowers_its_loss(tmp_path, method):
    # 256 evaluation samples: on 64, one image is 1.6 points, and MART sat right at the bound.
    config = TrainConfig(MODEL, "digits", method=method, attack=ATTACK, epochs=4, milestones=(1, 2), gamma=1.0,
                         cusp_rotation=15, **{**FAST, "eval_samples": 256})
    result = Trainer(config, tmp_path).fit()
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.metrics["clean_acc"] > 30  # 3x chance on 10 classes; MART's early epochs trade accuracy away


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair")
    torch.set_num_threads(2)
    attack = AttackConfig(norm="Linf", eps=0.1, steps=5, step_size=0.025)
    normal, robust = train_pair(MODEL, "digits", out, seed=3, epochs=6, robust_method="pgd", attack=attack,
                                batch_size=64, lr=0.05)
    return load_checkpoint(normal), load_checkpoint(robust)


def test_pgd_trained_model_beats_its_normal_twin_under_pgd(pair):
    normal, robust = pair
    assert normal.method == "standard" and robust.method == "pgd"
    assert normal.metrics["robust_attack"] == robust.metrics["robust_attack"] == "pgd-10"
    assert normal.metrics["eps"] == robust.metrics["eps"] == pytest.approx(0.1)
    assert robust.metrics["robust_acc"] > normal.metrics["robust_acc"] + 10
    assert normal.metrics["clean_acc"] > 85 and robust.metrics["clean_acc"] > 70
    # the recorded numbers are what an independent measurement gives (PGD-20 with 2 restarts, a stronger attack)
    test = torch.utils.data.DataLoader(load_dataset("digits", "test"), batch_size=360)
    strong = AttackConfig(norm="Linf", eps=0.1, steps=20, restarts=2)
    for ckpt in pair:
        clean, robust_acc = robust_accuracy(ckpt.build_model(), test, strong)
        assert clean == pytest.approx(ckpt.metrics["clean_acc"])
        assert robust_acc <= ckpt.metrics["robust_acc"] + 1.0
        assert robust_acc >= ckpt.metrics["robust_acc"] - 10.0


def test_matched_pair_shares_initial_weights_and_data_order(pair, tmp_path):
    normal, robust = pair
    config = TrainConfig.from_dict(robust.config)
    init = initial_weights(config)
    assert normal.pairing["init_sha256"] == robust.pairing["init_sha256"] == state_sha256(init)
    assert normal.pairing["seed"] == robust.pairing["seed"] == 3
    assert (normal.pairing["role"], robust.pairing["role"]) == ("normal", "robust")
    assert [h["order_sha256"] for h in normal.history] == [h["order_sha256"] for h in robust.history]
    assert len({h["order_sha256"] for h in normal.history}) == 6  # reshuffled every epoch
    assert normal.selection == robust.selection == "last"
    check_pair(normal.path, robust.path)

    # the same, observed directly: identical initial weights and batches in both trainers
    normal_cfg, robust_cfg = pair_configs(config)
    trainers = [Trainer(cfg, tmp_path / cfg.method, init_state=init) for cfg in (normal_cfg, robust_cfg)]
    a, b = (dict(t.model.state_dict()) for t in trainers)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for epoch in (0, 1):
        for t in trainers:
            t.sampler.set_epoch(epoch)
        batches = [[y.tolist() for _x, y in t.train_loader] for t in trainers]
        assert batches[0] == batches[1]

    # and a different seed is a different initialisation and order
    other = Trainer(TrainConfig.from_dict({**normal.config, "seed": 4}), tmp_path / "other")
    assert state_sha256(other.model.state_dict()) != normal.pairing["init_sha256"]
    other.sampler.set_epoch(0)
    assert list(other.sampler) != list(trainers[0].sampler)


def test_check_pair_rejects_unmatched_checkpoints(pair, tmp_path):
    normal, _robust = pair
    config = TrainConfig(MODEL, "digits", method="pgd", attack=ATTACK, epochs=1, seed=5, **FAST)
    stranger = Trainer(config, tmp_path).fit().checkpoint
    with pytest.raises(FilterDBError, match="not a matched pair.*init_sha256"):
        check_pair(normal.path, stranger)


@pytest.mark.parametrize("method", ["pgd", "cusp"])
def test_resume_from_a_mid_run_checkpoint_reproduces_the_run(tmp_path, method):
    config = TrainConfig(MODEL, "digits", method=method, attack=ATTACK, epochs=3, milestones=(1, 2), gamma=0.5,
                         cusp_rotation=15, seed=7, **FAST)
    full = Trainer(config, tmp_path / "full").fit()

    assert Trainer(config, tmp_path / "cut").fit(stop_after=2) is None
    mid = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert mid.epoch == 2 and not mid.selected and mid.metrics == {}
    resumed = Trainer.resume(tmp_path / "cut" / "last.pt").fit()

    assert resumed.history[2]["train_loss"] == full.history[2]["train_loss"]  # bit for bit
    assert [h["order_sha256"] for h in resumed.history] == [h["order_sha256"] for h in full.history]
    a, b = load_checkpoint(full.checkpoint).state_dict, load_checkpoint(resumed.checkpoint).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["clean_acc"] == full.metrics["clean_acc"]


def test_cusp_budgets_change_exactly_at_the_milestones(tmp_path):
    curriculum = CuspCurriculum(Budgets(rotation=30.0, translation=0.15, eps=0.3), milestones=(2, 4))
    eps = [curriculum.budgets(e).eps for e in range(6)]
    assert eps == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])
    assert [curriculum.budgets(e).rotation for e in (1, 2, 5)] == pytest.approx([10.0, 20.0, 30.0])

    config = TrainConfig("cnn2-8", "digits", method="cusp", attack=AttackConfig(eps=0.3, steps=1), epochs=6,
                         milestones=(2, 4), cusp_rotation=30, cusp_translation=0.15, **FAST)
    history = Trainer(config, tmp_path).fit().history
    budgets = [h["budgets"] for h in history]
    lrs = [h["lr"] for h in history]
    changes = [e for e in range(1, 6) if budgets[e] != budgets[e - 1]]
    lr_changes = [e for e in range(1, 6) if not math.isclose(lrs[e], lrs[e - 1])]
    assert changes == lr_changes == [2, 4]
    assert [b["eps"] for b in budgets] == pytest.approx(eps)
    assert budgets[-1] == {"rotation": 30.0, "translation": 0.15, "eps": pytest.approx(0.3)}


def test_random_spatial_stays_in_the_unit_box_and_is_identity_at_zero():
    x = torch.rand(4, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_spatial(x, 0, 0, g), x)
    moved = random_spatial(x, 30, 0.2, g)
    assert moved.shape == x.shape and moved.min() >= 0 and moved.max() <= 1 and not torch.allclose(moved, x)


def test_best_robust_selection_keeps_the_best_validation_epoch(tmp_path):
    config = TrainConfig(MODEL, "digits", method="pgd", attack=ATTACK, epochs=3, selection="best-robust", **FAST)
    result = Trainer(config, tmp_path).fit()
    assert result.checkpoint == tmp_path / "best.pt"
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best.selected and not last.selected
    val = [h["val_robust_acc"] for h in result.history]
    assert best.epoch == 1 + max(range(3), key=lambda i: (val[i], -i))  # the first epoch with the best score
    assert best.metrics["split"] == "test" and 0 <= best.metrics["robust_acc"] <= best.metrics["clean_acc"]


def test_mixed_precision_and_channels_last_run_on_cpu(tmp_path):
    config = TrainConfig(MODEL, "digits", method="pgd", attack=ATTACK, epochs=3, amp="bf16", channels_last=True,
                         schedule="constant", **FAST)
    result = Trainer(config, tmp_path).fit()
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    state = load_checkpoint(result.checkpoint).state_dict
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_fp16_uses_a_grad_scaler(tmp_path):
    config = TrainConfig("cnn2-8", "digits", epochs=1, amp="fp16", **FAST)
    trainer = Trainer(config, tmp_path)
    assert trainer.scaler.is_enabled()
    trainer.fit()
    assert load_checkpoint(tmp_path / "last.pt").payload["train_state"]["scaler"]["scale"] > 0


def test_effective_attacks_of_the_methods():
    base = AttackConfig(norm="L2", eps=0.5, steps=7, random_start=False)
    assert effective_attack("standard", base) is None
    fgsm = effective_attack("fgsm", base)
    assert fgsm.steps == 1 and fgsm.alpha == pytest.approx(0.5)
    assert effective_attack("fgsm", AttackConfig(eps=0.1)).alpha == pytest.approx(0.125)  # Wong et al.: 1.25 eps
    assert effective_attack("trades", base).random_start  # KL has no gradient at the clean image
    assert effective_attack("pgd", base).alpha == pytest.approx(2.5 * 0.5 / 7)


def test_bad_configurations_are_refused():
    with pytest.raises(FilterDBError, match="unknown training method"):
        TrainConfig(MODEL, method="free")
    with pytest.raises(FilterDBError, match="multistep"):
        TrainConfig(MODEL, method="cusp", schedule="cosine")
    with pytest.raises(FilterDBError, match="validation split"):
        TrainConfig(MODEL, selection="best-clean", val_fraction=0.0)
    with pytest.raises(FilterDBError, match="unknown dataset"):
        Trainer(TrainConfig(MODEL, dataset="mnist"), "/nonexistent")


def test_initial_weights_follow_the_seed():
    a = initial_weights(TrainConfig(MODEL, seed=1))
    torch.manual_seed(1)
    b = create_model(MODEL, num_classes=10, in_chans=1).state_dict()
    assert state_sha256(a) == state_sha256(b)
    assert state_sha256(a) != state_sha256(initial_weights(TrainConfig(MODEL, seed=2)))
