"""How joblib's unpickler reads the array data that follows a ``NumpyArrayWrapper``.

`joblib.numpy_pickle.NumpyUnpickler.load_build` runs after every BUILD: when the object on the
stack top is a wrapper it reads the array from the stream right there (``read_array``): if
``self.dtype.hasobject`` the data is a nested pickle, else ``prod(shape) * dtype.itemsize`` raw
bytes (after a padding byte and padding, when ``numpy_array_alignment_bytes`` is set). The
wrapper's attributes come from ``__init__`` (when the pickle called the class with arguments)
and every BUILD state, merged in order. Its dtype is rebuilt with numpy itself from the pickled
``numpy.dtype`` call and states, so ``hasobject`` and ``itemsize`` are numpy's own answers for
structured and comma-separated descriptions too; a dtype the walk cannot rebuild from literals
is not judged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainguard.integrity.scanner.pickle_values import (
    BigBytes,
    BigStr,
    PDict,
    PGlobal,
    PObj,
    PSet,
)
from trainguard.integrity.scanner.pickle_walk import (
    JOBLIB_WRAPPER,
    _Fail,
    _Limit,
)

if TYPE_CHECKING:
    from trainguard.integrity.scanner.pickle_walk import _Walker

__all__ = ["is_wrapper", "read_array", "rebuild_dtype"]

_MAX_NESTING = 8
_MAX_NODES = 100_000


def _mentions_wrapper(value: Any) -> bool:
    seen: set[int] = set()
    todo = [value]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if len(seen) > _MAX_NODES:
            raise _Limit("object graph too large to follow")
        if isinstance(item, PGlobal):
            if item.full == JOBLIB_WRAPPER:
                return True
        elif isinstance(item, (tuple, list)):
            todo.extend(item)
        elif isinstance(item, PDict):
            todo.extend(v for pair in item.pairs for v in pair)
        elif isinstance(item, PObj):
            todo.extend((item.func, item.args, *item.builds))
    return False


def is_wrapper(obj: PObj, instance_makers: frozenset[str]) -> bool:
    """Whether `obj` is a NumpyArrayWrapper instance; a construction the walk cannot follow
    that involves the wrapper class is not judged."""
    func, args = obj.func, obj.args
    if isinstance(func, PGlobal):
        if func.full == JOBLIB_WRAPPER:
            return True
        if (
            func.full in instance_makers
            and isinstance(args, tuple)
            and args
            and isinstance(args[0], PGlobal)
        ):
            return args[0].full == JOBLIB_WRAPPER
    if _mentions_wrapper((func, args)):
        raise _Limit("a joblib array wrapper built in a way the scanner cannot follow")
    return False


def _attributes(inst: PObj, init_names: tuple[str, ...]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    direct = isinstance(inst.func, PGlobal) and inst.func.full == JOBLIB_WRAPPER
    if direct and (inst.how == "REDUCE" or (inst.how in ("INST", "OBJ") and inst.args)):
        args = inst.args
        if not isinstance(args, tuple):
            raise _Limit("joblib array wrapper called with arguments the scanner cannot read")
        if not 4 <= len(args) <= len(init_names):
            raise _Fail("NumpyArrayWrapper() called with the wrong number of arguments")
        attrs.update(allow_mmap=False, numpy_array_alignment_bytes=16)
        attrs.update(zip(init_names, args, strict=False))
    for state in inst.builds:
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
        for part in parts:  # pickle's load_build: `if state:` ... `if slotstate:`
            if isinstance(part, PDict):
                attrs.update((k, v) for k, v in part.pairs if isinstance(k, str))
            elif part is None or isinstance(part, (bool, int, float, str, bytes, tuple, list)):
                if part:
                    raise _Fail("joblib array wrapper state is not a dictionary")
            elif isinstance(part, PSet) and not part.items:
                continue
            else:
                raise _Limit("joblib array wrapper state the scanner cannot read")
    return attrs


def _literal(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise _Limit("dtype description nested too deeply")
    if isinstance(value, (BigStr, BigBytes)):
        raise _Limit("dtype description too large")
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    if type(value) is tuple:
        return tuple(_literal(v, depth + 1) for v in value)
    if type(value) is list:
        return [_literal(v, depth + 1) for v in value]
    if isinstance(value, PDict):
        out: dict[Any, Any] = {}
        for k, v in value.pairs:
            try:
                out[_literal(k, depth + 1)] = _literal(v, depth + 1)
            except TypeError as exc:
                raise _Fail("unhashable key in a dtype description") from exc
        return out
    if isinstance(value, PObj):
        return rebuild_dtype(value, depth + 1)
    raise _Limit("a dtype description the scanner cannot rebuild from literals")


def rebuild_dtype(value: Any, depth: int = 0) -> Any:
    """The numpy dtype a pickled ``numpy.dtype(descr, align, copy)`` call plus its BUILD states
    makes, rebuilt by numpy from literals (always as a copy: never a shared builtin dtype)."""
    import numpy

    if not (
        isinstance(value, PObj)
        and value.how == "REDUCE"
        and isinstance(value.func, PGlobal)
        and value.func.full == "numpy.dtype"
    ):
        raise _Limit("joblib array dtype is not a numpy.dtype(...) the scanner can rebuild")
    args = _literal(value.args, depth)
    if not isinstance(args, tuple) or not 1 <= len(args) <= 3:
        raise _Fail("numpy.dtype called with unusable arguments")
    try:
        dtype = numpy.dtype(args[0], bool(args[1]) if len(args) > 1 else False, True)
        for state in value.builds:
            dtype.__setstate__(_literal(state, depth))  # type: ignore[attr-defined]
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError) as exc:
        raise _Fail(f"numpy refuses the dtype: {exc}") from exc
    return dtype


def read_array(w: _Walker, inst: PObj, init_names: tuple[str, ...]) -> None:
    """Consume the array data joblib reads after this wrapper's BUILD (see module doc)."""
    attrs = _attributes(inst, init_names)
    if "dtype" not in attrs or "shape" not in attrs:
        raise _Fail("joblib array wrapper without a dtype or shape")
    dtype = rebuild_dtype(attrs["dtype"])
    shape = attrs["shape"]
    if not isinstance(shape, (tuple, list)):
        if isinstance(shape, (PObj, PDict)) or not isinstance(shape, (int, float, str, bytes)):
            raise _Limit("joblib array shape the scanner cannot read")
        raise _Fail("joblib array shape has no length")
    if dtype.hasobject:
        mmap = attrs.get("allow_mmap", False)
        if not (mmap is None or (isinstance(mmap, (bool, int, float, str, bytes)) and not mmap)):
            # joblib.load(mmap_mode=...) would map these bytes raw instead of unpickling them
            raise _Limit("a joblib object array marked memory-mappable")
        if w.depth >= _MAX_NESTING:
            raise _Limit("joblib object arrays nested too deeply")
        nested = w.nested(f"{w.location}/joblib-object-array")
        w.findings.extend(nested.findings)
        w.positions.extend(nested.positions or [0] * len(nested.findings))
        w.globals |= nested.globals
        w.pos = nested.end
        return
    count = 1
    for dim in shape:
        if type(dim) not in (int, bool):
            if isinstance(dim, (PObj, PDict)):
                raise _Limit("joblib array shape the scanner cannot read")
            raise _Fail("joblib array shape holds a non-integer")
        if dim < 0:
            raise _Fail("joblib array shape holds a negative dimension")
        count *= int(dim)
        if count > (1 << 63) - 1:
            raise _Fail("joblib array larger than numpy can allocate")
    if dtype.itemsize == 0:
        raise _Fail("joblib array with a zero-size dtype")
    if attrs.get("numpy_array_alignment_bytes") is not None:
        pad = w.read_some(1)
        if pad and pad[0]:
            w.read_some(pad[0])
    w.skip(count * dtype.itemsize)
