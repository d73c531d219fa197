"""Errors of the trainer area. Each one maps to an exit code through `TrainguardError`."""

from __future__ import annotations

from trainguard.core.errors import IntegrityError, TrainguardError, UsageError


class TrainerError(TrainguardError):
    """Base of the trainer area: a training job that could not run or finish (exit 3)."""

    exit_code = 3


class TrainConfigError(UsageError):
    """The training config is invalid; `problems` lists every problem found (exit 2)."""

    def __init__(self, problems: list[str], *, source: str) -> None:
        self.problems = problems
        lines = "\n  - ".join(problems)
        super().__init__(
            f"invalid training config {source}:\n  - {lines}",
            tip="fix the listed keys (see trainer/examples/digits.toml for every documented key)",
        )


class PreflightError(UsageError):
    """A launch precondition does not hold (exit 2); nothing was started."""


class MembershipError(IntegrityError):
    """A rank could not prove knowledge of the job key; the job stops before any data flows."""

    default_tip = "every worker of a job needs the same job key; look for a foreign process in the rendezvous"


class CheckpointTampered(IntegrityError):
    """A checkpoint failed signature, sealing or scan verification."""

    default_tip = "the checkpoint was modified after it was written; keep it for forensics and resume from an older one"


class ReplicaDivergence(IntegrityError):
    """Replicas disagree on the model parameters; the job stops."""

    default_tip = "a worker computed different weights; inspect the node for tampering or faulty hardware"


class JobFailed(TrainerError):
    """torchrun exited with an error and the workers left no result."""
