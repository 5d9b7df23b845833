"""Which models form a group, and which of their layers a comparison looks at.

Group expressions select models by model-table columns, conditions joined by ``,`` (AND):
``robust`` (training = robust), ``normal`` (training = normal), ``COLUMN=VALUE`` for any
column of :data:`filterdb.schema.MODEL_COLUMNS` (``arch`` is short for ``architecture``),
``COLUMN=V1|V2`` for any of several values. String values match case-insensitively, and a
value with a glob character (``*``, ``?``, ``[``) is a glob: ``name=cifar10/*``. A bare
glob is a glob on the name: ``*resnet*`` is ``name=*resnet*``. This one grammar selects
models everywhere: the groups of ``compare`` and ``--select`` of info, metrics, export,
show and pairs (:func:`select_models`).

Layer selectors: ``first``, ``last``, ``all``, an INDEX into the reached convolutions of
each network (negative counts from the end) among the layers given (so, after a kernel
filter, ``first`` is the first 3x3 convolution), a ``LO-HI`` range of conv_depth_norm
(closed), or ``deciles``: the first layer on its own as "0", then right-closed deciles of
conv_depth_norm, (0, 0.1], ..., (0.9, 1].
"""
from __future__ import annotations

import fnmatch
import math
import re

import numpy as np
import pandas as pd

from filterdb.errors import FilterDBError
from filterdb.schema import MODEL_COLUMNS

KEYWORDS = {"robust": ("training", "robust"), "normal": ("training", "normal")}
ALIASES = {"arch": "architecture"}
LAYER_SELECTORS = ("first", "last", "all", "INDEX", "LO-HI", "deciles")
_KINDS = {c.name: c.kind for c in MODEL_COLUMNS}
_RANGE = re.compile(r"^(\d*\.?\d+)-(\d*\.?\d+)$")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def parse_group(expression: str) -> list[tuple[str, str]]:
    """``"robust,dataset=cifar10"`` -> ``[("training", "robust"), ("dataset", "cifar10")]``."""
    conditions = []
    for term in (t.strip() for t in expression.split(",")):
        if not term:
            raise FilterDBError(f"empty condition in group {expression!r}; join conditions with ',' "
                                "as in 'robust,dataset=cifar10'")
        if term.lower() in KEYWORDS:
            conditions.append(KEYWORDS[term.lower()])
            continue
        if "=" not in term and _is_glob(term):
            conditions.append(("name", term))
            continue
        if "=" not in term:
            raise FilterDBError(f"group condition {term!r} is neither a keyword ({', '.join(KEYWORDS)}), COLUMN=VALUE "
                                "nor a name glob (e.g. '*resnet*'); "
                                f"columns: {', '.join(valid_columns())}")
        column, value = (s.strip() for s in term.split("=", 1))
        column = ALIASES.get(column.lower(), column.lower())
        if column not in _KINDS:
            raise FilterDBError(f"unknown model column {column!r} in group {expression!r}; "
                                f"valid: {', '.join(valid_columns())}")
        conditions.append((column, value))
    return conditions


def _is_glob(value: str) -> bool:
    return any(ch in value for ch in "*?[")


def valid_columns() -> list[str]:
    return [c.name for c in MODEL_COLUMNS] + [f"{alias} (= {name})" for alias, name in ALIASES.items()]


def _matches(series: pd.Series, column: str, value: str) -> pd.Series:
    if "|" in value:
        mask = pd.Series(False, index=series.index)
        for alternative in value.split("|"):
            mask |= _matches(series, column, alternative.strip())
        return mask
    kind = _KINDS[column]
    if kind == "str":
        if _is_glob(value):
            pattern = value.lower()
            return series.astype(str).str.lower().map(lambda v: fnmatch.fnmatchcase(v, pattern)).astype(bool)
        return series.astype(str).str.lower() == value.lower()
    if kind == "bool":
        if value.lower() not in _TRUE | _FALSE:
            raise FilterDBError(f"{column} is true or false, not {value!r}")
        return series.astype(bool) == (value.lower() in _TRUE)
    try:
        number = float(value)
    except ValueError:
        raise FilterDBError(f"{column} is a number, not {value!r}") from None
    return np.isclose(series.astype(float), number, rtol=1e-9, atol=0) | (math.isnan(number) & series.isna())


def _choices(series: pd.Series) -> str:
    values = sorted({str(v) for v in series})
    return ", ".join(values) if values else "(no models)"


def select_models(models: pd.DataFrame, expression: str) -> pd.DataFrame:
    """The rows of ``models`` that satisfy every condition of ``expression``.

    Raises FilterDBError for a value that no model has (listing the values present among
    the models the earlier conditions kept) and for an empty selection.
    """
    selected = models
    kept = []
    for column, value in parse_group(expression):
        mask = _matches(selected[column], column, value)
        if not mask.any():
            among = f" among models with {', '.join(kept)}" if kept else ""
            raise FilterDBError(f"group {expression!r} selects no models: no {column}={value}{among}; "
                                f"{column} values there: {_choices(selected[column])}")
        selected = selected[mask]
        kept.append(f"{column}={value}")
    return selected


