"""Stable model ids: derived from a model's identity (source + name), never from build order."""
from __future__ import annotations

import hashlib
import re

_ID_LEN = 12


def model_key(source: str, name: str) -> str:
    """The human-readable identity of a model, e.g. ``robustbench:cifar10/Linf/Standard``."""
    if not source or not name:
        raise ValueError("a model needs a non-empty source and name")
    return f"{source}:{name}"


def model_id(source: str, name: str) -> str:
    """A 12-hex-digit id: the start of sha1(model_key). The same model always gets the same id."""
    return hashlib.sha1(model_key(source, name).encode("utf-8")).hexdigest()[:_ID_LEN]


def is_model_id(text: str) -> bool:
    return re.fullmatch(rf"[0-9a-f]{{{_ID_LEN}}}", text) is not None
