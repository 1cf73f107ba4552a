"""The registry of inference tasks: what each inference CLI answers, by name.

Each inference CLI registers one :class:`Task` at import: its own flags (``add_args``), how its question file
becomes :class:`Sample` objects (``load_samples``) and the format of its answer lines (``answers``). The run
manifest records the task's name (``settings.task.name``); ``llava.eval.merge_chunks`` resolves that name here to
rebuild the question set, so a manifest can only name a registered task, never make us import a module of its
choosing.

    TASK = register(Task("vqa", add_args, load_samples, AnswerFormat(("question_id", "prompt"))))
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from llava.eval.utils import InputError

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass
class Sample:
    """One question. ``question`` is the user text without the image token; ``record`` is copied into the answer line.

    ``media`` loads what the question is about, when it is answered: a PIL image, or a preprocessed
    (3, T, H, W) video clip; None for a text-only question. ``media_file``: the file it reads (its identity goes
    into the run's media fingerprint; None when the media live in the question file, as MMBench's). ``where``
    names the question's place in its file (``file:line``) for error messages. ``seed``: a per-question seed for
    the sampling draws (Video-LLaVA's paper protocol), else the run's ``--seed`` seeds them once.
    ``placeholders``: ``<image>`` tokens before the question (one per video frame for Video-LLaVA).
    """

    key: tuple  # unique id of the answer line, e.g. (question_id,) or (question_id, round_id)
    question: str
    media: Callable[[], Image.Image | torch.Tensor] | None
    record: dict = field(default_factory=dict)
    media_name: str | None = None  # for error messages and the missing-media report
    where: str = ""
    seed: int | None = None
    placeholders: int = 1
    media_file: str | None = None


@dataclass(frozen=True)
class AnswerFormat:
    """An answer file's lines: the fields that identify a question, and where the generated text goes.

    LLaVA's lines are ``record + {"text", "answer_id", "model_id", "metadata"}``; Video-ChatGPT's are
    ``record + {"pred", "metadata"}``. ``metadata.manifest`` is the run manifest's fingerprint; with
    ``--record-kept`` a line also has ``kept``.
    """

    key_fields: tuple[str, ...] = ("question_id",)
    text_field: str = "text"
    llava_ids: bool = True  # answer_id and model_id, as LLaVA's answer lines have


@dataclass(frozen=True)
class Task:
    """An inference task: its flags, its questions, its answer lines."""

    name: str
    add_args: Callable[[argparse.ArgumentParser], None]  # the task's own flags (question file, folders, options)
    load_samples: Callable[[argparse.Namespace], list[Sample]]
    answers: AnswerFormat = AnswerFormat()


TASKS: dict[str, Task] = {}
# Where each built-in task registers itself: imported on first lookup, so the registry stays cheap to import.
BUILTIN_MODULES = {"vqa": "llava.eval.model_vqa_loader", "science_qa": "llava.eval.model_vqa_science",
                   "mmbench": "llava.eval.model_vqa_mmbench", "video_qa": "llava.eval.video.run_inference_video_qa"}


def register(task: Task) -> Task:
    """Add ``task`` to the registry (a second task under a taken name is an error); returns it."""
    if TASKS.get(task.name, task) != task:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name`` (importing its built-in CLI module first if needed)."""
    if name not in TASKS and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; registered: {', '.join(sorted({*TASKS, *BUILTIN_MODULES}))} "
                         "(a plugin task: --import the module that registers it)")
    return TASKS[name]


def get_chunk(items: Sequence, num_chunks: int, chunk_idx: int) -> list:
    """LLaVA's chunking: contiguous slices of ceil(n / num_chunks) items (trailing chunks may be empty)."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise InputError(f"--chunk-idx {chunk_idx} must lie in [0, --num-chunks {num_chunks})")
    size = math.ceil(len(items) / num_chunks)
    return list(items[chunk_idx * size:(chunk_idx + 1) * size])


def key_of(sample: Sample) -> tuple:
    """A sample's key as answer lines spell it (JSON of each field), so ids of any type compare exactly."""
    return tuple(json.dumps(k) for k in sample.key)
