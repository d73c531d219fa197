"""Errors of the policy area.

Denials are `AccessDenied` subclasses (exit 1): the user sees a generic message and a tip, the
reason goes to the audit log only. Problems with the policy itself are `PolicyError`s (exit 2).
"""

from __future__ import annotations

from trainguard.core.errors import AccessDenied, PolicyError, UsageError

__all__ = [
    "AccessDenied",
    "AuthenticationFailed",
    "Denied",
    "LockedOut",
    "PolicyError",
    "PolicyFormatError",
    "PolicyTampered",
    "SessionInvalid",
    "StepUpRequired",
    "UnknownName",
]


class PolicyTampered(PolicyError):
    """The policy file does not match its signature; it takes no effect (exit 2)."""

    def __init__(self, path: str, *, tip: str | None = None) -> None:
        if tip is None:
            message = (
                f"the policy file {path} does not match its signature; it may have been edited "
                "by hand or modified maliciously, so no policy is in effect"
            )
            tip = (
                "review the file; an admin re-signs it with `trainguard policy sign --otp CODE`, "
                "or restore it from a trusted copy"
            )
        else:
            message = (
                f"{path} is older than the newest version recorded in the audit log; an older "
                "copy was put back (rollback), so it takes no effect"
            )
        super().__init__(message, tip=tip)


class PolicyFormatError(PolicyError):
    """A policy line or a name is malformed (exit 2)."""


class UnknownName(UsageError):
    """An unknown user, role, action or project was named (exit 2)."""


class Denied(AccessDenied):
    """A denial with an internal `reason` for the audit log (never shown to the user)."""

    def __init__(self, message: str, *, reason: str = "", tip: str | None = None) -> None:
        super().__init__(message, tip=tip)
        self.reason = reason or message


class AuthenticationFailed(Denied):
    """A code, session or login was refused. Never says which check failed."""

    default_tip = "check the code from your authenticator app and try again"


class LockedOut(Denied):
    """Too many failed attempts: the account is locked or backing off."""

    default_tip = "wait and retry, or ask an admin to run `trainguard user unlock NAME`"


class SessionInvalid(Denied):
    """No usable login session (missing, expired, edited, or for another user or node)."""

    default_tip = "log in with `trainguard login --user NAME`"


class StepUpRequired(Denied):
    """A privileged action needs a second factor verified within the step-up window."""

    default_tip = (
        "this action needs a fresh second factor: add `--otp CODE`, or run "
        "`trainguard login` again and retry within a few minutes"
    )
