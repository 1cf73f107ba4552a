"""Picks the vision tower class for ``mm_vision_tower`` (LLaVA's ``build_vision_tower``)."""
from __future__ import annotations

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower


def build_vision_tower(vision_tower_cfg, base_dir: str | None = None, **kwargs) -> CLIPVisionTower:
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if not name:
        raise ValueError("the model config names no vision tower (mm_vision_tower)")
    return CLIPVisionTower(name, args=vision_tower_cfg, base_dir=base_dir, **kwargs)