# ---------------------------------------------------------------------------- layers

def _reached(layers: pd.DataFrame) -> pd.DataFrame:
    return layers[layers["reached"].astype(bool) & (layers["conv_depth"] >= 0)]


def select_layers(layers: pd.DataFrame, selector: str | int) -> pd.DataFrame:
    """The selected rows of ``layers`` with a ``layers`` column naming the layer group of each.

    Indices and ``first``/``last`` count the reached convolutions of each network (each
    ensemble member on its own); ``all`` keeps unreached layers too.
    """
    selector = str(selector).strip().lower()
    reached = _reached(layers)
    # position among the given reached convolutions (= conv_depth when no kernel was filtered out)
    position = reached.groupby(["model_id", "member"])["conv_depth"].rank(method="dense").astype(int) - 1
    depth_count = position.groupby([reached["model_id"], reached["member"]]).transform("max") + 1
    if selector == "all":
        return layers.assign(layers="all")
    if selector == "first":
        return reached[position == 0].assign(layers="first")
    if selector == "last":
        return reached[position == depth_count - 1].assign(layers="last")
    if selector == "deciles":
        return reached.assign(layers=decile_labels(reached["conv_depth"], reached["conv_depth_norm"]))
    if re.fullmatch(r"-?\d+", selector):
        index = int(selector)
        target = index if index >= 0 else depth_count + index
        return reached[position == target].assign(layers=selector)
    match = _RANGE.match(selector)
    if match:
        lo, hi = float(match.group(1)), float(match.group(2))
        if not 0 <= lo <= hi <= 1:
            raise FilterDBError(f"layer range {selector!r} must satisfy 0 <= LO <= HI <= 1 (conv_depth_norm)")
        norm = reached["conv_depth_norm"]
        return reached[(norm >= lo) & (norm <= hi)].assign(layers=f"[{lo:g}, {hi:g}]")
    raise FilterDBError(f"unknown layer selector {selector!r}; choose one of first, last, all, deciles, "
                        "an index such as 0 or -1, or a conv_depth_norm range such as 0.2-0.5")


DECILE_LABELS = ("0",) + tuple(f"({i / 10:g}, {(i + 1) / 10:g}]" for i in range(10))


def decile_labels(conv_depth: pd.Series, conv_depth_norm: pd.Series) -> pd.Categorical:
    """"0" for the first layer, else the right-closed decile of conv_depth_norm it falls in."""
    norm = np.nan_to_num(conv_depth_norm.to_numpy(dtype=np.float64))  # NaN: a network with one conv
    # right-closed: 0.1 belongs to (0, 0.1]; the rounding guards 0.3 = 3/10 against 0.30000000000000004
    bins = np.clip(np.ceil(np.round(norm * 10, 9)).astype(int) - 1, 0, 9)
    labels = np.where(conv_depth.to_numpy() == 0, "0", np.array(DECILE_LABELS[1:], dtype=object)[bins])
    return pd.Categorical(labels, categories=DECILE_LABELS, ordered=True)


# ---------------------------------------------------------------------------- one model

def find_model(models: pd.DataFrame, query: str) -> str:
    """The model_id of the one model whose id, key or name is ``query`` (exactly, else ignoring case),
    or that the group expression ``query`` selects (``"robust,*wrn*"``: it must select exactly one).

    No match, or several: a FilterDBError listing the nearest names (difflib, then substrings).
    """
    for column in ("model_id", "key", "name"):
        for exact in (True, False):
            values = models[column].astype(str)
            hits = models.index[values == query] if exact else models.index[values.str.lower() == query.lower()]
            if len(hits) == 1:
                return str(hits[0])
            if len(hits) > 1:
                shown = ", ".join(f"{h} ({models.loc[h, 'key']})" for h in hits[:10])
                raise FilterDBError(f"{query!r} names {len(hits)} models: {shown}; give a model id or key")
    if "=" in query or "," in query or _is_glob(query) or query.lower() in KEYWORDS:
        chosen = select_models(models, query)
        if len(chosen) == 1:
            return str(chosen.index[0])
        shown = ", ".join(map(str, chosen["name"][:10])) + (" ..." if len(chosen) > 10 else "")
        raise FilterDBError(f"{query!r} selects {len(chosen)} models ({shown}); narrow it to one")
    import difflib

    names = list(models["name"].astype(str))
    near = difflib.get_close_matches(query, names, n=5, cutoff=0.5)
    near += [n for n in names if query.lower() in n.lower() and n not in near][:5 - len(near)]
    hint = f"near matches: {', '.join(near)}" if near else "'filterdb info' lists the models"
    raise FilterDBError(f"no model {query!r} (by id, key or name) in the database; {hint}")
