"""Keras model files: Lambda layers (marshalled Python bytecode) and objects from arbitrary
modules in the model config run code when the model is loaded. `.keras` archives carry the
config as `config.json`; legacy HDF5 files as a JSON string attribute, found by a byte search
(HDF5 itself is not parsed, so an HDF5 file without such a finding is still an error, not safe).
"""

from __future__ import annotations

import json
import mmap
import re
from typing import IO, Any

from trainguard.integrity.scanner.report import Finding, FindingKind

__all__ = ["HDF5_MAGIC", "config_findings", "scan_hdf5", "scan_json_config"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KERAS_MODULES = ("keras", "tensorflow", "tf_keras")
_CODE_LAYERS = frozenset({"Lambda"})
_LAMBDA = re.compile(rb'"class_name"\s*:\s*"Lambda"')
_MODULE = re.compile(rb'"module"\s*:\s*"([^"]{1,200})"')


def config_findings(config: Any, location: str) -> list[Finding]:
    """Lambda layers and non-Keras modules anywhere in a parsed Keras model config."""
    found: list[Finding] = []
    stack = [config]
    while stack and len(found) < 50:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            name = node.get("class_name")
            module = node.get("module")
            if name in _CODE_LAYERS:
                found.append(
                    Finding(
                        FindingKind.DISALLOWED_GLOBAL,
                        "Keras Lambda layer (runs Python code when loaded)",
                        location,
                        "keras.layers.Lambda",
                    )  # fmt: skip
                )
            elif isinstance(module, str) and isinstance(name, str):
                if not module.startswith(_KERAS_MODULES):
                    found.append(
                        Finding(
                            FindingKind.DISALLOWED_GLOBAL,
                            f"Keras config imports {module}.{name}",
                            location,
                            f"{module}.{name}",
                        )  # fmt: skip
                    )
            stack.extend(node.values())
    return found


def scan_json_config(data: bytes, location: str) -> list[Finding]:
    try:
        return config_findings(json.loads(data), location)
    except (ValueError, RecursionError) as exc:
        return [Finding(FindingKind.PARSE_ERROR, f"Keras config unreadable: {exc}", location)]


def scan_hdf5(f: IO[bytes], size: int, location: str, out: list[Finding]) -> str:
    """Search a legacy Keras HDF5 file for code-running config entries (see module doc)."""
    view: Any
    try:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, AttributeError):  # not a real file: read it (small in practice)
        f.seek(0)
        view = f.read()
    found: list[Finding] = []
    if _LAMBDA.search(view):
        found.append(
            Finding(
                FindingKind.DISALLOWED_GLOBAL,
                "Keras Lambda layer in an HDF5 model",
                location,
                "keras.layers.Lambda",
            )  # fmt: skip
        )
    for match in _MODULE.finditer(view):
        module = match.group(1).decode("utf-8", "replace")
        if not module.startswith(_KERAS_MODULES):
            found.append(
                Finding(
                    FindingKind.DISALLOWED_GLOBAL,
                    f"Keras config imports from {module}",
                    location,
                    module,
                )  # fmt: skip
            )
            break
    if isinstance(view, mmap.mmap):
        view.close()
    if not found:
        found.append(
            Finding(
                FindingKind.UNSUPPORTED,
                "HDF5 is not parsed; no Keras Lambda layer or "
                "foreign module was found, but the file was not fully judged",
                location,
            )  # fmt: skip
        )
    out.extend(found)
    return "hdf5"
