"""A protected script for the key-isolation test: a bf16 model, a checkpoint, and a report of
what the worker process holds (open file descriptors, key objects, hashes of every byte string
reachable from the guard). Usage: probe_keys.py OUT_DIR"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from trainguard.trainer import Guard


def reachable(root: object, limit: int = 200_000) -> list[object]:
    seen: set[int] = set()
    stack, out = [root], []
    while stack and len(out) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, type(sys))):
            continue
        seen.add(id(obj))
        out.append(obj)
        stack.extend(gc.get_referents(obj))
    return out


def main() -> None:
    out = Path(sys.argv[1])
    with Guard.from_env() as guard:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        model = model.to(torch.bfloat16)
        ddp = guard.wrap(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        mask = torch.zeros(4, dtype=torch.bool)
        state = {"model": ddp, "optim": opt, "mask": mask, "z": torch.zeros(2, dtype=torch.complex64)}
        resumed = guard.resume(state)
        if resumed is None:
            for step in range(1, 4):
                x = torch.randn(4, 8, dtype=torch.bfloat16)
                loss = ddp(x).float().pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                guard.step(step, loss=loss)
            mask[1] = True
            state["z"][0] = 1 + 2j
            guard.save(3, state)
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
        objs = reachable(guard)
        report = {
            "rank": guard.rank, "resumed": resumed,
            "dtype": str(model[0].weight.dtype),
            "weight_sum": float(model[0].weight.float().sum()),
            "mask": mask.tolist(), "z": [str(v) for v in state["z"].tolist()],
            "fds": fds,
            "key_types": sorted({type(o).__name__ for o in objs
                                 if type(o).__name__ in ("Keyring", "SigningKey", "KeyService")}),
            "byte_hashes": sorted({hashlib.sha256(bytes(o)).hexdigest() for o in objs
                                   if isinstance(o, (bytes, bytearray)) and len(o) == 32}),
        }
        (out / f"probe-{guard.rank}-{resumed}.json").write_text(json.dumps(report))
        guard.report(final_accuracy=1.0)


if __name__ == "__main__":
    main()
