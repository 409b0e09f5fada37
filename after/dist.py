"""Thin helpers over HF Accelerate, shared by the training loops."""

from __future__ import annotations

from typing import Any

import torch


def mixed_precision(choice: str) -> str:
    """Accelerate's `mixed_precision` for a config's `precision`: "auto" is bf16 on a GPU that
    has it, fp16 on other GPUs, and full precision ("no") on a CPU."""
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def accelerator(precision: str) -> Any:
    """An `accelerate.Accelerator` for this process (CPU, one GPU, or one of several under
    `accelerate launch`)."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision=mixed_precision(precision))
