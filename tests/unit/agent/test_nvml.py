"""NVML backends: the scriptable fake, and the real library with or without a GPU."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from trainguard.agent.telemetry.nvml import FakeNvml, GpuProcess, NvmlUnavailable, PynvmlBackend

HAS_GPU = Path("/dev/nvidia0").exists() and shutil.which("nvidia-smi") is not None


def test_fake_defaults_to_idle_devices() -> None:
    fake = FakeNvml(2)
    assert fake.device_count() == 2
    g = fake.read(1)
    assert g.index == 1 and g.util_pct == 0 and g.processes == [] and g.uuid.startswith("GPU-")


def test_fake_set_persists_and_script_steps_per_read() -> None:
    fake = FakeNvml(1)
    fake.set(0, util_pct=97.0, processes=[(4242, 20 << 30, "xmrig")])
    fake.script(0, [{"pcie_tx_bytes_s": 8e9}, {"pcie_tx_bytes_s": 1e5}])
    first, second, third = (fake.read(0) for _ in range(3))
    assert [s.pcie_tx_bytes_s for s in (first, second, third)] == [8e9, 1e5, 1e5]
    assert first.util_pct == third.util_pct == 97.0
    assert first.processes == [GpuProcess(4242, 20 << 30, "xmrig")]
    assert fake.reads == [3]


def test_fake_xid_and_unknown_fields() -> None:
    fake = FakeNvml(1)
    fake.xid(0, 79)
    fake.xid(0, 48)
    g = fake.read(0)
    assert g.xid_errors == 2 and g.last_xid == 48
    with pytest.raises(TypeError, match="utilisation"):
        fake.set(0, utilisation=5)


def test_fake_init_error_and_lost_device() -> None:
    with pytest.raises(NvmlUnavailable):
        FakeNvml(init_error="NVML Shared Library Not Found").device_count()
    fake = FakeNvml(2)
    fake.failing.add(1)
    with pytest.raises(NvmlUnavailable, match="GPU 1"):
        fake.read(1)


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_real_backend_without_gpu_raises_nvml_unavailable() -> None:
    backend = PynvmlBackend()
    with pytest.raises(NvmlUnavailable) as info:
        backend.init()
    assert "NVML" in info.value.message


@pytest.mark.gpu
def test_real_backend_reads_every_gpu() -> None:
    backend = PynvmlBackend()
    count = backend.device_count()
    assert count >= 1
    assert backend.driver_version()
    for i in range(count):
        g = backend.read(i)
        assert g.mem_total_bytes > 0 and 0 <= g.util_pct <= 100
        assert g.uuid.startswith(("GPU-", "MIG-"))
        assert g.power_w is None or g.power_w > 0
        assert g.temp_c is None or 0 < g.temp_c < 120
        assert all(p.pid > 0 for p in g.processes)
    backend.close()
