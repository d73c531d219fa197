"""trainguard.trainer.dcp: sealed, signed torch.distributed.checkpoint (DCP) checkpoints of
sharded state.

Layout in the checkpoint folder::

    step-00000100.dcp/               DCP's own files, each one sealed stream (crypto.sealed):
        __0_0.distcp, __1_0.distcp   one per rank (offsets inside are plaintext offsets)
        .metadata                    DCP's pickled `Metadata`, sealed like the shards
    step-00000100.dcp.tgsig.json     manifest of every file of the step (kind "directory",
                                     name, size, tag digest of the sealed stream), signed; written
                                     LAST by the coordinator rank, when every rank has written

A step folder without its signed manifest is an unfinished save (a crash, a killed rank) and is
never a candidate for loading, so the newest checkpoint that verifies is always a complete one.

Writing: `SealedDcpWriter` is DCP's `FileSystemWriter` on a file system whose streams seal
everything written (a fresh data key per file from `keys.data_key()`, the key service's
``checkpoint-key``) and record each stream's tag digest (`trainguard.crypto.sealed.stream.
TagTranscript`: header and segment tags, so nothing hashes the body; a KEK rewrap keeps it
valid). Each rank returns its files' digests
with its write results; the coordinator's `finish` writes the sealed ``.metadata``, then signs
the manifest over all of them (``DOMAIN ‖ canonical_json(manifest)``, the signature of
`trainguard.trainer.checkpoint`) and writes it. The same path serves DCP's `async_save`: the
finish runs in DCP's upload thread after every rank's upload.

Loading: `SealedDcpReader.read_metadata` first checks the manifest's signature (`verify`), that
it names this step, that the folder holds exactly its files (no missing, no extra, no links)
with their sizes, and the digest of ``.metadata``; only then is ``.metadata`` unsealed and read by
a restricted unpickler that builds DCP's metadata classes and nothing else (no `pickle.load`).
A shard's digest is checked against the manifest before it is opened (16 bytes read per 1 MiB
segment); the sealed stream then authenticates every segment against those tags as it is read.
Steps signed with a SHA-256 of each file (before the tag digest) still verify. Any failure is `CheckpointTampered`.

Modules: `signed` (keys, signers, the step manifest and its verification), `metadata` (the
restricted unpickler), `storage` (DCP writer and reader on sealed streams), `store`
(`DcpCheckpoints`, `export_single`), `sharding` (is a state sharded? `Guard.save` asks it;
`AppState`, DCP's model + optimizer Stateful).
"""

from __future__ import annotations

from trainguard.trainer.dcp.metadata import load_metadata
from trainguard.trainer.dcp.sharding import AppState, holds_dtensors, is_sharded_state
from trainguard.trainer.dcp.signed import (
    LocalKeys,
    SealingKeys,
    Signer,
    StepInfo,
    Verifier,
    list_steps,
    manifest_path,
    newest_verified,
    signing_key_signer,
    trust_verifier,
    verify_step,
)
from trainguard.trainer.dcp.storage import SealedDcpReader, SealedDcpWriter
from trainguard.trainer.dcp.store import DcpCheckpoints, export_single

__all__ = [
    "AppState",
    "DcpCheckpoints",
    "LocalKeys",
    "SealedDcpReader",
    "SealedDcpWriter",
    "SealingKeys",
    "Signer",
    "StepInfo",
    "Verifier",
    "export_single",
    "holds_dtensors",
    "is_sharded_state",
    "list_steps",
    "load_metadata",
    "manifest_path",
    "newest_verified",
    "signing_key_signer",
    "trust_verifier",
    "verify_step",
]
