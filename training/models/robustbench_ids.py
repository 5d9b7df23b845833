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


def build(model_id: str, num_classes: int | None, in_chans: int | None) -> nn.Module:
    dataset = model_id.split("/")[0]
    if num_classes not in (None, NUM_CLASSES[dataset]) or in_chans not in (None, 3):
        raise ValueError(f"robustbench:{model_id} has {NUM_CLASSES[dataset]} classes and 3 input channels; "
                         f"got num_classes={num_classes}, in_chans={in_chans}")
    return _zoo()[model_id]["model"]()
