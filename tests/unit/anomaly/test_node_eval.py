"""The node detector on simulated node telemetry it was not tuned on (`anomaly.node_eval`):
clean days stay within the stated false-alarm budget; a memory leak and a miner are caught.
(Exfiltration bursts are caught in only some runs: README "Node telemetry" has the numbers.)"""

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
def test_held_out_clean_days_stay_within_budget_and_a_leak_and_a_miner_are_detected():
    assert not set(HELD_OUT) & set(DEV_SEEDS)
    r = evaluate(HELD_OUT, HELD_OUT[:3], days=3.0, interval_s=60.0,
                 anomalies=("memory_leak", "miner"))
    # budget 1 a day; 8 clean days cannot resolve the rate finely (the benchmark runs 90 days:
    # README), so a margin: it was 1.8x the budget before the 2 h episode cool-down
    fa = r["false_alarms_per_day"]
    assert fa["mean"] <= 1.25 * r["false_alarms_per_day_budget"], fa
    assert r["detection"]["memory_leak"]["detected"] == "3/3", r["detection"]
    # on a GPU no registered job holds (`gpu_util_no_job`); 5/12 without that column
    assert int(r["detection"]["miner"]["detected"].split("/")[0]) >= 2, r["detection"]
