"""Regenerate the scikit-learn allowlist for the installed scikit-learn (a maintainer's tool).

    python -m trainguard.integrity.scanner._sklearn_curate > /tmp/names.py

prints the `CALL` and `REFERENCE` name sets to paste into `_sklearn_names.py` under the
installed version. The names are:

* every estimator and transformer `sklearn.utils.all_estimators()` lists;
* the helper types real pickles of those estimators reference (found by fitting each
  default-constructible estimator on a small dataset and walking its pickles): trees, neighbour
  trees, distance metrics, losses and links, kernels, optimizers, Cython unpickle helpers;
* functions those pickles keep as data (``score_func=f_classif``): the reference tier.

Every name is written as ``cls.__module__ + "." + cls.__qualname__``, the one pickle writes, and
kept only if it resolves to a class (or Cython unpickle helper) defined in that very module:
re-exports (``from multiprocessing.connection import Client``) never qualify.
"""

from __future__ import annotations

import importlib
import inspect
import io
import pickle
import warnings
from typing import Any

__all__ = ["collect", "defined_here"]


def defined_here(full: str) -> Any | None:
    """The object `full` names if it is defined in the module it is referenced from."""
    module_name, _, name = full.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    obj = getattr(module, name, None)
    if obj is None or getattr(obj, "__module__", None) != module_name:
        return None
    if getattr(obj, "__qualname__", getattr(obj, "__name__", None)) != name:
        return None
    return obj


def _pickle_globals(obj: Any) -> set[str]:
    from trainguard.integrity.scanner.pickle_walk import PickleParseError, walk_pickle

    names: set[str] = set()
    for protocol in (2, 4, 5):
        try:
            data = pickle.dumps(obj, protocol=protocol)
        except Exception:  # noqa: BLE001,S112 - some estimators do not pickle at all
            continue
        try:
            names |= walk_pickle(io.BytesIO(data)).globals
        except PickleParseError as exc:
            names |= exc.globals
    return names


# Helper families real pickles hold (losses, links, kernels, trees, metrics, optimizers): every
# class defined in these modules that derives from the family's base.
HELPER_FAMILIES = {
    "sklearn.gaussian_process.kernels": "sklearn.gaussian_process.kernels.Kernel",
    "sklearn._loss.loss": "sklearn._loss.loss.BaseLoss",
    "sklearn._loss.link": "sklearn._loss.link.BaseLink",
    "sklearn._loss._loss": "sklearn._loss._loss.CyLossFunction",
    "sklearn.metrics._dist_metrics": "sklearn.metrics._dist_metrics.DistanceMetric",
    "sklearn.linear_model._sgd_fast": "sklearn._loss._loss.CyLossFunction",
    "sklearn.neural_network._stochastic_optimizers":
        "sklearn.neural_network._stochastic_optimizers.BaseOptimizer",
}  # fmt: skip
# Single helper types (documented internals that fitted estimators hold).
HELPER_TYPES = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.utils._bunch.Bunch",
        "sklearn._loss.link.Interval",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.cluster._birch._CFNode",
        "sklearn.cluster._birch._CFSubcluster",
        "sklearn.cluster._bisect_k_means._BisectingTree",
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.metrics._dist_metrics.DistanceMetric32",
        "sklearn.metrics._dist_metrics.DistanceMetric64",
    }
)
# Functions estimators keep as parameters or fitted attributes (reference tier, never called).
REFERENCE_CANDIDATES = frozenset(
    {
        "sklearn.feature_selection._univariate_selection.f_classif",
        "sklearn.feature_selection._univariate_selection.f_regression",
        "sklearn.feature_selection._univariate_selection.r_regression",
        "sklearn.feature_selection._univariate_selection.chi2",
        "sklearn.feature_selection._mutual_info.mutual_info_classif",
        "sklearn.feature_selection._mutual_info.mutual_info_regression",
        "sklearn.cluster._kmeans._kmeans_single_lloyd",
        "sklearn.cluster._kmeans._kmeans_single_elkan",
    }
)
# Cython unpickle helpers: allocate an instance of the (separately allowed) type they get.
UNPICKLE_HELPERS = frozenset(
    {
        "sklearn.neighbors._kd_tree.newObj",
        "sklearn.neighbors._ball_tree.newObj",
        "sklearn.metrics._dist_metrics.newObj",
    }
)


def _family(module_name: str, base_full: str) -> set[str]:
    base_module, _, base_name = base_full.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        base = getattr(importlib.import_module(base_module), base_name)
    except (ImportError, AttributeError):
        return set()
    out = set()
    for name, obj in vars(module).items():
        if inspect.isclass(obj) and obj.__module__ == module_name and issubclass(obj, base):
            out.add(f"{module_name}.{name}")
    return out


def collect() -> tuple[set[str], set[str]]:
    import numpy as np
    from sklearn.datasets import make_classification
    from sklearn.utils import all_estimators

    call: set[str] = set()
    reference: set[str] = set()
    seen: set[str] = set()
    x, y = make_classification(n_samples=40, n_features=5, random_state=0)
    x = np.abs(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _name, cls in all_estimators():
            call.add(f"{cls.__module__}.{cls.__qualname__}")
            try:
                est = cls()
            except Exception:  # noqa: BLE001,S112 - needs constructor arguments
                continue
            seen |= _pickle_globals(est)
            try:
                seen |= _pickle_globals(est.fit(x, y))
            except Exception:  # noqa: BLE001,S112 - needs special input
                continue
    for module_name, base in HELPER_FAMILIES.items():
        call |= _family(module_name, base)
    seen |= HELPER_TYPES | UNPICKLE_HELPERS | REFERENCE_CANDIDATES
    for full in sorted(n for n in seen if n.startswith("sklearn.")):
        obj = defined_here(full)
        if obj is None:
            continue
        if (
            inspect.isclass(obj)
            or full.rpartition(".")[2] in ("newObj",)
            or full.rpartition(".")[2].startswith("__pyx_unpickle_")
        ):
            call.add(full)
        elif callable(obj) and full in REFERENCE_CANDIDATES | seen:
            reference.add(full)
    return call, reference


def main() -> None:
    import sklearn

    call, reference = collect()
    print(f"# scikit-learn {sklearn.__version__}")
    print("CALL = frozenset({")
    for name in sorted(call):
        print(f'    "{name}",')
    print("})")
    print("REFERENCE = frozenset({")
    for name in sorted(reference):
        print(f'    "{name}",')
    print("})")


if __name__ == "__main__":
    main()
