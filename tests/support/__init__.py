"""Shared test helpers (not collected): one way to build a home directly, without the CLI.

`make_home(root)` creates the folders, a config, KEK v1 and the node's signing key (with its
public half), which is what unit tests of every area need. Tests that need the full `init`
(cluster CA, signed policy, admin with TOTP) drive the real CLI through the `cli` fixture.
"""

from __future__ import annotations

from pathlib import Path

from trainguard.core.home import Home
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.signing import SigningKey

__all__ = ["make_home"]


def make_home(root: Path, *, node: str = "node-1", keyring: bool = True) -> Home:
    """A private home with a node signing key and (by default) a keyring."""
    home = Home(root)
    home.create_dirs()
    home.config_path.write_text(f'[node]\nname = "{node}"\n')
    home.config_path.chmod(0o600)
    if keyring:
        Keyring.create(home.keys_dir)
    key = SigningKey.generate()
    key.save(home.node_signing_key)
    if not home.node_verify_key.exists():
        key.public_key().save(home.node_verify_key)
    # As `trainguard init` does: the audit log with its signed genesis (opening a home whose
    # log is missing is refused as tampering).
    from trainguard.core.config import load_config
    from trainguard.evidence.embedded import create_home_log

    create_home_log(home, load_config(home.config_path, {}), key)
    return home
