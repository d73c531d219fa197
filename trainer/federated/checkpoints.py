"""Sealed, signed global models: a checkpoint per round on the server, a signed model manifest
with every round's instruction, verified by each site before it loads the model.

Server side, after round r: the global weights go through the trainer's own checkpoint code
(`trainguard.trainer.checkpoint.CheckpointStore`: a sealed stream whose data key and manifest
signature come from the key service, the agent or a key process of the launcher's kind, so the
server process holds no KEK and no home signing key) as ``<run>/checkpoints/step-0000000r.tgseal``.

Towards the sites: the server signs a model manifest ``{"format", "run", "round", "params":
{"sha256", "arrays"}, "checkpoint": {"name", "sha256"} | null}`` with its cluster node
certificate key (the fl-server certificate of its TLS connection) and sends manifest, signature,
certificate and the CA's CRL with the fit instruction. ``params.sha256`` hashes every array the
site receives (dtype, shape and bytes, in order), so a site that checks it knows these are
exactly the weights of that round's checkpoint. A site verifies before it loads anything: the
certificate is issued by the cluster CA, valid, not revoked (its own CRL when it has one, else
the CA-signed CRL the server sent), names the node ``fl-server`` of this cluster; the signature
covers ``DOMAIN || canonical_json(manifest)``; the round is the one it is asked to train; the
hash matches. Any failure refuses the model: the site trains nothing and answers with the
reason, which the server turns into a `checkpoint-tampered` incident.

The signature check reuses the site admission's (`membership.verify_site`, which also checks
chain, CRL, validity and node name); the distinct DOMAIN keeps a model signature from ever
passing for an admission proof and the other way round.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from trainguard.crypto.signing import canonical_json
from trainguard.trainer.federated.membership import SiteRefused, prove, verify_site

__all__ = ["DOMAIN", "SERVER_IDENTITY", "GlobalModels", "ModelRefused", "ModelSigner",
           "params_digest", "verify_model"]

log = logging.getLogger(__name__)

DOMAIN = b"trainguard-fl-global-model-v1\0"
SERVER_IDENTITY = "fl-server"  # the node name on the server's certificate (run.SERVER_NAME)
FORMAT = 1
# keys of the fit instruction's config
K_MANIFEST, K_SIG, K_CERT, K_CRL = "tg_model_manifest", "tg_model_sig", "tg_model_cert", "tg_crl"


class ModelRefused(Exception):
    """A site refused the global model it was sent; `reason` goes to the server's incident."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def params_digest(arrays: Sequence[np.ndarray]) -> str:
    """SHA-256 over every array's dtype, shape and C-order bytes, in order."""
    h = hashlib.sha256()
    h.update(len(arrays).to_bytes(4, "big"))
    for a in arrays:
        a = np.ascontiguousarray(a)
        head = json.dumps([a.dtype.str, list(a.shape)]).encode()
        h.update(len(head).to_bytes(4, "big") + head)
        h.update(a.nbytes.to_bytes(8, "big"))
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSigner:
    """Signs each round's model manifest with the server's cluster node certificate key."""

    run: str
    cert_pem: bytes
    key_pem: bytes
    crl_pem: bytes

    def __repr__(self) -> str:  # never the key
        return f"ModelSigner(run={self.run!r})"

    def fit_config(self, rnd: int, arrays: Sequence[np.ndarray],
                   checkpoint: dict[str, Any] | None) -> dict[str, str]:
        """The config entries that go with the model of round `rnd` (the round sites train)."""
        manifest = {"format": FORMAT, "run": self.run, "round": rnd,
                    "params": {"sha256": params_digest(arrays), "arrays": len(arrays)},
                    "checkpoint": checkpoint}
        body = canonical_json(manifest)
        sig = prove(self.key_pem, DOMAIN + body)
        return {K_MANIFEST: body.decode(), K_SIG: base64.b64encode(sig).decode(),
                K_CERT: self.cert_pem.decode(), K_CRL: self.crl_pem.decode()}


def verify_model(config: dict[str, Any], arrays: Sequence[np.ndarray], *, ca_pem: bytes,
                 crl_pem: bytes | None, rnd: int) -> dict[str, Any]:
    """The verified manifest of the model a site was sent; raises ModelRefused (reason:
    unsigned, bad-signature, foreign-ca, revoked, expired, not-the-server, wrong-round,
    params-mismatch)."""
    try:
        body = str(config[K_MANIFEST]).encode()
        sig = base64.b64decode(str(config[K_SIG]), validate=True)
        cert = str(config[K_CERT]).encode()
    except (KeyError, ValueError) as exc:
        raise ModelRefused("unsigned") from exc
    crl = crl_pem if crl_pem else str(config.get(K_CRL, "")).encode()
    try:
        verify_site(ca_pem=ca_pem, crl_pem=crl, sites={SERVER_IDENTITY}, cert_pem=cert,
                    nonce=DOMAIN + body, signature=sig)
    except SiteRefused as exc:
        reason = {"bad-proof": "bad-signature", "not-listed": "not-the-server",
                  "not-a-node": "not-the-server"}.get(exc.reason, exc.reason)
        raise ModelRefused(reason) from exc
    try:
        manifest = json.loads(body)
        ok_round = manifest["format"] == FORMAT and manifest["round"] == rnd
        digest, count = manifest["params"]["sha256"], manifest["params"]["arrays"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelRefused("bad-signature") from exc
    if not ok_round:
        raise ModelRefused("wrong-round")
    if count != len(arrays) or digest != params_digest(arrays):
        raise ModelRefused("params-mismatch")
    return dict(manifest)


class GlobalModels:
    """The server's sealed, signed checkpoint of each round's global model, through the
    trainer's `CheckpointStore` (public API only) and the key service."""

    def __init__(self, directory: Path, keys: Any, trust: Any,
                 names: Sequence[str], close: Callable[[], None] = lambda: None) -> None:
        from trainguard.trainer.checkpoint import CheckpointStore

        self.store = CheckpointStore(directory, keys, trust, keep=1 << 30)
        self.names = list(names)
        self._close = close
        self.saved: list[dict[str, Any]] = []

    @classmethod
    def open(cls, home_root: Path, run_dir: Path, names: Sequence[str]) -> GlobalModels:
        """Checkpoints in ``run_dir/checkpoints`` with keys from the agent or a key process."""
        from trainguard.core.home import Home
        from trainguard.trainer.keys import KeyClient
        from trainguard.trainer.launcher import key_service, trust_for
        from trainguard.trainer.rundir import RunDir

        home = Home(home_root)
        socket_path, proc = key_service(home, RunDir(run_dir))
        client = KeyClient(socket_path)

        def close() -> None:
            client.close()
            if proc is not None:
                proc.close()

        return cls(run_dir / "checkpoints", client, trust_for(home), names, close)

    def save(self, rnd: int, arrays: Sequence[np.ndarray]) -> dict[str, Any]:
        """Seal and sign round `rnd`'s model; returns {"round", "path", "sha256", "name"}."""
        import torch

        state = {k: torch.as_tensor(np.array(a, copy=True)) for k, a in zip(self.names, arrays, strict=True)}
        info = self.store.save({"step": rnd, "state": state}, rnd)
        rec = {"round": rnd, "path": str(info.path), "sha256": info.sha256, "name": info.path.name}
        self.saved.append(rec)
        return rec

    def close(self) -> None:
        self._close()
