"""Errors of the adversarial area."""

from __future__ import annotations

from trainguard.core.errors import UsageError


class AdversarialError(UsageError):
    """Base of the adversarial area: bad attack settings, data or models the user can fix (exit 2)."""


class DatasetError(AdversarialError):
    """A dataset spec or file that cannot be used (bad IDX magic, wrong sizes, missing files)."""

    default_tip = (
        "use `digits` or `mnist:DIR` where DIR holds the standard IDX files "
        "(t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally .gz)"
    )


class ModelSpecError(AdversarialError):
    """A MODULE:FACTORY spec that does not name a callable returning a torch module."""

    default_tip = "pass --model as MODULE:FACTORY, e.g. trainguard.adversarial.models:digits_cnn"
