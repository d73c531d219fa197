"""One error hierarchy for trainguard.

Every error carries a message (what failed) and a tip (what to do next). The CLI catches
`TrainguardError` once, prints ``error: <message>`` and ``Tip: <tip>`` on stderr and exits with
the error's `exit_code`. Messages never contain secrets; crypto and auth failures say *that*
something failed, never which byte or which rule.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1  # findings remain, verification failed, or access denied
EXIT_USAGE = 2  # usage or configuration error
EXIT_INTERNAL = 3  # a bug or an unexpected environment failure


class TrainguardError(Exception):
    """Root of every error trainguard raises on purpose."""

    exit_code: int = EXIT_INTERNAL
    default_tip: str | None = None

    def __init__(self, message: str, *, tip: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tip = tip if tip is not None else self.default_tip

    def diagnostics(self) -> str:
        """The message and the tip, as the CLI prints them."""
        text = f"error: {self.message}"
        if self.tip:
            text += f"\nTip: {self.tip}"
        return text


class UsageError(TrainguardError):
    """Bad arguments or a missing prerequisite the user can fix (exit 2)."""

    exit_code = 2


class CryptoError(TrainguardError):
    """Base of the crypto area. Verification failures exit 1."""

    exit_code = 1


class IntegrityError(TrainguardError):
    """Something that was signed, hashed or locked no longer matches (exit 1)."""

    exit_code = 1


class PolicyError(TrainguardError):
    """Base of the policy area: a policy that cannot be loaded or used (exit 2)."""

    exit_code = 2


class AccessDenied(PolicyError):
    """A request was denied. The reason goes to the audit log, not to the user (exit 1)."""

    exit_code = 1
    default_tip = "ask an admin for the role you need, or log in again with `trainguard login`"


class EvidenceError(TrainguardError):
    """Base of the evidence area: the audit log, incidents, hooks and deliveries."""


class ReportError(TrainguardError):
    """Base of the report area: gathering, assessing and rendering evidence."""


class AgentError(TrainguardError):
    """Base of the agent area (exit 3 unless a subclass says otherwise)."""

    exit_code = 3
