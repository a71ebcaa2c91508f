"""How a trial computes on its device: autocast dtype and memory format.

``auto`` means the fast CUDA path (bf16 autocast, channels-last tensors) on a GPU and
plain fp32 on a CPU. Both can be forced anywhere, so that the CUDA code path (bf16
activations meeting fp32 losses and synthesis, channels-last strides) runs and is tested
on a machine without a GPU.
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

    def format(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-D tensor in this run's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def device_name(device: torch.device) -> str:
    """A device as people name it: ``NVIDIA H200``, ``cpu (2 threads)``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def resolve_numerics(device: torch.device, precision: str = "auto", memory_format: str = "auto") -> Numerics:
    """``auto`` → bf16 + channels-last on CUDA, fp32 + contiguous elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
    on_cuda = device.type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and on_cuda)
    channels_last = memory_format == "channels_last" or (memory_format == "auto" and on_cuda)
    return Numerics(device, torch.bfloat16 if bf16 else None, channels_last)
