"""The trainguard home: where every piece of state for one node lives.

Layout (DESIGN "Runtime pieces")::

    trainguard.toml     config
    keys/               keyring (KEK versions) and the node's Ed25519 signing key
    pki/                cluster CA, node certificate, revocation list
    policy/             signed casbin policy
    state/              SQLite databases (audit log, users, hook queue) and agent.sock
    hooks.d/            incident hooks
    quarantine/         files moved aside by the quarantine action

Folders are 0700 and key files 0600; `check_modes` lists anything looser. Key files are read
and written with the helpers of `trainguard.core.fs`.

Under systemd, the home's KEKs may instead be handed over in ``$CREDENTIALS_DIRECTORY``
(systemd-creds, e.g. TPM2-sealed): `Home.resolve` records that folder as `credentials_dir`, and
`trainguard.crypto.keyring.open_keyring(home)` prefers a ``kek-v<N>.key`` found there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trainguard.core.errors import UsageError

ENV_HOME = "TRAINGUARD_HOME"
ENV_CREDENTIALS = "CREDENTIALS_DIRECTORY"
SYSTEM_HOME = Path("/var/lib/trainguard")
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
RESTORE_KEY_TIP = (
    "restore the key file from a backup of this home; without it, data sealed or signed "
    "under it cannot be used (`trainguard init` only creates new homes)"
)


class HomeError(UsageError):
    """The home is missing, incomplete or has unsafe permissions (exit 2)."""


@dataclass(frozen=True)
class ModeProblem:
    path: Path
    mode: int
    expected: int

    def __str__(self) -> str:
        return (
            f"{self.path} has mode {self.mode:04o}; expected {self.expected:04o} or stricter "
            f"(fix: chmod {self.expected:o} {self.path})"
        )


@dataclass(frozen=True)
class Home:
    """Paths inside one trainguard home. Creating the object touches nothing on disk.

    `credentials_dir` is where systemd handed this process the home's KEKs, if it did
    (``$CREDENTIALS_DIRECTORY``); it does not make two homes with the same root different.
    """

    root: Path
    credentials_dir: Path | None = field(default=None, compare=False)

    @classmethod
    def resolve(cls, flag: str | Path | None, environ: Mapping[str, str]) -> Home:
        """The home from `--home`, else $TRAINGUARD_HOME, else ~/.trainguard (or the system
        home when running as root under systemd, which sets $STATE_DIRECTORY), with the
        systemd credentials folder from $CREDENTIALS_DIRECTORY. Only entry points call this:
        they pass their environment."""
        creds = environ.get(ENV_CREDENTIALS)
        credentials_dir = Path(creds) if creds else None
        if flag:
            root = Path(flag).expanduser().absolute()
        elif environ.get(ENV_HOME):
            root = Path(environ[ENV_HOME]).expanduser().absolute()
        elif environ.get("STATE_DIRECTORY"):
            root = Path(environ["STATE_DIRECTORY"].split(":")[0])
        else:
            root = Path("~/.trainguard").expanduser().absolute()
        return cls(root, credentials_dir)

    @property
    def config_path(self) -> Path:
        return self.root / "trainguard.toml"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def policy_dir(self) -> Path:
        return self.root / "policy"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def hooks_dir(self) -> Path:
        return self.root / "hooks.d"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def audit_db(self) -> Path:
        return self.state_dir / "audit.db"

    @property
    def users_db(self) -> Path:
        return self.state_dir / "users.db"

    @property
    def queue_db(self) -> Path:
        return self.state_dir / "queue.db"

    @property
    def agent_socket(self) -> Path:
        return self.state_dir / "agent.sock"

    @property
    def node_signing_key(self) -> Path:
        return self.keys_dir / "node.ed25519"

    @property
    def node_verify_key(self) -> Path:
        return self.keys_dir / "node.ed25519.pub"

    def private_dirs(self) -> list[Path]:
        return [
            self.root,
            self.keys_dir,
            self.pki_dir,
            self.policy_dir,
            self.state_dir,
            self.hooks_dir,
            self.quarantine_dir,
        ]

    def exists(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> Home:
        """Raise a clear error unless `trainguard init` has created this home."""
        if not self.exists():
            raise HomeError(
                f"no trainguard home at {self.root}",
                tip="create one with `trainguard init`, or point --home / TRAINGUARD_HOME at it",
            )
        return self

    def create_dirs(self) -> None:
        for d in self.private_dirs():
            d.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            os.chmod(d, PRIVATE_DIR_MODE)

    def check_modes(self) -> list[ModeProblem]:
        """Folders must be 0700 at most, files under keys/ and pki/ 0600 at most."""
        problems: list[ModeProblem] = []
        for d in self.private_dirs():
            if d.exists():
                problems.extend(_too_open(d, PRIVATE_DIR_MODE))
        for d in (self.keys_dir, self.pki_dir):
            if not d.is_dir():
                continue
            for p in sorted(d.iterdir()):
                if p.is_file() and not p.name.endswith((".pub", ".crt", "crl.pem")):
                    problems.extend(_too_open(p, PRIVATE_FILE_MODE))
        return problems


def _too_open(path: Path, allowed: int) -> list[ModeProblem]:
    mode = stat.S_IMODE(path.lstat().st_mode)
    if mode & ~allowed:
        return [ModeProblem(path, mode, allowed)]
    return []
