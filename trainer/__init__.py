"""trainguard.trainer: the hardened distributed trainer on torch.distributed.

Modules: `config` (job config), `launcher` (run folder, torchrun), `preflight` (launch checks),
`worker` (the rank entry point torchrun starts), `membership` (job-key proof), `aggregation`
and `robust` (DDP comm hooks and rules), `checkpoint` (sealed, signed checkpoints),
`consistency` (parameter-hash agreement), `monitor` (Byzantine flags), `simulate` (TEST
FACILITY: fault injection), `models` (example factories), `guard` (the public `Guard` API
for the user's own torchrun script), `context` (the launch context), `keys` (the key-service
client). `Guard` and `StopTraining` are loaded on first use, so importing the package does not
import torch.
"""

from typing import TYPE_CHECKING, Any

from trainguard.trainer.config import Aggregation, Attack, TrainConfig, load_train_config
from trainguard.trainer.errors import (
    CheckpointTampered,
    MembershipError,
    PreflightError,
    ReplicaDivergence,
    TrainConfigError,
    TrainerError,
)

if TYPE_CHECKING:
    from trainguard.trainer.guard import Guard, StopTraining

__all__ = [
    "Aggregation",
    "Attack",
    "CheckpointTampered",
    "Guard",
    "MembershipError",
    "PreflightError",
    "ReplicaDivergence",
    "StopTraining",
    "TrainConfig",
    "TrainConfigError",
    "TrainerError",
    "load_train_config",
]


def __getattr__(name: str) -> Any:
    if name in ("Guard", "StopTraining"):
        from trainguard.trainer import guard

        return getattr(guard, name)
    raise AttributeError(f"module 'trainguard.trainer' has no attribute {name!r}")
