"""The node detector on simulated node telemetry it was not tuned on (`anomaly.node_eval`):
clean days stay near the stated false-alarm budget; a memory leak is caught. (The miner and
exfiltration bursts are caught in only some runs: README "Node telemetry" has the numbers.)"""

from __future__ import annotations

import numpy as np
import pytest
from trainguard.agent.detection import NODE_COLUMNS
from trainguard.anomaly.node_eval import COLUMNS, DEV_SEEDS, evaluate, simulate

HELD_OUT = (300, 301, 302, 303)  # not among DEV_SEEDS, not used to choose anything


def test_the_simulator_writes_the_agents_node_row_and_injects_what_it_says():
    assert COLUMNS == NODE_COLUMNS
    clean, none = simulate(7, 2.0, 60.0)
    assert none is None and clean.shape == (2880, len(COLUMNS)) and np.isfinite(clean).all()
    leak, inj = simulate(7, 2.0, 60.0, inject="memory_leak")
    assert inj is not None and inj.start >= 1440
    mem = COLUMNS.index("host_mem_frac")
    assert leak[inj.end - 1, mem] - clean[inj.end - 1, mem] > 0.4  # 6 h at 8 points an hour
    exfil, inj = simulate(7, 2.0, 60.0, inject="exfiltration")
    tx = COLUMNS.index("net_tx_log")
    assert (exfil[inj.start:inj.end, tx] > clean[inj.start:inj.end, tx]).all()
    # the miner runs on a GPU no registered job holds: the coupling column sees it
    miner, inj = simulate(7, 2.0, 60.0, inject="miner")
    nojob = COLUMNS.index("gpu_util_no_job")
    assert miner[inj.start:inj.end, nojob].mean() - clean[inj.start:inj.end, nojob].mean() > 90
    with pytest.raises(ValueError, match="unknown anomaly"):
        simulate(7, 2.0, 60.0, inject="ransomware")


@pytest.mark.slow
def test_held_out_clean_days_stay_near_budget_and_a_memory_leak_is_detected():
    assert not set(HELD_OUT) & set(DEV_SEEDS)
    r = evaluate(HELD_OUT, HELD_OUT[:3], days=3.0, interval_s=60.0, anomalies=("memory_leak",))
    # budget 1 a day; the mean over held-out seeds within a generous margin (measured 1.8x)
    fa = r["false_alarms_per_day"]
    assert fa["mean"] <= 3 * r["false_alarms_per_day_budget"], fa
    leak = r["detection"]["memory_leak"]
    assert leak["detected"] == "3/3", leak
