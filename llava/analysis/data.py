"""LLaVA-format instruction data (``id``, ``image``, ``conversations``) → first-turn prompts."""
from __future__ import annotations

import json
import os
from pathlib import Path

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates


def load_samples(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """Samples of a ``.jsonl`` file (one object per line) or a ``.json`` list, at most ``limit`` of them.

    LLaVA ships its instruction data as a JSON list and the analysis subset as JSON lines; both are accepted.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        samples = json.loads(text)
    else:
        samples = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON object: {e}") from None
            if limit is not None and len(samples) >= limit:
                break
    return samples if limit is None else samples[:limit]


def first_human_turn(sample: dict) -> str:
    """Text of the first human turn of ``sample["conversations"]``."""
    for turn in sample.get("conversations", []):
        if turn.get("from") == "human":
            return turn["value"]
    raise ValueError(f"sample {sample.get('id')!r} has no human turn")


def first_turn_question(sample: dict, mm_use_im_start_end: bool = False) -> str:
    """The first human turn with every ``<image>`` tag removed and one image tag prepended.

    The text is stripped after removing the tags, as LLaVA's training preprocessing does: 126 of the
    1000 analysis samples end in ``"\\n<image>"``, which upstream's analysis turned into a trailing newline.
    """
    question = first_human_turn(sample).replace(DEFAULT_IMAGE_TOKEN, "").strip()
    tag = DEFAULT_IMAGE_TOKEN
    if mm_use_im_start_end:
        tag = DEFAULT_IM_START_TOKEN + tag + DEFAULT_IM_END_TOKEN
    return f"{tag}\n{question}"


def build_prompt(question: str, conv_mode: str = "vicuna_v1") -> str:
    """A single-turn prompt ending where the assistant's answer starts."""
    if conv_mode not in conv_templates:
        raise ValueError(f"unknown conv mode {conv_mode!r}; choose from {sorted(conv_templates)}")
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()
