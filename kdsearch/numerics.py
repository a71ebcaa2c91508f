"""How a trial computes on its device: autocast dtype and memory format.

``auto`` means the fast path where the hardware has one: bf16 autocast on a GPU and on a
CPU with native bf16 matrix units (Intel AMX or AVX512-BF16, where it trains 1.7-1.9x
faster than fp32), fp32 on other CPUs (which would only emulate bf16, more slowly); and
channels-last tensors everywhere (oneDNN's fp32 convolutions on an AVX2 CPU step ADPS,
DSKD and DMDD 10-13 % faster in it, RD4AD and MRKD about the same). Both can be forced
anywhere, so that the CUDA code path (bf16 activations meeting fp32 losses and synthesis,
channels-last strides) runs and is tested on any machine.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "bf16", "fp32")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class Numerics:
    """The resolved numerics of one run."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast on this device, or nothing for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def precision(self) -> str:
        """``bf16`` or ``fp32``: what the run computes in."""
        return "fp32" if self.autocast_dtype is None else "bf16"

    @property
    def memory_format(self) -> str:
        """``channels_last`` or ``contiguous``."""
        return "channels_last" if self.channels_last else "contiguous"

    def device_model(self) -> str | None:
        """The GPU's name or the CPU's model: what the row's numbers were computed on."""
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_model()

    def format(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D tensor in this run's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def device_name(device: torch.device) -> str:
    """A device as people name it: ``NVIDIA H200``, ``cpu (2 threads)``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux's cpuinfo lists them; empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as file:
            return frozenset(next((line.split(":", 1)[1].split() for line in file if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16; read from Linux's cpuinfo)."""
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolved_precision(precision: str, device_type: str) -> str:
    """The precision ``precision`` (``auto``, ``bf16`` or ``fp32``) resolves to on a device of
    this type here: ``auto`` → ``bf16`` on CUDA and on CPUs with bf16 units, else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" or (device_type == "cpu" and cpu_has_bf16_units()) else "fp32"


def resolve_numerics(device: torch.device, precision: str = "auto", memory_format: str = "auto") -> Numerics:
    """``auto`` → bf16 on CUDA and on CPUs with bf16 units, else fp32; channels-last everywhere."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    bf16 = resolved_precision(precision, device.type) == "bf16"
    channels_last = memory_format in ("channels_last", "auto")
    return Numerics(device, torch.bfloat16 if bf16 else None, channels_last)


def cpu_model() -> str | None:
    """This CPU's model name as Linux's cpuinfo gives it (``AMD EPYC``); ``None`` where unknown."""
    import platform

    try:
        with open("/proc/cpuinfo") as file:
            name = next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or None
