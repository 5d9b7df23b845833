"""Matched pairs in a model table: the twins, and the normal models a robust model can be compared with.

A *twin pair* is a normal and a robust model trained together (``filterdb train pair``, the
demo): same model string, seed, initial weights and data order, so that they differ only in
the training method. Their checkpoints record it, and the model table carries it: ``pair``
('<run>@<init[:8]>', the same value for both twins), ``pair_role`` ('normal' / 'robust') and
``seed``. The paired statistics group models by ``pair``; these functions say which models
form a pair.

Any other robust/normal combination is at best a *counterpart*: the same dataset and
architecture, other initial weights. ``ranked_pairs`` orders every combination by how well it
matches, twins first.

Pure functions of the model table (``FilterDB.models``: columns of ``filterdb.schema``).
"""
from __future__ import annotations

import pandas as pd

TWIN_COLUMNS = ["pair", "seed", "dataset", "architecture", "robust_id", "normal_id", "robust", "normal"]
RANK_COLUMNS = ["robust_id", "normal_id", "twin", "same_dataset", "same_architecture", "same_stem"]


def twin_pairs(models: pd.DataFrame) -> pd.DataFrame:
    """One row per robust model that has a twin (columns ``TWIN_COLUMNS``; ``robust`` and
    ``normal`` are the models' keys), in the order of the robust models' keys.

    The twin of a robust model is the one normal model with its ``pair`` value; a pair value
    with no normal model, or with several, names no twin.
    """
    if "pair" not in models.columns:
        return pd.DataFrame(columns=TWIN_COLUMNS)
    members = models[models["pair"].fillna("").astype(str) != ""]
    normal = members[members["pair_role"] == "normal"]
    normal = normal[normal.groupby("pair")["pair"].transform("size") == 1].set_index("pair")
    robust = members[(members["pair_role"] == "robust") & members["pair"].isin(normal.index)].sort_values("key")
    twin = normal.loc[robust["pair"]]
    return pd.DataFrame({
        "pair": robust["pair"].to_numpy(), "seed": robust["seed"].to_numpy(),
        "dataset": robust["dataset"].to_numpy(), "architecture": robust["architecture"].to_numpy(),
        "robust_id": robust["model_id"].to_numpy(), "normal_id": twin["model_id"].to_numpy(),
        "robust": robust["key"].to_numpy(), "normal": twin["key"].to_numpy(),
    }, columns=TWIN_COLUMNS)


def ranked_pairs(models: pd.DataFrame) -> pd.DataFrame:
    """Every (robust, normal) combination of the table, best match first (columns ``RANK_COLUMNS``).

    The order: twins, then the same dataset, then the same architecture (a known one), then
    names that differ only in their last part (``<run>/normal`` and ``<run>/pgd``, for tables
    without pair metadata), then robust and normal models in name order.
    """
    by_name = models.sort_values("name")
    robust = by_name[by_name["training"] == "robust"]
    normal = by_name[by_name["training"] == "normal"]
    if robust.empty or normal.empty:
        return pd.DataFrame(columns=RANK_COLUMNS)
    combos = robust.reset_index(drop=True).merge(normal.reset_index(drop=True), how="cross",
                                                 suffixes=("_robust", "_normal"))
    twins = twin_pairs(models)
    twin_keys = set(zip(twins["robust_id"], twins["normal_id"]))
    stem = lambda names: names.str.rsplit("/", n=1).str[0]  # noqa: E731
    ranked = pd.DataFrame({
        "robust_id": combos["model_id_robust"], "normal_id": combos["model_id_normal"],
        "twin": [key in twin_keys for key in zip(combos["model_id_robust"], combos["model_id_normal"])],
        "same_dataset": combos["dataset_robust"] == combos["dataset_normal"],
        "same_architecture": (combos["architecture_robust"] == combos["architecture_normal"])
                             & (combos["architecture_robust"] != ""),
        "same_stem": stem(combos["name_robust"]) == stem(combos["name_normal"]),
    }, columns=RANK_COLUMNS)
    order = ["twin", "same_dataset", "same_architecture", "same_stem"]
    return ranked.sort_values(order, ascending=False, kind="stable").reset_index(drop=True)
