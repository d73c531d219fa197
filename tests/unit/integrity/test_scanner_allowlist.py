"""The allowlist denies every well-known pickle gadget and allows what real checkpoints need."""

from __future__ import annotations

import pytest
from trainguard.integrity.scanner import Allowance, classify

GADGETS = [
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.getattr", "builtins.setattr",
    "builtins.__import__", "builtins.open", "builtins.type", "builtins.globals", "os.system",
    "os.popen", "os.execv", "posix.system", "nt.system", "subprocess.Popen", "subprocess.run",
    "subprocess.check_output", "importlib.import_module", "runpy._run_code", "runpy.run_path",
    "pip.main", "pip._internal.cli.main.main", "webbrowser.open", "torch.load", "torch.jit.load",
    "torch.storage._load_from_bytes", "torch.hub.load", "numpy.load", "numpy.fromfile",
    "numpy.testing._private.utils.runstring", "functools.partial", "functools.reduce",
    "operator.attrgetter", "operator.methodcaller", "operator.itemgetter", "pickle.loads",
    "marshal.loads", "types.FunctionType", "types.CodeType", "code.InteractiveInterpreter",
    "pty.spawn", "shutil.rmtree", "socket.create_connection", "timeit.timeit", "pydoc.pipepager",
    "bdb.Bdb", "asyncio.create_subprocess_shell", "ctypes.CDLL", "sys.modules",
    "joblib.load", "joblib.numpy_pickle.NDArrayWrapper", "sklearn.utils.discovery.import_module",
    "sklearn.datasets.fetch_openml", "sklearn.utils.parallel.Parallel", "sklearn.base.__builtins__",
    "sklearn.utils._testing.TempMemmap", "torch.nn.functional.__builtins__",
    "collections.OrderedDict.__init__.__globals__",
]  # fmt: skip

NEEDED = [
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "torch.FloatStorage",
    "torch.BFloat16Storage", "torch.Size", "torch.float32", "torch.device",
    "collections.OrderedDict", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray", "builtins.set",
    "builtins.frozenset", "builtins.slice", "builtins.complex", "_codecs.encode",
    "sklearn.tree._tree.Tree", "sklearn.ensemble._forest.RandomForestClassifier",
    "numpy.random._pickle.__randomstate_ctor", "joblib.numpy_pickle.NumpyArrayWrapper",
    "torch.nn.modules.linear.Linear", "torch.distributed.checkpoint.metadata.Metadata",
]  # fmt: skip


def _classify(full: str) -> Allowance:
    module, _, name = full.rpartition(".")
    if full.startswith("collections.OrderedDict."):
        module, name = "collections", "OrderedDict.__init__.__globals__"
    return classify(module, name)


@pytest.mark.parametrize("full", GADGETS)
def test_gadgets_are_denied(full: str) -> None:
    assert _classify(full) is Allowance.DENY


@pytest.mark.parametrize("full", NEEDED)
def test_checkpoint_globals_may_be_called(full: str) -> None:
    assert _classify(full) is Allowance.CALL


def test_function_attributes_are_references_only() -> None:
    assert classify("numpy", "mean") is Allowance.REFERENCE
    assert classify("torch.nn.functional", "relu") is Allowance.REFERENCE
    assert (
        classify("sklearn.feature_selection._univariate_selection", "f_classif")
        is Allowance.REFERENCE
    )


# -- curated third-party names ---------------------------------------------------------------------


def _curated_version_is_installed() -> bool:
    from importlib import metadata

    from trainguard.integrity.scanner._sklearn_names import SKLEARN_ALLOWLISTS
    from trainguard.integrity.scanner.allowlist import _version_key

    return _version_key(metadata.version("scikit-learn")) in SKLEARN_ALLOWLISTS


def test_every_allowed_sklearn_name_is_an_estimator_transformer_or_documented_helper() -> None:
    """Each allowed scikit-learn name resolves, in the installed scikit-learn, to something
    defined in the very module it is referenced from (no re-exports such as
    multiprocessing.connection.Client) that is an estimator or transformer (BaseEstimator), a
    documented helper type (a helper family's subclass or a listed internal type), a Cython
    unpickle helper, or, in the reference tier, one of the listed functions."""
    pytest.importorskip("sklearn")
    import inspect

    from sklearn.base import BaseEstimator
    from trainguard.integrity.scanner import _sklearn_curate as curate
    from trainguard.integrity.scanner.allowlist import sklearn_allowlist

    call, reference = sklearn_allowlist()
    exact = _curated_version_is_installed()
    bases = []
    for base_full in curate.HELPER_FAMILIES.values():
        base = curate.defined_here(base_full)
        if base is not None:
            bases.append(base)
    problems = []
    for full in sorted(call):
        obj = curate.defined_here(full)
        if obj is None:
            if exact:
                problems.append(f"{full}: not defined in its module")
            continue  # absent from this version: a pickle cannot import it here either
        if full in curate.UNPICKLE_HELPERS:
            continue
        if not inspect.isclass(obj):
            problems.append(f"{full}: not a class")
        elif not (
            issubclass(obj, BaseEstimator)
            or any(issubclass(obj, b) for b in bases)
            or full in curate.HELPER_TYPES
        ):
            problems.append(f"{full}: neither an estimator nor a documented helper type")
    for full in sorted(reference):
        obj = curate.defined_here(full)
        if obj is None:
            if exact:
                problems.append(f"{full}: not defined in its module")
            continue
        if inspect.isclass(obj) or not callable(obj) or full not in curate.REFERENCE_CANDIDATES:
            problems.append(f"{full}: not a listed function")
    assert problems == []


def test_every_estimator_of_the_installed_sklearn_is_allowed() -> None:
    pytest.importorskip("sklearn")
    if not _curated_version_is_installed():
        pytest.skip("no allowlist curated for this scikit-learn version")
    from sklearn.utils import all_estimators

    missing = [
        f"{c.__module__}.{c.__qualname__}"
        for _, c in all_estimators()
        if classify(c.__module__, c.__qualname__) is not Allowance.CALL
    ]
    assert missing == []


def test_torch_layer_names_are_module_classes_defined_in_their_module() -> None:
    torch = pytest.importorskip("torch")
    from trainguard.integrity.scanner import _sklearn_curate as curate
    from trainguard.integrity.scanner._torch_names import TORCH_NN_MODULE_CLASSES

    problems = []
    for full in sorted(TORCH_NN_MODULE_CLASSES):
        obj = curate.defined_here(full)
        if obj is None:
            continue  # not in this torch: cannot be imported here either
        if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
            problems.append(full)
    assert problems == []
    assert classify("torch.nn.modules.activation", "F") is Allowance.DENY  # a module re-export
    assert classify("torch.nn.modules.linear", "Linear") is Allowance.CALL
