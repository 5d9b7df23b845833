"""Every RobustBench model id, built by RobustBench's own constructor with random weights.

An id is ``<dataset>/<threat model>/<name>`` as in RobustBench's model zoo, e.g.
``cifar10/Linf/Standard``; robustbench is imported lazily through ``filterdb.compat``.
"""
from __future__ import annotations

from functools import lru_cache

from torch import nn

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


@lru_cache(maxsize=1)
def _zoo() -> dict[str, dict]:
    """id -> the model zoo's entry ({'model': constructor, 'gdrive_id': ...})."""
    from filterdb.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo.models import model_dicts

    return {f"{dataset.value}/{threat.value}/{name}": entry
            for dataset, threats in model_dicts.items()
            for threat, models in threats.items()
            for name, entry in models.items()}


def list_ids() -> list[str]:
    return list(_zoo())


def check(model_id: str) -> str | None:
    """None if ``model_id`` is a RobustBench id, else an error message."""
    if model_id in _zoo():
        return None
    parts = model_id.split("/")
    if len(parts) != 3:
        return f"a RobustBench id is <dataset>/<threat model>/<name>, got {model_id!r}"
    prefix = "/".join(parts[:2]) + "/"
    known = sorted(i for i in _zoo() if i.startswith(prefix))
    if not known:
        return f"no RobustBench models for {prefix[:-1]!r}; datasets/threat models: {', '.join(sorted({i.rsplit('/', 1)[0] for i in _zoo()}))}"
    return f"unknown RobustBench model {model_id!r}; {prefix[:-1]} has: {', '.join(n.rsplit('/', 1)[1] for n in known)}"


def downloads_weights(model_id: str) -> bool:
    """Whether the id's constructor fetches pretrained weights (a ``pretrained=True`` call),
    which no offline machine can build. Read from the constructor's code, without calling it."""
    code = getattr(_zoo()[model_id]["model"], "__code__", None)
    return code is not None and ("pretrained",) in code.co_consts and any(c is True for c in code.co_consts)


def build(model_id: str) -> nn.Module:
    return _zoo()[model_id]["model"]()
