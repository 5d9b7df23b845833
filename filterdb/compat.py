"""Import shims for third-party packages, kept in this one place.

robustbench 1.1.1 does ``from autoattack import AutoAttack`` but its PyPI dependency
installs that code as the module ``pyautoattack``. ``ensure_autoattack_alias`` registers
the alias before robustbench is imported; every robustbench import goes through
``import_robustbench``.
"""
from __future__ import annotations

import importlib
import sys
import warnings


def ensure_autoattack_alias() -> None:
    if "autoattack" in sys.modules:
        return
    try:
        importlib.import_module("autoattack")
        return
    except ImportError:
        pass
    pyautoattack = importlib.import_module("pyautoattack")
    sys.modules["autoattack"] = pyautoattack
    for sub in ("autopgd_base", "fab_pt", "fab_base", "fab_projections", "square", "checks", "other_utils", "autoattack"):
        try:
            sys.modules[f"autoattack.{sub}"] = importlib.import_module(f"pyautoattack.{sub}")
        except ImportError:
            continue


def import_robustbench():
    """Return the ``robustbench`` module with the autoattack alias in place."""
    ensure_autoattack_alias()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation noise
        return importlib.import_module("robustbench")
