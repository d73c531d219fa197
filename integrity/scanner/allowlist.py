"""Which pickle globals a checkpoint may import: an allowlist, deny by default.

Two tiers:

* ``CALL``: classes and rebuild functions that torch, numpy and scikit-learn state needs and that
  the unpickler may *call* (REDUCE, NEWOBJ, INST, OBJ, BUILD targets). Each one only builds data;
  none evaluates code, imports modules, reads files or resolves attributes by name.
* ``REFERENCE``: functions that real estimators keep as *data* (``pooling_func=np.mean``,
  ``score_func=f_classif``). They may be imported but never called while loading.

Everything else is denied, including the classic gadgets (``builtins.eval/exec/getattr``,
``os.*``, ``subprocess.*``, ``importlib``, ``runpy``, ``pip``, ``webbrowser``, ``torch.load``,
``numpy.load``, ``functools.partial``, ``operator.attrgetter``, ``torch.storage._load_from_bytes``).
Names are compared exactly after the Python 2 name mapping that the unpickler applies itself.
Third-party entries are concrete classes (or the few functions kept as data) named by their own
``__module__`` and ``__qualname__``, the name a pickle writes, never a re-export: scikit-learn's
and torch.nn's lists are curated per library version (`_sklearn_names`, `_torch_names`), and
the tests check each entry resolves in the installed version to an estimator, transformer,
documented helper type or layer class defined in that very module.
"""

from __future__ import annotations

import _compat_pickle
import enum
import functools
import logging

from trainguard.integrity.scanner._sklearn_names import SKLEARN_ALLOWLISTS
from trainguard.integrity.scanner._torch_names import TORCH_NN_MODULE_CLASSES

__all__ = [
    "Allowance",
    "CALLABLE_GLOBALS",
    "REFERENCE_GLOBALS",
    "classify",
    "normalize",
    "sklearn_allowlist",
]

log = logging.getLogger(__name__)


class Allowance(enum.Enum):
    CALL = "call"
    REFERENCE = "reference"
    DENY = "deny"


_TORCH_STORAGES = (
    "BFloat16Storage BoolStorage ByteStorage CharStorage ComplexDoubleStorage ComplexFloatStorage "
    "DoubleStorage FloatStorage HalfStorage IntStorage LongStorage QInt32Storage QInt8Storage "
    "QUInt2x4Storage QUInt4x2Storage QUInt8Storage ShortStorage UntypedStorage TypedStorage"
).split()
# dtypes, layouts, memory formats and qschemes pickle as plain `torch.<name>` globals.
_TORCH_CONSTANTS = (
    "bfloat16 bool cdouble cfloat chalf complex128 complex32 complex64 double float float16 "
    "float32 float64 float8_e4m3fn float8_e4m3fnuz float8_e5m2 float8_e5m2fnuz float8_e8m0fnu "
    "float4_e2m1fn_x2 half int int16 int32 int64 int8 long short uint16 uint32 uint64 uint8 "
    "qint32 qint8 quint2x4 quint4x2 quint8 bits16 bits1x8 bits2x4 bits4x2 bits8 "
    "channels_last channels_last_3d contiguous_format preserve_format legacy_contiguous_format "
    "strided sparse_coo sparse_csr sparse_csc sparse_bsr sparse_bsc jagged "
    "per_channel_affine per_channel_affine_float_qparams per_channel_symmetric "
    "per_tensor_affine per_tensor_symmetric"
).split()
_TORCH_REBUILD = (
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter "
    "_rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor _rebuild_nested_tensor "
    "_rebuild_device_tensor_from_numpy _rebuild_device_tensor_from_cpu_tensor "
    "_rebuild_meta_tensor_no_storage _rebuild_wrapper_subclass"
).split()
# torch.distributed.checkpoint `.metadata` files pickle these dataclasses.
_TORCH_DCP = [
    "torch.distributed.checkpoint.metadata." + n
    for n in (
        "Metadata TensorStorageMetadata BytesStorageMetadata ChunkStorageMetadata "
        "TensorProperties MetadataIndex StorageMeta _MEM_FORMAT_ENCODING"
    ).split()
] + [
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "torch.distributed.checkpoint.planner.LoadItemType",
    "torch.distributed.checkpoint.planner.WriteItemType",
]
_NUMPY = (
    [
        f"{core}.{n}"
        for core in ("numpy.core", "numpy._core")
        for n in ("multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer")
    ]
    + [
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.ma.core._mareconstruct",
        "numpy.ma.core.MaskedArray",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random.mtrand.RandomState",
        "numpy.random._generator.Generator",
        "numpy.random._mt19937.MT19937",
        "numpy.random._pcg64.PCG64",
        "numpy.random._pcg64.PCG64DXSM",
        "numpy.random._philox.Philox",
        "numpy.random._sfc64.SFC64",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    ]
    + [
        f"numpy.{t}"
        for t in (
            "bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 "
            "longdouble complex64 complex128 clongdouble str_ bytes_ void object_ datetime64 "
            "timedelta64 intc uintc longlong ulonglong"
        ).split()
    ]
)
_BUILTINS = [
    f"builtins.{n}"
    for n in (
        "set frozenset slice complex bytearray bytes str int float bool list dict tuple range "
        "object"
    ).split()
]
_STDLIB = [
    "collections.OrderedDict",
    "collections.defaultdict",
    "collections.deque",
    "collections.Counter",
    "copyreg._reconstructor",
    "copyreg.__newobj__",
    "copyreg.__newobj_ex__",
    "_codecs.encode",  # protocol <3 pickles of bytes: encode(str, "latin1")
    "datetime.datetime",
    "datetime.date",
    "datetime.time",
    "datetime.timedelta",
    "datetime.timezone",
    "decimal.Decimal",
    "fractions.Fraction",
    "uuid.UUID",
    "pathlib.PosixPath",
    "pathlib.PurePosixPath",
]
_SCIPY = [
    f"scipy.sparse._{fmt}.{fmt}_{kind}"
    for fmt in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil")
    for kind in ("matrix", "array")
] + ["scipy.interpolate._bsplines.BSpline"]
CALLABLE_GLOBALS: frozenset[str] = frozenset(
    [f"torch.{n}" for n in _TORCH_STORAGES + _TORCH_CONSTANTS]
    + [f"torch._utils.{n}" for n in _TORCH_REBUILD]
    + [
        "torch.Size",
        "torch.device",
        "torch.Tensor",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        "torch.nn.parameter.Parameter",
        "torch.nn.parameter.Buffer",
        "torch._tensor._rebuild_from_type_v2",
        "torch.serialization._get_layout",
        "torch.autograd.grad_mode.no_grad",
    ]
    + _TORCH_DCP
    + _NUMPY
    + _BUILTINS
    + _STDLIB
    + _SCIPY
    + sorted(TORCH_NN_MODULE_CLASSES)
    + ["joblib.numpy_pickle.NumpyArrayWrapper"]
)

