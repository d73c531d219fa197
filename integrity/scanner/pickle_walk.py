"""A static walk over pickle opcodes (protocols 0-5) that never imports or calls anything.

The walk simulates the unpickler's stack and memo with inert placeholder values, so a global
assembled with STACK_GLOBAL from memoised strings (BINGET/GET/MEMOIZE), pushed twice (DUP) or
called later (REDUCE/NEWOBJ/NEWOBJ_EX/INST/OBJ/BUILD) resolves to the module and name the real
unpickler would import. Every imported global is judged by the allowlist; every call must target
a global allowed to be called. EXT1/2/4 (the copyreg extension registry) cannot be judged
statically and are unsafe. Persistent ids (PERSID/BINPERSID) are data references resolved by the
loader (torch uses them for storages) and are allowed.

joblib interleaves raw array bytes with the pickle stream after each ``NumpyArrayWrapper`` BUILD,
and object arrays as a nested pickle; the walk skips the former and walks the latter.
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass
from typing import IO, Any

from trainguard.integrity.scanner.allowlist import Allowance, classify, normalize
from trainguard.integrity.scanner.dtypes import dtype_layout
from trainguard.integrity.scanner.pickle_values import (
    MARK,
    UNKNOWN,
    PDict,
    Persistent,
    PGlobal,
    PObj,
)
from trainguard.integrity.scanner.report import Finding, FindingKind

__all__ = ["PickleParseError", "PickleResult", "dtype_layout", "walk_pickle"]

MAX_FINDINGS = 50
_JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"


class PickleParseError(Exception):
    """The stream is not a complete pickle; `findings` holds what was seen before the failure."""

    def __init__(self, message: str, findings: list[Finding], position: int) -> None:
        super().__init__(message)
        self.findings = findings
        self.position = position


@dataclass
class PickleResult:
    findings: list[Finding]
    globals: set[str]
    value: Any
    protocol: int
    end: int


class _Walker:
    def __init__(self, stream: IO[bytes], location: str, depth: int) -> None:
        self.stream = stream
        self.location = location
        self.depth = depth
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.findings: list[Finding] = []
        self.globals: set[str] = set()
        self._reported: set[tuple[FindingKind, str]] = set()
        self.protocol = 0
        self.pos = 0

    # -- findings -------------------------------------------------------------------------
    def _find(self, kind: FindingKind, message: str, name: str | None = None) -> None:
        key = (kind, name or message)
        if key in self._reported or len(self.findings) >= MAX_FINDINGS:
            return
        self._reported.add(key)
        where = f"{self.location}@{self.pos}" if self.location else f"offset {self.pos}"
        self.findings.append(Finding(kind, message, where, name))

    def _fail(self, message: str) -> PickleParseError:
        where = f"{self.location} " if self.location else ""
        return PickleParseError(f"{where}offset {self.pos}: {message}", self.findings, self.pos)

    # -- stack ----------------------------------------------------------------------------
    def _pop(self) -> Any:
        if not self.stack or self.stack[-1] is MARK:
            raise self._fail("stack underflow")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack or self.stack[-1] is MARK:
            raise self._fail("stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list[Any]:
        items: list[Any] = []
        while self.stack:
            item = self.stack.pop()
            if item is MARK:
                items.reverse()
                return items
            items.append(item)
        raise self._fail("MARK expected but not found")

    # -- globals and calls ----------------------------------------------------------------
    def _global(self, module: str, name: str) -> PGlobal:
        module, name = normalize(module, name, self.protocol)
        full = f"{module}.{name}"
        allowance = classify(module, name)
        self.globals.add(full)
        if allowance is Allowance.DENY:
            self._find(FindingKind.DISALLOWED_GLOBAL, f"imports {full}", full)
        return PGlobal(full, allowance)

    def _check_call(self, func: Any, how: str) -> None:
        if isinstance(func, PGlobal):
            if func.allowance is Allowance.REFERENCE:
                self._find(
                    FindingKind.CALLED_REFERENCE,
                    f"{how} calls {func.full}, allowed only as a data reference",
                    func.full,
                )
            return  # CALL is fine; DENY and unresolved were reported at import time
        self._find(
            FindingKind.NON_GLOBAL_CALL,
            f"{how} calls a value that is not an allowed class or function",
        )

    # -- the walk -------------------------------------------------------------------------
    def run(self) -> PickleResult:
        try:
            for op, arg, pos in pickletools.genops(self.stream):
                self.pos = pos if pos is not None else self.pos
                if op.name == "STOP":
                    value = self._pop()
                    return PickleResult(
                        self.findings, self.globals, value, self.protocol, self.stream.tell()
                    )
                self._step(op, arg)
        except PickleParseError:
            raise
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            raise self._fail(f"not a valid pickle ({exc})") from exc
        raise self._fail("pickle ended before STOP")

    def _step(self, op: pickletools.OpcodeInfo, arg: Any) -> None:
        handler = _HANDLERS.get(op.name)
        if handler is not None:
            handler(self, arg)
            return
        if not op.stack_before and len(op.stack_after) == 1 and op.arg is not None:
            self.stack.append(arg)  # INT, BINUNICODE, BINBYTES, FLOAT, ...: a literal
            return
        self._generic(op)

    def _generic(self, op: pickletools.OpcodeInfo) -> None:
        before = op.stack_before
        if pickletools.markobject in before:
            self._pop_mark()
            for _ in range(before.index(pickletools.markobject)):
                self._pop()
        else:
            for _ in before:
                self._pop()
        self.stack.extend(UNKNOWN for _ in op.stack_after)


def _as_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return None


def _h_proto(w: _Walker, arg: Any) -> None:
    w.protocol = int(arg)


def _h_global(w: _Walker, arg: Any) -> None:
    module, _, name = str(arg).partition(" ")
    w.stack.append(w._global(module, name))


def _h_stack_global(w: _Walker, arg: Any) -> None:
    name, module = _as_str(w._pop()), _as_str(w._pop())
    if name is None or module is None:
        w._find(FindingKind.UNRESOLVED_GLOBAL, "STACK_GLOBAL with operands that are not strings")
        w.stack.append(UNKNOWN)
        return
    w.stack.append(w._global(module, name))


def _h_inst(w: _Walker, arg: Any) -> None:
    args = w._pop_mark()
    module, _, name = str(arg).partition(" ")
    cls = w._global(module, name)
    w._check_call(cls, "INST")
    w.stack.append(PObj(cls, tuple(args)))


def _h_obj(w: _Walker, arg: Any) -> None:
    items = w._pop_mark()
    if not items:
        raise w._fail("OBJ without a class")
    w._check_call(items[0], "OBJ")
    w.stack.append(PObj(items[0], tuple(items[1:])))


# Allowed functions that call one of their arguments while loading: (name -> argument index).
# That argument must itself be a global allowed to be called.
_INDIRECT_CALLERS = {"torch._tensor._rebuild_from_type_v2": 0}


def _h_reduce(w: _Walker, arg: Any) -> None:
    args = w._pop()
    func = w._pop()
    w._check_call(func, "REDUCE")
    if isinstance(func, PGlobal) and func.full in _INDIRECT_CALLERS:
        index = _INDIRECT_CALLERS[func.full]
        if not isinstance(args, tuple) or len(args) <= index:
            w._find(FindingKind.NON_GLOBAL_CALL, f"{func.full} with unreadable arguments")
        else:
            w._check_call(args[index], f"{func.full} argument")
    w.stack.append(PObj(func, args))


def _h_newobj(w: _Walker, arg: Any) -> None:
    args = w._pop()
    cls = w._pop()
    w._check_call(cls, "NEWOBJ")
    w.stack.append(PObj(cls, args))


def _h_newobj_ex(w: _Walker, arg: Any) -> None:
    w._pop()  # kwargs
    args = w._pop()
    cls = w._pop()
    w._check_call(cls, "NEWOBJ_EX")
    w.stack.append(PObj(cls, args))


def _h_build(w: _Walker, arg: Any) -> None:
    state = w._pop()
    inst = w._top()
    if isinstance(inst, PGlobal):
        # BUILD on a class or function would set attributes on it for the whole process.
        w._find(FindingKind.NON_GLOBAL_CALL, f"BUILD sets state on {inst.full} itself", inst.full)
        return
    if isinstance(inst, PObj):
        inst.state = state
        if isinstance(inst.func, PGlobal) and inst.func.full == _JOBLIB_WRAPPER:
            _joblib_array(w, inst)


def _h_ext(w: _Walker, arg: Any) -> None:
    w._find(FindingKind.EXTENSION_CODE, f"EXT opcode (copyreg extension code {arg})")
    w.stack.append(UNKNOWN)


def _h_persid(w: _Walker, arg: Any) -> None:
    w.stack.append(Persistent(arg))


def _h_binpersid(w: _Walker, arg: Any) -> None:
    w.stack.append(Persistent(w._pop()))


def _h_mark(w: _Walker, arg: Any) -> None:
    w.stack.append(MARK)


def _h_pop(w: _Walker, arg: Any) -> None:
    if w.stack and w.stack[-1] is MARK:
        w._pop_mark()  # the unpickler's POP on an empty frame discards the mark
    else:
        w._pop()


def _h_pop_mark(w: _Walker, arg: Any) -> None:
    w._pop_mark()


def _h_dup(w: _Walker, arg: Any) -> None:
    w.stack.append(w._top())


def _h_get(w: _Walker, arg: Any) -> None:
    key = int(arg)
    if key not in w.memo:
        raise w._fail(f"memo key {key} read before it was written")
    w.stack.append(w.memo[key])


def _h_put(w: _Walker, arg: Any) -> None:
    key = int(arg)
    if key < 0:
        raise w._fail("negative memo key")
    w.memo[key] = w._top()


def _h_memoize(w: _Walker, arg: Any) -> None:
    w.memo[len(w.memo)] = w._top()


def _h_empty_list(w: _Walker, arg: Any) -> None:
    w.stack.append([])


def _h_empty_tuple(w: _Walker, arg: Any) -> None:
    w.stack.append(())


def _h_empty_dict(w: _Walker, arg: Any) -> None:
    w.stack.append(PDict())


def _h_append(w: _Walker, arg: Any) -> None:
    value = w._pop()
    target = w._top()
    if isinstance(target, list):
        target.append(value)


def _h_appends(w: _Walker, arg: Any) -> None:
    items = w._pop_mark()
    target = w._top()
    if isinstance(target, list):
        target.extend(items)


def _h_list(w: _Walker, arg: Any) -> None:
    w.stack.append(w._pop_mark())


def _h_tuple(w: _Walker, arg: Any) -> None:
    w.stack.append(tuple(w._pop_mark()))


def _tuple_n(n: int) -> Any:
    def handler(w: _Walker, arg: Any) -> None:
        items = [w._pop() for _ in range(n)]
        w.stack.append(tuple(reversed(items)))

    return handler


def _h_dict(w: _Walker, arg: Any) -> None:
    items = w._pop_mark()
    w.stack.append(PDict(list(zip(items[::2], items[1::2], strict=False))))


def _h_setitem(w: _Walker, arg: Any) -> None:
    value, key = w._pop(), w._pop()
    target = w._top()
    if isinstance(target, PDict):
        target.pairs.append((key, value))


def _h_setitems(w: _Walker, arg: Any) -> None:
    items = w._pop_mark()
    target = w._top()
    if isinstance(target, PDict):
        target.pairs.extend(zip(items[::2], items[1::2], strict=False))


def _h_frame(w: _Walker, arg: Any) -> None:
    return None


_HANDLERS: dict[str, Any] = {
    "PROTO": _h_proto,
    "FRAME": _h_frame,
    "GLOBAL": _h_global,
    "STACK_GLOBAL": _h_stack_global,
    "INST": _h_inst,
    "OBJ": _h_obj,
    "REDUCE": _h_reduce,
    "NEWOBJ": _h_newobj,
    "NEWOBJ_EX": _h_newobj_ex,
    "BUILD": _h_build,
    "EXT1": _h_ext,
    "EXT2": _h_ext,
    "EXT4": _h_ext,
    "PERSID": _h_persid,
    "BINPERSID": _h_binpersid,
    "MARK": _h_mark,
    "POP": _h_pop,
    "POP_MARK": _h_pop_mark,
    "DUP": _h_dup,
    "GET": _h_get,
    "BINGET": _h_get,
    "LONG_BINGET": _h_get,
    "PUT": _h_put,
    "BINPUT": _h_put,
    "LONG_BINPUT": _h_put,
    "MEMOIZE": _h_memoize,
    "EMPTY_LIST": _h_empty_list,
    "EMPTY_TUPLE": _h_empty_tuple,
    "EMPTY_DICT": _h_empty_dict,
    "APPEND": _h_append,
    "APPENDS": _h_appends,
    "LIST": _h_list,
    "TUPLE": _h_tuple,
    "TUPLE1": _tuple_n(1),
    "TUPLE2": _tuple_n(2),
    "TUPLE3": _tuple_n(3),
    "DICT": _h_dict,
    "SETITEM": _h_setitem,
    "SETITEMS": _h_setitems,
}


def _joblib_array(w: _Walker, wrapper: PObj) -> None:
    """Skip (or, for object arrays, walk) the array data joblib wrote after this wrapper."""
    state = wrapper.state
    if not isinstance(state, PDict):
        raise w._fail("joblib NumpyArrayWrapper without a state dict")
    dtype, shape = state.get("dtype"), state.get("shape")
    if not isinstance(dtype, PObj) or not isinstance(dtype.args, tuple) or not dtype.args:
        raise w._fail("joblib array with an unreadable dtype")
    descr = _as_str(dtype.args[0]) or ""
    elsize = -1
    if isinstance(dtype.state, tuple) and len(dtype.state) > 5 and isinstance(dtype.state[5], int):
        elsize = dtype.state[5]
    try:
        itemsize, has_object = dtype_layout(descr, elsize)
    except ValueError as exc:
        raise w._fail(f"joblib array: {exc}") from exc
    if has_object:
        nested = _Walker(w.stream, f"{w.location}/joblib-object-array", w.depth + 1)
        if w.depth > 8:
            raise w._fail("joblib object arrays nested too deeply")
        result = nested.run()
        w.findings.extend(result.findings)
        w.globals |= result.globals
        return
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise w._fail("joblib array with an unreadable shape")
    count = 1
    for dim in shape:
        count *= dim
    if state.get("numpy_array_alignment_bytes") is not None:
        pad = w.stream.read(1)
        if len(pad) != 1:
            raise w._fail("joblib array truncated")
        w.stream.seek(pad[0], io.SEEK_CUR)
    w.stream.seek(count * itemsize, io.SEEK_CUR)


def walk_pickle(stream: IO[bytes], location: str = "", *, _depth: int = 0) -> PickleResult:
    """Walk one pickle from the stream's current position up to and including STOP.

    Returns the findings, every resolved global and the simulated top-level value; the stream
    is left just after STOP.

    Raises:
        PickleParseError: the bytes are not a complete pickle (with the findings seen so far).
    """
    return _Walker(stream, location, _depth).run()
