"""The training loop: one model, one method, checkpoints every epoch, resumable.

``Trainer(config, out_dir).fit()`` trains ``config.model_string`` on ``config.dataset``
with ``config.method`` and writes into ``out_dir``:

    last.pt   after every epoch: the resume point (and the result when selection is "last")
    best.pt   with selection "best-clean" / "best-robust": the epoch with the best accuracy on
              a held-out validation split (clean, or under ``eval_attack``)

At the end the selected checkpoint is evaluated on the test split (clean accuracy and
robust accuracy under ``eval_attack``) and its metrics are written into it.

Reproducibility: the weights are initialised right after seeding with ``seed`` (or
given, for matched pairs); the data order is ``randperm`` seeded by
``data_order_seed(seed) + epoch`` (``DistributedSampler``) and the batch augmentation draws from a generator seeded by
``seed`` and the epoch, so that both are independent of everything else the run does.
The attacks' random starts use the global generators, whose states the checkpoint keeps.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import random
import time
from collections.abc import Sized
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import cast, overload

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from filterdb.errors import FilterDBError
from filterdb.training import ddp
from filterdb.training.attacks import AttackConfig, eval_mode, pgd
from filterdb.training.checkpoint import FORMAT, FORMAT_VERSION, SELECTIONS, load_checkpoint, save_atomic, versions
from filterdb.training.curriculum import Budgets, CuspCurriculum, random_spatial
from filterdb.training.data import augment_batch, dataset_info, load_dataset, to_float, train_val_split
from filterdb.training.methods import DEFAULT_BETA, check_method, effective_attack, method_loss
from filterdb.training.precision import AMP_MODES, autocast_dtype

SCHEDULES = ("multistep", "cosine", "constant")

# The attack that measures robust accuracy when none is given, per dataset.
DEFAULT_EVAL_ATTACK = {
    "digits": AttackConfig(norm="Linf", eps=0.1, steps=10, step_size=0.025),
    "imagenet": AttackConfig(norm="Linf", eps=4 / 255, steps=10, step_size=1 / 255),
    "imagefolder": AttackConfig(norm="Linf", eps=4 / 255, steps=10, step_size=1 / 255),
}
CIFAR_ATTACK = AttackConfig(norm="Linf", eps=8 / 255, steps=10, step_size=2 / 255)


def default_attack(dataset: str) -> AttackConfig:
    return DEFAULT_EVAL_ATTACK.get(dataset, CIFAR_ATTACK)


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``attack`` / ``eval_attack`` default per dataset."""
    model_string: str
    dataset: str = "digits"
    method: str = "standard"
    attack: AttackConfig | None = None  # training attack of the robust methods (CuSP: the final one)
    eval_attack: AttackConfig | None = None  # robust accuracy on the val / test split
    beta: float | None = None  # TRADES / MART trade-off (default 6)
    cusp_rotation: float = 30.0  # CuSP final rotation budget, degrees
    cusp_translation: float = 0.1  # CuSP final translation budget, fraction of the image side
    epochs: int = 10
    batch_size: int = 128  # global batch size, split over the processes
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: tuple[int, ...] | None = None  # 0-based epochs of the LR drops; default 50% and 75%
    gamma: float = 0.1
    seed: int = 0
    selection: str = "last"
    val_fraction: float | None = None  # default 0.1 when selection is best-*, else 0
    eval_samples: int | None = None  # evaluate on the first N test images only
    data_dir: str | None = None
    download: bool = False
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    device: str | None = None
    eval_batch_size: int = 256

    def __post_init__(self):
        check_method(self.method)
        self.dataset = self.dataset.lower()
        for name, value, allowed in (("selection", self.selection, SELECTIONS), ("schedule", self.schedule, SCHEDULES),
                                     ("amp", self.amp, AMP_MODES)):
            if value not in allowed:
                raise FilterDBError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise FilterDBError(f"epochs and batch size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if isinstance(self.attack, dict):
            self.attack = AttackConfig.from_dict(self.attack)
        if isinstance(self.eval_attack, dict):
            self.eval_attack = AttackConfig.from_dict(self.eval_attack)
        base = self.attack or default_attack(self.dataset)
        self.attack = effective_attack(self.method, base)
        if self.eval_attack is None:  # PGD-10 at the training attack's norm and budget, Madry's step size
            self.eval_attack = AttackConfig(norm=base.norm, eps=base.eps, steps=10, random_start=True)
        if self.milestones is None:
            self.milestones = tuple(sorted({int(self.epochs * 0.5), int(self.epochs * 0.75)} - {0}))
        self.milestones = tuple(int(m) for m in self.milestones)
        if self.method == "cusp" and self.schedule != "multistep":
            raise FilterDBError("CuSP grows its budgets at the learning-rate milestones: use --schedule multistep")
        if self.val_fraction is None:
            self.val_fraction = 0.0 if self.selection == "last" else 0.1
        if self.selection != "last" and self.val_fraction <= 0:
            raise FilterDBError(f"selection {self.selection!r} needs a validation split: set val_fraction > 0")
        if self.beta is None and self.method in DEFAULT_BETA:
            self.beta = DEFAULT_BETA[self.method]

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["attack"] = self.attack.to_dict() if self.attack else None
        d["eval_attack"] = self.eval_attack.to_dict() if self.eval_attack else None  # set by __post_init__
        d["milestones"] = list(self.milestones or ())
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["milestones"] = tuple(d.get("milestones") or ())
        return cls(**d)


@dataclass
class TrainResult:
    checkpoint: Path  # the selected checkpoint
    last: Path
    metrics: dict
    history: list = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_order_seed(seed: int) -> int:
    """The sampler's seed for run seed ``seed``. A hash, not ``seed`` itself: the sampler draws
    with ``seed + epoch``, so seed 3 at epoch 1 would otherwise repeat seed 4 at epoch 0."""
    return int.from_bytes(hashlib.sha256(f"data-order:{seed}".encode()).digest()[:4], "little") >> 1


def state_sha256(state_dict: dict) -> str:
    """A digest of a state dict's names and values: equal for equal weights."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def initial_weights(config: TrainConfig) -> dict:
    """The initial state dict of ``config``'s model: built right after ``torch.manual_seed(seed)``."""
    from filterdb.training.registry import create_model

    info = dataset_info(config.dataset, config.data_dir)
    torch.manual_seed(config.seed)
    try:
        model = create_model(config.model_string, num_classes=info.num_classes, in_chans=info.in_chans)
    except ValueError as exc:
        raise FilterDBError(str(exc)) from None
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rng_state() -> dict:
    mt, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    state: dict = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [mt, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    mt, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((mt, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _digest_order(indices: list[int]) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


class Trainer:
    """Train one model; see the module docstring. ``init_state`` fixes the initial weights,
    ``pairing`` is recorded in the checkpoints (matched pairs)."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, init_state: dict | None = None,
                 pairing: dict | None = None, progress: bool = False):
        from filterdb.training.registry import check_input_size, create_model

        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.ctx = ddp.setup(config.device)
        self.device = self.ctx.device
        self.info = dataset_info(config.dataset, config.data_dir)
        seed_everything(config.seed)
        check_input_size(config.model_string, self.info.input_shape)  # unpadded models need large inputs

        if init_state is None:
            init_state = initial_weights(config)
        try:
            self.model = create_model(config.model_string, num_classes=self.info.num_classes, in_chans=self.info.in_chans)
        except ValueError as exc:
            raise FilterDBError(str(exc)) from None
        self.model.load_state_dict(init_state)
        self.pairing = {"seed": config.seed, "data_seed": config.seed, "init_sha256": state_sha256(init_state),
                        **(pairing or {})}
        self.model.to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)

        self.train_forward: nn.Module = self.model
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_forward = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.attack_forward: nn.Module = self.model
        if config.compile:
            self.train_forward = cast(nn.Module, torch.compile(self.train_forward))  # an OptimizedModule
            self.attack_forward = cast(nn.Module, torch.compile(self.model))

        self._build_data()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                         weight_decay=config.weight_decay, nesterov=config.momentum > 0)
        self.scheduler = self._build_scheduler()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.curriculum = None
        if config.method == "cusp":
            assert config.attack is not None and config.milestones is not None  # TrainConfig.__post_init__ sets them
            self.curriculum = CuspCurriculum(Budgets(config.cusp_rotation, config.cusp_translation, config.attack.eps),
                                             tuple(config.milestones))
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []
        self.best_score = -math.inf

    # -- setup -------------------------------------------------------------------------------

    def _build_data(self) -> None:
        cfg = self.config
        train = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.download)
        self.test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.download)
        assert cfg.val_fraction is not None  # TrainConfig.__post_init__ sets it
        self.train_set, self.val_set = train_val_split(train, cfg.val_fraction, cfg.seed)
        if cfg.eval_samples is not None:
            self.test_set = Subset(self.test_set, range(min(cfg.eval_samples, len(cast(Sized, self.test_set)))))
        per_process = max(1, cfg.batch_size // self.ctx.world_size)
        self.sampler: DistributedSampler = DistributedSampler(self.train_set, num_replicas=self.ctx.world_size, rank=self.ctx.rank,
                                          shuffle=True, seed=data_order_seed(cfg.seed))
        self.train_loader = self._loader(self.train_set, per_process, self.sampler)

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None) -> DataLoader:
        cuda = self.device.type == "cuda"
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=self.config.workers,
                          pin_memory=cuda, persistent_workers=self.config.workers > 0, drop_last=False)

    def _build_scheduler(self):
        cfg = self.config
        if cfg.schedule == "multistep":
            return torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
        if cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _epoch: 1.0)

    def _autocast(self):
        if self.config.amp == "none":
            return contextlib.nullcontext()
        dtype = autocast_dtype(self.config.amp)
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_float(x.to(self.device, non_blocking=True))
        return x, y.to(self.device, non_blocking=True)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    # -- one epoch ---------------------------------------------------------------------------

    def budgets(self, epoch: int) -> Budgets:
        """This epoch's rotation, translation and eps (the curriculum's for CuSP)."""
        if self.curriculum is not None:
            return self.curriculum.budgets(epoch)
        return Budgets(0.0, 0.0, self.config.attack.eps if self.config.attack else 0.0)

    def train_epoch(self, epoch: int, bar=None) -> dict:
        cfg = self.config
        self.sampler.set_epoch(epoch)
        order = list(iter(self.sampler))
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        budgets = self.budgets(epoch)
        attack = cfg.attack.with_eps(budgets.eps) if cfg.attack else None
        self.train_forward.train()
        loss_sum = correct = seen = 0.0
        started = time.perf_counter()
        task = bar.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(self.train_loader), status="",
                            unit="batches", detail=True) if bar else None
        for x, y in self.train_loader:
            x, y = self._to_device(x, y)
            x = augment_batch(x, self.info.augment, generator)
            if self.curriculum is not None:
                x = random_spatial(x, budgets.rotation, budgets.translation, generator)
            x = self._layout(x)
            with self._autocast():
                loss, logits = method_loss(cfg.method, self.train_forward, x, y, attack, cfg.beta, self.attack_forward)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += loss.detach().float().item() * len(y)
            correct += (logits.detach().argmax(1) == y).sum().item()
            seen += len(y)
            if bar:
                bar.update(task, advance=1, status=f"loss {loss_sum / seen:.4f}")
        if bar:
            bar.remove_task(task)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        loss_sum, correct, seen = ddp.all_reduce_sum([loss_sum, correct, seen], self.ctx)
        if not math.isfinite(loss_sum):
            raise FilterDBError(f"training diverged at epoch {epoch + 1} (loss {loss_sum}); lower --lr or use --amp bf16/none")
        record = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                  "budgets": budgets.to_dict(), "order_sha256": _digest_order(order),
                  "seconds": time.perf_counter() - started}
        if self.val_set is not None:
            record["val_clean_acc"], record["val_robust_acc"] = self.evaluate(self.val_set)
        return record

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, dataset: Dataset, attack: AttackConfig | None = None) -> tuple[float, float]:
        """(clean, robust) accuracy in percent on ``dataset``, shared between the processes."""
        attack = attack or self.config.eval_attack
        assert attack is not None  # TrainConfig.__post_init__ sets eval_attack
        shard = Subset(dataset, range(self.ctx.rank, len(cast(Sized, dataset)), self.ctx.world_size))
        correct = robust = total = 0
        with eval_mode(self.model):
            for x, y in self._loader(shard, self.config.eval_batch_size):
                x, y = self._to_device(x, y)
                x = self._layout(x)
                with self._autocast():
                    with torch.no_grad():
                        ok = self.attack_forward(x).argmax(1) == y
                    x_adv = pgd(self.attack_forward, x, y, attack)
                    with torch.no_grad():
                        ok_adv = ok & (self.attack_forward(x_adv).argmax(1) == y)
                correct += int(ok.sum().item())
                robust += int(ok_adv.sum().item())
                total += len(y)
        all_correct, all_robust, all_total = ddp.all_reduce_sum([correct, robust, total], self.ctx)
        return 100.0 * all_correct / max(all_total, 1), 100.0 * all_robust / max(all_total, 1)

    # -- checkpoints -------------------------------------------------------------------------

    def _payload(self, metrics: dict) -> dict:
        cfg = self.config
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model_string": cfg.model_string, "dataset": cfg.dataset, "num_classes": self.info.num_classes,
            "in_chans": self.info.in_chans, "input_shape": list(self.info.input_shape),
            "method": cfg.method, "attack": cfg.attack.to_dict() if cfg.attack else None,
            "method_params": {"beta": cfg.beta, **({"cusp": self.curriculum.state_dict()} if self.curriculum else {})},
            "selection": cfg.selection, "selected": False, "metrics": metrics, "versions": versions(), "epoch": self.epoch,
            "history": list(self.history), "pairing": dict(self.pairing), "config": cfg.to_dict(),
            "model_state": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "train_state": {
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": _rng_state(),
                "curriculum": self.curriculum.state_dict() if self.curriculum else None,
                "data_order": {"seed": cfg.seed, "epoch": self.epoch, "sampler": "DistributedSampler(data_order_seed(seed) + epoch)"},
                "best_score": self.best_score,
            },
        }

    def save(self, path: Path, metrics: dict | None = None) -> Path:
        return save_atomic(self._payload(metrics or {}), path)

    def load_state(self, path: str | Path) -> None:
        """Continue from a checkpoint written by a run of the same configuration."""
        ckpt = load_checkpoint(path)
        state = ckpt.payload.get("train_state")
        if state is None:
            raise FilterDBError(f"{path}: checkpoint holds weights only, not a training state; it cannot be resumed")
        if ckpt.model_string != self.config.model_string or ckpt.method != self.config.method:
            raise FilterDBError(f"{path}: trained {ckpt.model_string} with {ckpt.method}, not {self.config.model_string} "
                                f"with {self.config.method}; resume with the checkpoint's own configuration")
        self.model.load_state_dict(ckpt.state_dict)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if state.get("curriculum"):
            self.curriculum = CuspCurriculum.from_state_dict(state["curriculum"])
        self.epoch = int(ckpt.epoch)
        self.history = list(ckpt.history)
        self.pairing = dict(ckpt.pairing)
        self.best_score = float(state.get("best_score", -math.inf))
        _set_rng_state(state["rng"])

    @classmethod
    def resume(cls, path: str | Path, out_dir: str | Path | None = None, progress: bool = False, **overrides) -> Trainer:
        """A trainer that continues the run saved in ``path`` (its configuration, maybe with
        ``overrides`` such as device or workers that do not change the result)."""
        ckpt = load_checkpoint(path)
        if not ckpt.config:
            raise FilterDBError(f"{path}: checkpoint without a training configuration; it cannot be resumed")
        config = TrainConfig.from_dict({**ckpt.config, **overrides})
        trainer = cls(config, out_dir or Path(path).parent, init_state=ckpt.state_dict, progress=progress)
        trainer.load_state(path)
        return trainer

    # -- the run -----------------------------------------------------------------------------

    def _score(self, record: dict) -> float:
        return record["val_robust_acc"] if self.config.selection == "best-robust" else record["val_clean_acc"]

    @overload
    def fit(self, stop_after: None = None) -> TrainResult: ...
    @overload
    def fit(self, stop_after: int) -> TrainResult | None: ...

    def fit(self, stop_after: int | None = None) -> TrainResult | None:
        """Train up to ``config.epochs`` (or stop after epoch ``stop_after``, as if interrupted,
        returning None), then evaluate the selected checkpoint on the test split."""
        cfg = self.config
        last, best = self.out_dir / "last.pt", self.out_dir / "best.pt"
        bar_cm = self._progress_bar()
        with bar_cm as bar:
            epochs_task = bar.add_task(f"{cfg.model_string} {cfg.method}", total=cfg.epochs, completed=self.epoch,
                                       status="", unit="epochs") if bar else None
            while self.epoch < cfg.epochs:
                record = self.train_epoch(self.epoch, bar)
                self.epoch += 1
                self.history.append(record)
                improved = cfg.selection != "last" and self._score(record) > self.best_score
                if improved:
                    self.best_score = self._score(record)
                if self.ctx.is_main:
                    self.save(last)
                    if improved:
                        self.save(best)
                ddp.barrier(self.ctx)
                if bar:
                    bar.update(epochs_task, advance=1, status=f"loss {record['train_loss']:.4f} acc {record['train_acc']:.1f}%")
                if stop_after is not None and self.epoch >= stop_after and self.epoch < cfg.epochs:
                    return None
        selected = last if cfg.selection == "last" else best
        if selected != last:
            self.model.load_state_dict(load_checkpoint(best).state_dict)
        metrics = self.test_metrics()
        if self.ctx.is_main:
            payload = load_checkpoint(selected).payload
            payload["metrics"] = metrics
            payload["selected"] = True
            save_atomic(payload, selected)
        ddp.barrier(self.ctx)
        return TrainResult(checkpoint=selected, last=last, metrics=metrics, history=list(self.history))

    def test_metrics(self) -> dict:
        attack = self.config.eval_attack
        assert attack is not None  # TrainConfig.__post_init__ sets it
        clean, robust = self.evaluate(self.test_set, attack)
        return {"clean_acc": clean, "robust_acc": robust, "robust_attack": attack.name, "robust_attack_params": attack.to_dict(),
                "threat_model": attack.norm, "eps": attack.eps, "split": "test", "n_eval": len(cast(Sized, self.test_set)),
                "epoch": self.epoch}

    def _progress_bar(self):
        if not (self.progress and self.ctx.is_main):
            return contextlib.nullcontext(None)
        from filterdb.progress import progress_bar
        return progress_bar(unit="epochs")


def train(config: TrainConfig, out_dir: str | Path, progress: bool = False, resume: bool = False) -> TrainResult:
    """Train ``config`` into ``out_dir``; with ``resume`` continue from ``out_dir/last.pt`` if it exists."""
    last = Path(out_dir) / "last.pt"
    if resume and last.exists():
        trainer = Trainer.resume(last, out_dir, progress=progress)
    else:
        trainer = Trainer(config, out_dir, progress=progress)
    result = trainer.fit()
    assert result is not None  # fit stops early (None) only when given stop_after
    return result
