"""The launch context: what `trainguard train` tells each worker, in one 0600 JSON file.

The launcher writes ``context.json`` into the job's 0700 run folder and names it in
``$TRAINGUARD_LAUNCH_CONTEXT``; nothing secret travels through torchrun's TCPStore or the
command line. The file holds the job id, the run folder, the membership key of this job (a key
derived for this job only, never a KEK), where the key service listens (the agent's socket or
the launcher's own key process), the checkpoint folder, whether to resume, the guard settings
(the ``[aggregation]``, ``[checkpoint]``, ``[consistency]``, ``[telemetry]`` and ``[simulate]``
tables) and the public material checkpoints are verified with (this node's Ed25519 public key,
the cluster CA certificate and CRL) with the job identity its checkpoints are bound to.
Workers never open the home's ``keys/`` folder.

Job identity (`job_identity`): the project, the job's source file name (the script, or the
built-in recipe's config) and the checkpoint folder's name. It stays the same across torchrun
restarts, `--resume` relaunches and nodes (a shared folder may be mounted at another path, so
only its name counts), and differs for another project's or script's checkpoints. Checkpoint
manifests carry it as their signed ``binding``; a checkpoint bound to another job, or to none
(written before manifests named their job), is refused when a job resumes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.fs import read_private, write_private
from trainguard.trainer.errors import TrainerError

__all__ = ["ENV_CONTEXT", "LaunchContext", "LaunchContextMissing", "Trust", "job_identity"]

ENV_CONTEXT = "TRAINGUARD_LAUNCH_CONTEXT"
FORMAT = 1


class LaunchContextMissing(TrainerError):
    """A worker was started without the launch context of `trainguard train` (exit 2)."""

    exit_code = 2
    default_tip = ("launch the script with `trainguard train --script PATH` (it sets "
                   f"${ENV_CONTEXT}); plain torchrun runs it unprotected")

    def __str__(self) -> str:  # a user's script prints this in its traceback: say what to do
        return self.diagnostics()


@dataclass(frozen=True)
class Trust:
    """Public material that checkpoint signatures are verified against."""

    verify_key_pem: str | None = None  # this node's Ed25519 key (signatures without a certificate)
    ca_pem: str | None = None  # the cluster CA (signatures with a node certificate)
    crl_pem: str | None = None
    cluster: str | None = None
    # The job identity (`job_identity`) checkpoints are bound to: written into every manifest
    # and required on load. None only outside a job (a tool reading one given file).
    job: str | None = None


def job_identity(project: str, source: os.PathLike[str] | str, checkpoint_dir: os.PathLike[str] | str) -> str:
    """The identity a job's checkpoints are bound to (see the module docstring)."""
    body = {"project": project, "source": os.path.basename(os.fspath(source)),
            "checkpoints": os.path.basename(os.path.abspath(os.fspath(checkpoint_dir)))}
    return "trainguard-job/v1 " + json.dumps(body, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class LaunchContext:
    job_id: str
    run_dir: Path
    job_key: bytes = field(repr=False)
    key_socket: Path
    checkpoint_dir: Path
    resume: bool
    created: float
    stop_file: Path
    settings: Mapping[str, Any]
    trust: Trust
    kind: str = "script"  # script | config

    def write(self, path: Path) -> None:
        body = {**asdict(self), "format": FORMAT, "job_key": self.job_key.hex(),
                "trust": asdict(self.trust)}
        write_private(path, json.dumps(body, default=str, indent=1).encode())

    @classmethod
    def read(cls, path: Path) -> LaunchContext:
        try:
            d = json.loads(read_private(path))
            return cls(
                job_id=str(d["job_id"]), run_dir=Path(d["run_dir"]),
                job_key=bytes.fromhex(d["job_key"]), key_socket=Path(d["key_socket"]),
                checkpoint_dir=Path(d["checkpoint_dir"]), resume=bool(d["resume"]),
                created=float(d["created"]), stop_file=Path(d["stop_file"]),
                settings=dict(d["settings"]), trust=Trust(**d["trust"]), kind=str(d["kind"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LaunchContextMissing(f"the launch context {path} is malformed") from exc

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> LaunchContext:
        path = environ.get(ENV_CONTEXT)
        if not path:
            raise LaunchContextMissing(
                f"Guard.from_env() found no launch context: ${ENV_CONTEXT} is not set, so this "
                "process was not started by `trainguard train`")
        return cls.read(Path(path))
