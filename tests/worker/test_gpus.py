"""GPUs through NVML, matched the way CUDA reads CUDA_VISIBLE_DEVICES (index, GPU-/MIG- UUID, stop at
the first bad entry) and labelled by UUID. No machine here has a GPU, so NVML itself is played by a
small stand-in with NVML's call signatures; on a CPU host the real module finds no GPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.gpus import GpuCollector, read_gpus


class NVMLError(Exception):
    pass


class StandInNVML:
    """Two boards and one MIG slice of the second; the slice measures no utilisation, as on real MIG."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        self.devices = [
            {"uuid": "GPU-aaaa", "name": "NVIDIA H200", "used": 10 * 2**30, "total": 141 * 2**30, "util": 35},
            {"uuid": "GPU-bbbb", "name": "NVIDIA H200", "used": 2**30, "total": 141 * 2**30, "util": 90},
        ]
        self.mig = {"uuid": "MIG-cccc", "name": "NVIDIA H200 MIG 1g.18gb", "used": 2**29, "total": 18 * 2**30}

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        if index >= len(self.devices):
            raise NVMLError("invalid argument")
        return self.devices[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> dict:
        for device in [*self.devices, self.mig]:
            if device["uuid"] == uuid:
                return device
        raise NVMLError("not found")

    def nvmlDeviceGetUUID(self, handle: dict) -> str:
        return handle["uuid"]

    def nvmlDeviceGetName(self, handle: dict) -> bytes:
        return handle["name"].encode()  # older bindings answer bytes

    def nvmlDeviceGetMemoryInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(used=handle["used"], total=handle["total"])

    def nvmlDeviceGetUtilizationRates(self, handle: dict) -> SimpleNamespace:
        if "util" not in handle:
            raise NVMLError("not supported")
        return SimpleNamespace(gpu=handle["util"])

    def nvmlDeviceGetTemperature(self, handle: dict, sensor: int) -> int:
        return 40

    def nvmlDeviceGetPowerUsage(self, handle: dict) -> int:
        return 250_000


@pytest.mark.parametrize(
    ("visible", "uuids"),
    [
        (None, ["GPU-aaaa", "GPU-bbbb"]),
        ("1", ["GPU-bbbb"]),  # index 1 of the host is CUDA device 0 of this process
        ("GPU-bbbb,GPU-aaaa", ["GPU-bbbb", "GPU-aaaa"]),  # by UUID, in the order given
        ("MIG-cccc", ["MIG-cccc"]),
        ("0,-1,1", ["GPU-aaaa"]),  # CUDA stops at the first invalid entry
        ("GPU-nope,0", []),
        ("", []),
    ],
)
def test_visible_devices_are_found_like_cuda_finds_them(visible: str | None, uuids: list[str]) -> None:
    readings = read_gpus(StandInNVML(), visible=visible)
    assert [g.uuid for g in readings] == uuids
    assert [g.ordinal for g in readings] == list(range(len(uuids)))


def test_gauges_are_labelled_by_uuid(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,MIG-cccc")
    registry = CollectorRegistry()
    registry.register(GpuCollector("w1", nvml=StandInNVML()))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    used = {s.labels["gpu_uuid"]: s.value for s in families["vidq_gpu_memory_used_bytes"].samples}
    assert used == {"GPU-bbbb": 2**30, "MIG-cccc": 2**29}
    utilization = {s.labels["gpu_uuid"]: s.value for s in families["vidq_gpu_utilization_ratio"].samples}
    assert utilization == {"GPU-bbbb": 0.9}  # the MIG slice has none, rather than a made-up 0
    power = next(iter(families["vidq_gpu_power_watts"].samples))
    assert power.value == 250.0 and power.labels["ordinal"] == "0" and power.labels["worker"] == "w1"


def test_a_cpu_host_reports_no_gpus() -> None:
    assert read_gpus(visible="0") == [] or pytest.skip("this machine has an NVIDIA driver")
