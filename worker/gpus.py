"""The GPUs this worker may use, read through NVML (``nvidia-ml-py``): for its status record (the
dashboard) and its Prometheus gauges.

Devices are found the way CUDA finds them from ``CUDA_VISIBLE_DEVICES``: an index, a ``GPU-<uuid>``
or a ``MIG-<uuid>`` per entry, in order, stopping at the first entry that names no device; unset
means every GPU. Each GPU is labelled by its UUID, which stays true whatever the numbering (a MIG
slice has its own). NVML is not CUDA: asking it never initialises a CUDA context. No NVML (a CPU
host, no driver) means no GPUs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    ordinal: int  # the CUDA device number inside this process (position in CUDA_VISIBLE_DEVICES)
    uuid: str
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_pct: float | None  # None where NVML does not measure it (MIG slices)
    temperature_c: float | None
    power_w: float | None

    def as_status(self) -> dict[str, Any]:
        """The shape of a worker status record's ``gpus`` entries (read by the dashboard)."""
        return {
            "index": self.ordinal,
            "uuid": self.uuid,
            "name": self.name,
            "memory_used_mb": round(self.memory_used_bytes / 2**20, 1),
            "memory_total_mb": round(self.memory_total_bytes / 2**20, 1),
            "utilization_pct": self.utilization_pct,
        }


def _nvml() -> Any | None:
    """The initialised NVML module, or None where there is no NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()  # reference-counted by NVML: cheap to repeat
    except pynvml.NVMLError:
        return None
    return pynvml


def visible_handles(nvml: Any, visible: str | None) -> list[Any]:
    """NVML handles of the devices `visible` (a ``CUDA_VISIBLE_DEVICES`` value) selects, in CUDA's order."""
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for entry in (e.strip() for e in visible.split(",")):
        try:
            if entry.isdigit():
                handles.append(nvml.nvmlDeviceGetHandleByIndex(int(entry)))
            elif entry.startswith(("GPU-", "MIG-")):
                handles.append(nvml.nvmlDeviceGetHandleByUUID(entry))
            else:
                break  # CUDA ignores this entry and every one after it ("-1", "", a typo)
        except nvml.NVMLError:
            break
    return handles


def _optional(call: Any, *args: Any) -> Any | None:
    try:
        return call(*args)
    except Exception:  # NVMLError_NotSupported on MIG slices and some boards
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_gpus(nvml: Any | None = None, visible: str | None = None) -> list[GpuReading]:
    """One reading per GPU this process may use; [] without NVML. `visible` defaults to the
    process's ``CUDA_VISIBLE_DEVICES``."""
    nvml = nvml or _nvml()
    if nvml is None:
        return []
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    readings = []
    for ordinal, handle in enumerate(visible_handles(nvml, visible)):
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = _optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        temperature = _optional(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        power_mw = _optional(nvml.nvmlDeviceGetPowerUsage, handle)
        readings.append(
            GpuReading(
                ordinal=ordinal,
                uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
                memory_used_bytes=int(memory.used),
                memory_total_bytes=int(memory.total),
                utilization_pct=float(utilization.gpu) if utilization is not None else None,
                temperature_c=float(temperature) if temperature is not None else None,
                power_w=power_mw / 1000 if power_mw is not None else None,
            )
        )
    return readings


class GpuCollector:
    """Prometheus gauges of this worker's GPUs, read from NVML at scrape time, labelled by UUID."""

    def __init__(self, worker_id: str, nvml: Any | None = None) -> None:
        self.worker_id = worker_id
        self.nvml = nvml

    def collect(self) -> Iterator[Metric]:
        labels = ["worker", "gpu_uuid", "gpu_name", "ordinal"]
        families = {
            "used": GaugeMetricFamily("vidq_gpu_memory_used_bytes", "GPU memory in use.", labels=labels),
            "total": GaugeMetricFamily("vidq_gpu_memory_total_bytes", "GPU memory in all.", labels=labels),
            "util": GaugeMetricFamily(
                "vidq_gpu_utilization_ratio", "Share of the last sample period the GPU was busy.", labels=labels
            ),
            "temp": GaugeMetricFamily("vidq_gpu_temperature_celsius", "GPU core temperature.", labels=labels),
            "power": GaugeMetricFamily("vidq_gpu_power_watts", "GPU power draw.", labels=labels),
        }
        try:
            readings = read_gpus(self.nvml)
        except Exception as exc:  # a driver hiccup must not break the scrape of everything else
            log.warning("could not read the GPUs through NVML: %s", exc)
            readings = []
        for gpu in readings:
            values = [self.worker_id, gpu.uuid, gpu.name, str(gpu.ordinal)]
            families["used"].add_metric(values, gpu.memory_used_bytes)
            families["total"].add_metric(values, gpu.memory_total_bytes)
            if gpu.utilization_pct is not None:
                families["util"].add_metric(values, gpu.utilization_pct / 100)
            if gpu.temperature_c is not None:
                families["temp"].add_metric(values, gpu.temperature_c)
            if gpu.power_w is not None:
                families["power"].add_metric(values, gpu.power_w)
        yield from families.values()
