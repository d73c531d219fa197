"""Who may call the agent API, and for what (deny by default).

* unix socket: the caller's uid (SO_PEERCRED). root, the agent's own uid and `allowed_uids` are
  the node itself and may use every op. (The socket is 0600 in a 0700 folder, so nobody else can
  even connect; the uid check is the second wall.)
* TCP mTLS: the SPIFFE identity of a client certificate from this cluster's CA (checked
  against the CRL on every handshake, so `trainguard pki revoke` cuts a peer off).
  - node identities of this cluster hold the built-in ``node`` role: ``audit:submit`` and
    ``incident:submit`` (the ops ``event``, ``events``, ``incident``);
  - users listed in `[agent] admin_names` may use every op;
  - otherwise the signed policy's engine decides the op's action (``audit:read`` for
    ``status``, ``incidents``, ``export``) on resource ``agent/<node>`` in every project. No
    API op is a privileged action, so a certificate stands in for the login session; allowed
    requests are not audited one by one (they would double the log), denials are.

Every denial is written to the audit log (``api.denied``).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainguard.core.errors import AccessDenied, TrainguardError
from trainguard.evidence.audit_log import AuditLog

__all__ = ["ApiAuthorizer", "ApiPrincipal", "PolicyCheck"]

log = logging.getLogger(__name__)

_POLICY_TTL_SECONDS = 30.0  # a re-signed policy applies to the API within this long

NODE_ACTIONS = frozenset({"audit:submit", "incident:submit"})

# (principal, action) -> True allow / False deny / None "no policy available"
PolicyCheck = Callable[["ApiPrincipal", str], bool | None]


@dataclass(frozen=True)
class ApiPrincipal:
    name: str  # "uid:1000" or the SPIFFE URI
    transport: str  # unix | tls
    uid: int | None = None
    pid: int | None = None
    kind: str | None = None  # node | user (TLS only)
    ident: str | None = None  # the node or user name (TLS only)

    @classmethod
    def local(cls, uid: int, pid: int) -> ApiPrincipal:
        return cls(f"uid:{uid}", "unix", uid=uid, pid=pid)


class ApiAuthorizer:
    def __init__(
        self,
        *,
        node: str,
        cluster: str,
        owner_uid: int | None = None,
        allowed_uids: list[int] | None = None,
        admin_names: list[str] | None = None,
        policy_check: PolicyCheck | None = None,
    ) -> None:
        self.node = node
        self.cluster = cluster
        self.local_uids = {
            0,
            os.geteuid() if owner_uid is None else owner_uid,
            *(allowed_uids or []),
        }
        self.admin_names = set(admin_names or [])
        self._policy_check = policy_check

    def tls_principal(self, ssl_object: ssl.SSLObject | None) -> ApiPrincipal:
        """The verified identity of a TLS peer of this cluster (raises `PkiError` otherwise)."""
        from trainguard.crypto.pki import PkiError, peer_identity

        if ssl_object is None:
            raise PkiError("no TLS session")
        ident = peer_identity(ssl_object, self.cluster)
        return ApiPrincipal(ident.uri, "tls", kind=ident.kind.value, ident=ident.name)

    def allowed(self, p: ApiPrincipal, action: str) -> bool:
        if p.transport == "unix":
            return p.uid in self.local_uids
        if p.kind == "user" and p.ident in self.admin_names:
            return True
        verdict = self._policy_check(p, action) if self._policy_check else None
        if verdict is not None:
            return verdict
        return p.kind == "node" and action in NODE_ACTIONS

    def check(self, p: ApiPrincipal, action: str, audit: AuditLog | None = None) -> None:
        """Return if `p` may perform `action`, else audit and raise `AccessDenied`."""
        if self.allowed(p, action):
            return
        if audit is not None:
            audit.append("api.denied", p.name, {"action": action, "transport": p.transport})
        raise AccessDenied("access denied")


def policy_check_for_home(home: Any, config: Any, audit: AuditLog) -> PolicyCheck:
    """A `PolicyCheck` backed by the home's signed policy; None verdicts when it has none."""

    cache: dict[str, Any] = {"ac": None, "at": 0.0}

    def check(p: ApiPrincipal, action: str) -> bool | None:
        if p.transport != "tls" or not p.ident:
            return None
        if p.kind == "node" and action in NODE_ACTIONS:
            return None  # the built-in node role; cut a node off by revoking its certificate
        try:
            from trainguard.policy import AccessControl

            now = time.monotonic()
            if cache.get("ac") is None or now - cache["at"] > _POLICY_TTL_SECONDS:
                cache["ac"], cache["at"] = AccessControl.open(home, config, audit), now
            ac = cache["ac"]
            resource = f"agent/{config.node.name}"
            return bool(ac.engine.decide(p.ident, "*", resource, action).allowed)
        except (ImportError, TrainguardError, OSError) as exc:
            log.info("no usable policy for API authorization (%s); static rules apply", exc)
            return None

    return check
