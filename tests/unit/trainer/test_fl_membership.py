"""Site admission: a proof of key possession for a certificate of this cluster's CA, on the
site list, unexpired and not revoked; anything else is refused with the reason the operator sees."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from trainguard.crypto.pki import ClusterCA
from trainguard.trainer.federated.membership import SiteRefused, prove, verify_site

SITES = ["site-1", "site-2", "site-3"]
NONCE = b"n" * 32


@pytest.fixture
def ca(tmp_path: Path) -> ClusterCA:
    ca = ClusterCA.create(tmp_path / "pki", "hospitals")
    ca.write_crl()
    return ca


def _check(ca: ClusterCA, cert: bytes, key: bytes, *, nonce: bytes = NONCE, sites=SITES) -> str:
    return verify_site(ca_pem=ca.ca_path.read_bytes(), crl_pem=ca.crl_path.read_bytes(),
                       sites=sites, cert_pem=cert, nonce=NONCE, signature=prove(key, nonce))


def test_a_listed_site_with_a_cluster_certificate_is_admitted_under_its_certified_name(ca) -> None:
    cert, key = ca.issue("site-2", "node")
    assert _check(ca, cert, key) == "site-2"


def test_a_certificate_from_a_foreign_ca_is_refused(ca, tmp_path: Path) -> None:
    foreign = ClusterCA.create(tmp_path / "other", "hospitals")  # same cluster name, other key
    cert, key = foreign.issue("site-2", "node")
    with pytest.raises(SiteRefused) as err:
        _check(ca, cert, key)
    assert err.value.reason == "foreign-ca"


def test_a_revoked_certificate_is_refused(ca) -> None:
    cert, key = ca.issue("site-2", "node")
    ca.revoke("site-2")
    ca.write_crl()
    with pytest.raises(SiteRefused) as err:
        _check(ca, cert, key)
    assert err.value.reason == "revoked"


def test_an_expired_certificate_is_refused(ca) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    cert, key = ca.issue("site-2", "node", not_before=old, lifetime=dt.timedelta(hours=1))
    with pytest.raises(SiteRefused) as err:
        _check(ca, cert, key)
    assert err.value.reason == "expired"


def test_a_node_that_is_not_on_the_site_list_or_a_user_certificate_is_refused(ca) -> None:
    cert, key = ca.issue("site-9", "node")
    with pytest.raises(SiteRefused) as err:
        _check(ca, cert, key)
    assert err.value.reason == "not-listed"
    cert, key = ca.issue("site-1", "user")
    with pytest.raises(SiteRefused) as err:
        _check(ca, cert, key)
    assert err.value.reason == "not-a-node"


def test_a_stolen_certificate_without_its_key_is_refused(ca) -> None:
    cert, _ = ca.issue("site-2", "node")
    _, other_key = ca.issue("site-3", "node")
    with pytest.raises(SiteRefused) as err:
        _check(ca, cert, other_key)
    assert err.value.reason == "bad-proof"
    good_cert, good_key = ca.issue("site-1", "node")
    with pytest.raises(SiteRefused):  # a proof for another nonce (a replay) fails too
        _check(ca, good_cert, good_key, nonce=b"x" * 32)
