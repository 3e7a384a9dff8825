"""Mixed precision: which dtype a run computes in, and the autocast context for it.
Independent of Ray, so it can be checked on a GPU machine on its own."""

from contextlib import AbstractContextManager, nullcontext

import torch


def precision(choice: str, device: torch.device) -> torch.dtype:
    """auto: bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPUs."""
    if device.type != "cuda":
        return torch.bfloat16 if choice == "bf16" else torch.float32
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def autocast(device: torch.device, precision: torch.dtype) -> AbstractContextManager:
    if precision == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision)
