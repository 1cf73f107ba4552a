"""[FasterVLM] Where a model runs: the ``--device`` values every CLI takes, checked once, and the ``device_map``
each one loads with."""
from __future__ import annotations

import os
import re

import torch

from llava.errors import InputError

DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "auto", "mps")


def check_device(device: str, flag: str = "--device") -> str:
    """``device`` if this machine has it, else one :class:`InputError` naming ``flag`` and the fix.

    ``cpu``; ``cuda`` or ``cuda:N`` (one GPU, the whole model on it); ``auto`` (accelerate spreads a model too big
    for one GPU over all visible GPUs); ``mps`` (Apple silicon).
    """
    device = str(device)
    if device == "cpu":
        return device
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"{flag} mps: this machine has no MPS device (use cpu)")
        return device
    if device != "auto" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise InputError(f"{flag} {device}: expected one of {', '.join(DEVICE_CHOICES)}")
    count = torch.cuda.device_count()
    if count == 0:
        raise InputError(f"{flag} {device}: no CUDA GPU is visible here (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}); use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= count:
        raise InputError(f"{flag} {device}: only {count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return device


def is_accelerator(device: str | torch.device) -> bool:
    """Whether ``device`` is a GPU placement (``cuda``, ``cuda:N`` or ``auto``): fp16 by default, a device map."""
    return str(device) == "auto" or str(device).startswith("cuda")


def device_map_for(device: str | torch.device, device_map=None):
    """The ``from_pretrained`` device map for ``device``: ``"auto"`` only for ``device="auto"``, a caller's own map
    (a dict) as given, otherwise the whole model on the one device (``{"": device}``).

    [FasterVLM] Upstream used ``"auto"`` whenever several GPUs were visible, which ignored ``cuda:N``.
    """
    if str(device) == "auto":
        return "auto"
    if isinstance(device_map, dict):
        return device_map
    return {"": str(device)}
