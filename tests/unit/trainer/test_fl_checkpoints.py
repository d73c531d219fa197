"""Sealed, signed global models: a site loads a round's model only when the server's signed
manifest verifies against the cluster CA and matches the arrays it received; the server's
per-round checkpoints go through the trainer's sealed store and a tampered one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from trainguard.core.home import Home
from trainguard.crypto.pki import ClusterCA
from trainguard.trainer.errors import CheckpointTampered
from trainguard.trainer.federated.checkpoints import (
    K_MANIFEST,
    GlobalModels,
    ModelRefused,
    ModelSigner,
    verify_model,
)
from trainguard.trainer.federated.client import SiteClient
from trainguard.trainer.federated.config import load_fl_config
from trainguard.trainer.federated.strategy import TrainguardStrategy
from trainguard.trainer.launcher import trust_for

FL = Path(__file__).resolve().parents[3] / "trainer" / "examples" / "fl-digits.toml"
ARRAYS = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(4, np.float32)]


@pytest.fixture
def ca(tmp_path: Path) -> ClusterCA:
    ca = ClusterCA.create(tmp_path / "pki", "hospitals")
    ca.write_crl()
    return ca


def _signer(ca: ClusterCA, name: str = "fl-server") -> ModelSigner:
    cert, key = ca.issue(name, "node")
    return ModelSigner("run-1", cert, key, ca.crl_path.read_bytes())


def _verify(ca: ClusterCA, config: dict, arrays=ARRAYS, rnd: int = 2, crl: bytes | None = None) -> dict:
    return verify_model(config, arrays, ca_pem=ca.ca_path.read_bytes(), crl_pem=crl, rnd=rnd)


def _reason(ca: ClusterCA, config: dict, **kw) -> str:
    with pytest.raises(ModelRefused) as err:
        _verify(ca, config, **kw)
    return err.value.reason


def test_a_signed_model_verifies_and_names_its_round_and_checkpoint(ca: ClusterCA) -> None:
    cfg = _signer(ca).fit_config(2, ARRAYS, {"round": 1, "sha256": "ab" * 32, "path": "x"})
    m = _verify(ca, cfg)
    assert m["round"] == 2 and m["run"] == "run-1" and m["checkpoint"]["sha256"] == "ab" * 32
    assert "PRIVATE" not in json.dumps(cfg) and "PRIVATE" not in repr(_signer(ca))


def test_changed_weights_a_replayed_round_and_an_edited_manifest_are_refused(ca: ClusterCA) -> None:
    cfg = _signer(ca).fit_config(2, ARRAYS, None)
    tampered = [ARRAYS[0].copy(), ARRAYS[1].copy()]
    tampered[1][0] += 1e-3
    assert _reason(ca, cfg, arrays=tampered) == "params-mismatch"
    assert _reason(ca, cfg, arrays=[ARRAYS[0]]) == "params-mismatch"
    assert _reason(ca, cfg, arrays=[a.astype(np.float64) for a in ARRAYS]) == "params-mismatch"
    assert _reason(ca, cfg, rnd=3) == "wrong-round"  # an old model sent again
    edited = dict(cfg, **{K_MANIFEST: cfg[K_MANIFEST].replace('"round":2', '"round":3')})
    assert _reason(ca, edited, rnd=3) == "bad-signature"
    assert _reason(ca, {"round": 2}) == "unsigned"


def test_signers_other_than_the_clusters_fl_server_are_refused(ca: ClusterCA, tmp_path: Path) -> None:
    foreign = ClusterCA.create(tmp_path / "other", "hospitals")
    foreign.write_crl()
    assert _reason(ca, _signer(foreign).fit_config(2, ARRAYS, None)) == "foreign-ca"
    assert _reason(ca, _signer(ca, "site-1").fit_config(2, ARRAYS, None)) == "not-the-server"
    cfg = _signer(ca).fit_config(2, ARRAYS, None)
    ca.revoke("fl-server")
    ca.write_crl()
    # the site's own CRL wins over the (older) one the server sent
    assert _reason(ca, cfg, crl=ca.crl_path.read_bytes()) == "revoked"


def test_a_site_refuses_a_tampered_model_without_training(ca: ClusterCA) -> None:
    cfg = load_fl_config(FL)
    site = SiteClient(cfg, "site-1", trust=(ca.ca_path.read_bytes(), ca.crl_path.read_bytes()))
    arrays = [w.detach().numpy().copy() for w in site.model.state_dict().values()]
    config = {"round": 1, **_signer(ca).fit_config(1, arrays, None)}
    new, n, metrics = site.fit([a.copy() for a in arrays], config)
    assert n > 0 and "refused" not in metrics
    bad = [a.copy() for a in arrays]
    bad[0][0, 0] += 0.5
    assert site.fit(bad, config) == ([], 0, {"site": "site-1", "refused": "params-mismatch"})
    assert site.fit(arrays, {"round": 1})[2]["refused"] == "unsigned"


class _Proxy(ClientProxy):
    def _no(self, *a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("not called")

    get_properties = get_parameters = fit = evaluate = reconnect = _no


def test_the_server_seals_each_round_and_signs_what_it_sends(home: Home, keys, ca: ClusterCA,
                                                              tmp_path: Path) -> None:
    cfg = load_fl_config(FL, ["simulate.tamper_model_round=3"])
    models = GlobalModels(tmp_path / "ck", keys, trust_for(home), ["w", "b", "w2", "b2"])
    s = TrainguardStrategy(cfg, lambda r: None, models=models, signer=_signer(ca))
    params = s.initialize_parameters(SimpleClientManager())
    manager = SimpleClientManager()
    for i in (1, 2, 3):
        manager.register(_Proxy(f"c{i}"))
    (_, ins), *_ = s.configure_fit(1, params, manager)
    from flwr.common import parameters_to_ndarrays

    m = _verify(ca, ins.config, arrays=parameters_to_ndarrays(ins.parameters), rnd=1)
    assert m["checkpoint"]["round"] == 0
    raw = Path(m["checkpoint"]["path"]).read_bytes()
    assert raw.startswith(b"TGSEAL") and b"weight" not in raw  # sealed on disk
    payload, info = models.store.load(Path(m["checkpoint"]["path"]))
    assert info.sha256 == m["checkpoint"]["sha256"] and payload["step"] == 0
    np.testing.assert_array_equal(payload["state"]["w"].numpy(), s.weights[0])
    # TEST FACILITY: round 3's model is altered after signing: a site refuses it
    (_, ins3), *_ = s.configure_fit(3, ndarrays_to_parameters(s.weights), manager)
    assert _reason(ca, ins3.config, arrays=parameters_to_ndarrays(ins3.parameters), rnd=3) == "params-mismatch"
    # a flipped byte in the sealed checkpoint on disk is refused by the store
    path = Path(m["checkpoint"]["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointTampered):
        models.store.load(path)
