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
