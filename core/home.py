"""The trainguard home: every piece of state for one node, and safe file helpers.

Layout (DESIGN "Runtime pieces")::

    trainguard.toml     config
    keys/               keyring (KEK versions) and the node's Ed25519 signing key
    pki/                cluster CA, node certificate, revocation list
    policy/             signed casbin policy
    state/              SQLite databases (audit log, users, hook queue) and agent.sock
    hooks.d/            incident hooks
    quarantine/         files moved aside by the quarantine action

Folders are 0700 and key files 0600; `check_modes` lists anything looser. Key files are opened
with O_NOFOLLOW so a planted symlink cannot redirect a read or a write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trainguard.core.errors import UsageError

ENV_HOME = "TRAINGUARD_HOME"
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
    """Paths inside one trainguard home. Creating the object touches nothing on disk."""

    root: Path

    @classmethod
    def resolve(cls, flag: str | Path | None, environ: dict[str, str] | None = None) -> Home:
        """The home from `--home`, else $TRAINGUARD_HOME, else ~/.trainguard (or the system
        home when running as root under systemd, which sets $STATE_DIRECTORY)."""
        env = environ if environ is not None else dict(os.environ)
        if flag:
            return cls(Path(flag).expanduser().absolute())
        if env.get(ENV_HOME):
            return cls(Path(env[ENV_HOME]).expanduser().absolute())
        if env.get("STATE_DIRECTORY"):
            return cls(Path(env["STATE_DIRECTORY"].split(":")[0]))
        return cls(Path("~/.trainguard").expanduser().absolute())

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


def write_private(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write `data` atomically: a 0600 temporary file in the same folder, fsync, rename.

    A reader never sees a partial file, and a crash leaves either the old or the new content.
    """
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def read_private(path: Path) -> bytes:
    """Read a key file without following symlinks; refuses group/other-readable files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        # `trainguard init` would refuse an existing home (and --force starts a new one whose
        # keys cannot open what the old ones sealed), so the fix is the backup.
        raise HomeError(f"missing key file {path}", tip=RESTORE_KEY_TIP) from exc
    except OSError as exc:
        tip = (
            "replace the symlink with the key file itself (mode 600): key files are never "
            "followed through links"
            if exc.errno == errno.ELOOP
            else RESTORE_KEY_TIP
        )
        raise HomeError(f"cannot open key file {path} safely: {exc.strerror}", tip=tip) from exc
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise HomeError(
                f"key file {path} has mode {mode:04o}, readable by others",
                tip=f"chmod 600 {path}",
            )
        return f.read()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it into place only if the block succeeds.

    On any exception the temporary file is removed, so no partial output is ever left behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    os.close(fd)
    os.chmod(tmp, mode)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
