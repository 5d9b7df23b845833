"""Metrics of convolution filters and comparisons of groups of models (robust vs normal).

The notebook API returns pandas DataFrames:

>>> from filterdb.analysis import database_metrics, compare_groups
>>> database_metrics("path/to/db")                                   # one row per layer
>>> result = compare_groups("path/to/db", "robust", "normal", layer="deciles")
>>> result.to_frame(), result.groups, result.per_model, result.divergence

Single layers and in-memory groups: :func:`layer_metrics`, the metric functions of
:mod:`filterdb.analysis.metrics`, and :func:`divergence` (with :func:`reference_basis`, the
database-wide basis the authors use).
"""
from filterdb.analysis.basis import reference_basis
from filterdb.analysis.compare import Comparison, compare_groups
from filterdb.analysis.divergence import divergence
from filterdb.analysis.metrics import (
    DEFAULT_VE,
    METRIC_NAMES,
    l1_norm,
    l2_norm,
    layer_metrics,
    normalized_variance_entropy,
    orthogonality,
    sparsity,
    variance_entropy,
    variance_entropy_linf,
    variance_entropy_raw,
)
from filterdb.analysis.metrics_table import database_metrics, plot_metrics
from filterdb.analysis.rendering import emit_comparison, plot_comparison

__all__ = ["Comparison", "DEFAULT_VE", "METRIC_NAMES", "compare_groups", "database_metrics", "divergence",
           "emit_comparison", "l1_norm", "l2_norm", "layer_metrics", "normalized_variance_entropy", "orthogonality",
           "plot_comparison", "plot_metrics", "reference_basis", "sparsity", "variance_entropy", "variance_entropy_linf", "variance_entropy_raw"]
