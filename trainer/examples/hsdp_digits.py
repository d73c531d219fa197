"""HSDP (hybrid sharding: FSDP2 on a 2-D device mesh) protected by trainguard.

    trainguard train --script trainer/examples/hsdp_digits.py --nproc 4 -- --steps 60

The job of `fsdp2_digits.py` on a (replicate, shard) mesh: with 4 ranks, 2 replicas of a model
sharded over 2 ranks each (on a cluster: replicate across nodes, shard within one). Parameters
are DTensors on the 2-D mesh, so `guard.save` writes a sealed DCP step; a step saved at 4 ranks
resumes at 2 (a 1x2 mesh) through DCP's resharding. An odd world size is sharded in one
replica.
"""

from __future__ import annotations

from trainguard.trainer.examples.fsdp2_digits import parse, train


def mesh_shape(world: int) -> tuple[int, int]:
    """(replicas, shards): 2 shards per replica when the world size allows it."""
    return (world // 2, 2) if world % 2 == 0 and world >= 4 else (1, world)


if __name__ == "__main__":
    train(parse(), mesh_shape)
