"""The key service: fresh data keys that only the KEK unwraps, signatures only for checkpoint
manifests, and the same ops registered in the agent's API."""

from __future__ import annotations

import asyncio
import base64

import pytest
from trainguard.core.home import Home


def test_data_keys_are_fresh_and_wrapped_under_the_home_keyring(home: Home, keys) -> None:
    from trainguard.crypto.keyring import open_keyring

    first, second = keys.data_key(), keys.data_key()
    assert first.dek != second.dek and len(first.dek) == 32
    assert open_keyring(home).unwrap_dek(first.wrapped) == first.dek
    assert keys.unwrap_dek(second.wrapped) == second.dek
    assert first.dek.hex() not in repr(first)


def test_agent_registers_the_same_ops_with_their_actions(home: Home) -> None:
    from trainguard.agent.api.keys import OPS, KeyOps

    ops = KeyOps(home).ops()
    assert {op: action for op, (action, _h) in ops.items()} == OPS
    reply = asyncio.run(ops["checkpoint-key"][1]({"op": "checkpoint-key"}, None))
    unwrapped = asyncio.run(ops["checkpoint-unwrap"][1](
        {"kek_id": reply["kek_id"], "kek_version": reply["kek_version"], "wrapped": reply["wrapped"]}, None))
    assert unwrapped["dek"] == reply["dek"]


def test_a_forged_wrapped_key_is_refused(keys) -> None:
    from trainguard.crypto.errors import DecryptionError

    dk = keys.data_key()
    blob = bytearray(dk.wrapped.blob)
    blob[20] ^= 1
    forged = type(dk.wrapped)(dk.wrapped.kek_id, dk.wrapped.version, bytes(blob))
    with pytest.raises(DecryptionError):
        keys.unwrap_dek(forged)
    assert base64.b64encode(dk.dek)  # the genuine one still works
    assert keys.unwrap_dek(dk.wrapped) == dk.dek
