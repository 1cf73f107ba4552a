"""Weight files on disk: checking them before ``from_pretrained`` and reading a prefix's tensors without loading a
whole shard (the LanguageBind towers, a transformers-format Video-LLaVA's towers)."""
from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import torch

from llava.errors import InputError


def check_weight_files(model_path: str | os.PathLike) -> None:
    """Name a missing, truncated or damaged weight file before ``from_pretrained`` fails on it somewhere inside.

    Checks what can be checked without reading the weights: every shard an ``*.index.json`` lists exists; a
    safetensors file holds its whole header and the data that header declares; a ``.bin`` file is a readable zip
    archive (torch's format) with its central directory present.
    """
    folder = Path(model_path)
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{index}: not a valid weight index ({e!r})") from None
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                raise InputError(f"{folder / shard}: weight shard listed in {index.name} is missing")
    for path in sorted(folder.glob("*.safetensors")):
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            header = f.read(header_len) if 0 <= header_len <= size - 8 else b""
        try:
            tensors = json.loads(header)
            end = max((t["data_offsets"][1] for k, t in tensors.items() if k != "__metadata__"), default=0)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, IndexError, AttributeError):
            raise InputError(f"{path}: not a complete safetensors file (damaged or truncated header)") from None
        if size < 8 + header_len + end:
            raise InputError(f"{path}: truncated: {size} bytes, its header declares {8 + header_len + end}")
    for path in sorted(folder.glob("*.bin")):
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"{path}: not a complete PyTorch weight file ({e})") from None


def weight_files(folder: Path) -> list[Path]:
    """A tower folder's weight files: safetensors if any, else PyTorch .bin (single file or shards)."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def read_prefixed(files: list[Path], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix*`` in weight files (safetensors or PyTorch .bin), prefix stripped.

    Only those tensors are read: safetensors by name, .bin files memory-mapped, so a 10 GB LLM shard is
    never loaded whole.
    """
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as shard:
                state.update({k[len(prefix):]: shard.get_tensor(k) for k in shard.keys() if k.startswith(prefix)})
        else:
            shard = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            state.update({k[len(prefix):]: v.clone() for k, v in shard.items() if k.startswith(prefix)})
    # transformers 4.31 saved CLIP's position_ids buffer; it is arange(N+1), implicit here.
    state.pop("embeddings.position_ids", None)
    return state


def checkpoint_files(model_path: str | os.PathLike, prefix: str) -> list[Path]:
    """The weight files of a checkpoint folder that its index says hold ``prefix*`` tensors (safetensors first,
    as transformers prefers them); an unsharded checkpoint's single file. Empty when there are none."""
    folder = Path(model_path)
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
            return sorted({folder / name for key, name in weight_map.items() if key.startswith(prefix)})
        if (folder / single).is_file():
            return [folder / single]
    return []


def read_tower_state(model_path: str | os.PathLike, attr: str) -> dict:
    """A Video-LLaVA tower's tensors (``image_tower`` / ``video_tower``) from a transformers-format checkpoint, named
    as ``languagebind.LanguageBindVisionTransformer`` names them. The towers are built from their weights when
    they load (``_LanguageBindTower.set_weights``), so ``from_pretrained`` leaves these keys alone."""
    for prefix in (f"{attr}.vision_model.", f"{attr}."):  # as transformers 4.x nests CLIPVisionModel, and 5.x flat
        state = read_prefixed(checkpoint_files(model_path, prefix), prefix)
        if state:
            return state
    return {}
