"""trainguard.trainer: the hardened distributed trainer on torch.distributed.

Modules: `config` (job config), `launcher` (run folder, torchrun), `preflight` (launch checks),
`worker` (the rank entry point torchrun starts), `membership` (job-key proof), `aggregation`
and `robust` (DDP comm hooks and rules), `checkpoint` (sealed, signed checkpoints),
`consistency` (parameter-hash agreement), `monitor` (Byzantine flags), `simulate` (TEST
FACILITY: fault injection), `models` (example factories). Only config and errors are
re-exported here, so importing the package does not import torch.
"""

from trainguard.trainer.config import Aggregation, Attack, TrainConfig, load_train_config
from trainguard.trainer.errors import (
    CheckpointTampered,
    MembershipError,
    PreflightError,
    ReplicaDivergence,
    TrainConfigError,
    TrainerError,
)

__all__ = [
    "Aggregation",
    "Attack",
    "CheckpointTampered",
    "MembershipError",
    "PreflightError",
    "ReplicaDivergence",
    "TrainConfig",
    "TrainConfigError",
    "TrainerError",
    "load_train_config",
]