# Functions real estimators keep as attributes; importing them runs nothing.
REFERENCE_GLOBALS: frozenset[str] = frozenset(
    [
        f"numpy.{n}"
        for n in (
            "mean median average sum max min amax amin std var prod abs sqrt exp log log1p "
            "expm1 tanh argmax argmin nanmean nanmedian float64 float32"
        ).split()
    ]
    + ["scipy._lib.array_api_compat.numpy._aliases.asarray"]
)


def normalize(module: str, name: str, protocol: int) -> tuple[str, str]:
    """Apply the Python 2 -> 3 renames that `pickle.Unpickler(fix_imports=True)` applies."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return module, name


def _version_key(text: str) -> tuple[int, int]:
    parts = text.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


@functools.lru_cache(maxsize=1)
def sklearn_allowlist() -> tuple[frozenset[str], frozenset[str]]:
    """(call, reference) names for the installed scikit-learn: the list curated for its
    major.minor version, else the newest older one (names a version lacks cannot be imported)."""
    from importlib import metadata

    versions = sorted(SKLEARN_ALLOWLISTS)
    try:
        installed = _version_key(metadata.version("scikit-learn"))
    except metadata.PackageNotFoundError:
        return SKLEARN_ALLOWLISTS[versions[-1]]
    if installed in SKLEARN_ALLOWLISTS:
        return SKLEARN_ALLOWLISTS[installed]
    older = [v for v in versions if v <= installed] or versions[:1]
    log.warning(
        "no scikit-learn allowlist curated for %s.%s; using the one for %s.%s",
        *installed, *older[-1],
    )  # fmt: skip
    return SKLEARN_ALLOWLISTS[older[-1]]


# Names that would hand an attacker a gadget even as a mere data reference.
_GADGET_NAMES = frozenset(
    "system popen spawn exec eval compile getattr setattr delattr import_module open load loads "
    "run call check_call check_output execfile input globals locals vars breakpoint urlopen "
    "urlretrieve remove rmtree unlink partial attrgetter itemgetter methodcaller signature".split()
)


def _gadget_name(name: str) -> bool:
    return name.startswith("__") or name in _GADGET_NAMES or name.startswith(("spawn", "exec"))


def classify(module: str, name: str) -> Allowance:
    """The tier of ``module.name``; ``DENY`` for anything not explicitly allowed."""
    full = f"{module}.{name}"
    if full in CALLABLE_GLOBALS:
        return Allowance.CALL
    if full in REFERENCE_GLOBALS:
        return Allowance.REFERENCE
    if module == "sklearn" or module.startswith("sklearn."):
        call, reference = sklearn_allowlist()
        if full in call:
            return Allowance.CALL
        if full in reference:
            return Allowance.REFERENCE
        return Allowance.DENY
    # Full-model pickles keep activation functions as attributes (TransformerEncoderLayer):
    # functions of torch.nn.functional, allowed as data only (a call is a finding).
    if module in ("torch.nn.functional", "torch._C._nn") and name.isidentifier():
        if name[:1].islower() and not _gadget_name(name):
            return Allowance.REFERENCE
    return Allowance.DENY
