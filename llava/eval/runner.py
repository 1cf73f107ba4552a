"""The one inference loop behind every benchmark CLI (``model_vqa*``, video QA): chunks, resume, manifests, batching.

A CLI module defines ``load_samples(args) -> list[Sample]`` (its question file as :class:`Sample` objects) and an
:class:`AnswerFormat`, and calls :func:`run`. The loop owns everything else: the run manifest
(``llava.eval.provenance``: resuming or appending under other settings is refused), loading the model, the prompt
template, greedy or sampled decoding, appending one answer line per question (flushed, so a killed run loses at
most the lines in flight), skipping questions already answered when rerun, media that cannot be read, and the
final question-order rewrite of the answers file. ``llava.eval.merge_chunks`` calls ``load_samples`` again, from
the manifest, to check that the merged chunks answer exactly the question set.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import shortuuid
import torch
from PIL import Image
from tqdm import tqdm

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates
from llava.eval import provenance
from llava.eval.utils import InputError
from llava.mm_utils import (ANYRES_PROTOCOL_HELP, ANYRES_PROTOCOLS, get_model_name_from_path, process_images,
                            tokenizer_image_token)
from llava.model.multimodal_encoder.clip_encoder import CLS_ATTN_ARITHMETICS
from llava.pruning import (MethodChoices, check_installed, cli_parameters, get_method, import_modules,
                           method_parameters)


@dataclass
class Sample:
    """One question. ``question`` is the user text without the image token; ``record`` is copied into the answer line.

    ``media`` loads what the question is about, when it is answered: a PIL image, or a preprocessed
    (3, T, H, W) video clip; None for a text-only question. ``where`` names the question's place in its file
    (``file:line``) for error messages. ``seed``: a per-question seed for the sampling draws (Video-LLaVA's
    paper protocol), else the run's ``--seed`` seeds them once. ``placeholders``: ``<image>`` tokens before the
    question (one per video frame for Video-LLaVA).
    """

    key: tuple  # unique id of the answer line, e.g. (question_id,) or (question_id, round_id)
    question: str
    media: Callable[[], Image.Image | torch.Tensor] | None
    record: dict = field(default_factory=dict)
    media_name: str | None = None  # for error messages and the missing-media report
    where: str = ""
    seed: int | None = None
    placeholders: int = 1


@dataclass(frozen=True)
class AnswerFormat:
    """An answer file's lines: the fields that identify a question, and where the generated text goes.

    LLaVA's lines are ``record + {"text", "answer_id", "model_id", "metadata"}``; Video-ChatGPT's are
    ``record + {"pred", "metadata"}``. ``metadata.manifest`` is the run manifest's fingerprint.
    """

    key_fields: tuple[str, ...] = ("question_id",)
    text_field: str = "text"
    llava_ids: bool = True  # answer_id and model_id, as LLaVA's answer lines have


# Flags that say where things are or which part of the work a process does: recorded, never compared.
_BOOKKEEPING = frozenset({"model_path", "answers_file", "question_file", "image_folder", "video_dir", "gt_file_question",
                          "gt_file_answers", "num_chunks", "chunk_idx", "limit", "skip_missing_images", "overwrite",
                          "debug", "device"})
# Input files whose content (not path) decides the answers.
_HASHED_FILES = ("question_file", "gt_file_question", "gt_file_answers")


def add_common_args(parser: argparse.ArgumentParser, max_new_tokens: int, temperature: float = 0.2,
                    conv_mode: str = "llava_v1") -> None:
    """Flags shared by every inference CLI (upstream LLaVA/FasterVLM names and defaults)."""
    parser.add_argument("--model-path", type=str, required=True, help="LLaVA checkpoint folder (e.g. checkpoints/llava-v1.5-7b)")
    parser.add_argument("--model-base", type=str, default=None, help="base model for LoRA checkpoints (not supported; merge first)")
    parser.add_argument("--answers-file", type=str, required=True,
                        help="answers JSON-lines file; appended to, skipping questions it already answers, as long as "
                             "its manifest (<answers-file>.manifest.json) records the same settings")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard an existing answers file (and its manifest) and start afresh")
    parser.add_argument("--conv-mode", type=str, default=conv_mode, help=f"prompt template (default {conv_mode}; the paper uses vicuna_v1)")
    add_chunk_args(parser)
    parser.add_argument("--temperature", type=float, default=temperature,
                        help=f"sampling temperature; 0 = greedy, the paper's protocol (default {temperature}, as upstream)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold (only when sampling)")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search width (default 1)")
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help=f"generation limit (default {max_new_tokens})")
    add_pruning_args(parser)
    parser.add_argument("--anyres-protocol", choices=ANYRES_PROTOCOLS, default=None,
                        help="LLaVA-NeXT only: " + "; ".join(f"'{name}': {text}" for name, text in ANYRES_PROTOCOL_HELP.items()))
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed (matters when sampling, and for --pruning-method random)")
    add_device_args(parser)
    parser.add_argument("--batch-size", type=int, default=1,
                        help="questions per forward (default 1, the paper's protocol); >1 left-pads and sorts by length")
    parser.add_argument("--skip-missing-images", action="store_true",
                        help="record unreadable or missing images in <answers-file>.missing.jsonl and go on, instead of "
                             "stopping; their questions get no answer (merging then needs --allow-partial)")


def add_chunk_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many contiguous chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="which chunk (0-based) this process answers")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions of the chunk (quick runs)")


def add_pruning_args(parser: argparse.ArgumentParser, methods: Sequence[str] | None = None) -> None:
    """``--visual-token-num``, ``--pruning-method`` (``methods``, or every registered one when the value is checked),
    each method's own flags and ``--import``; parse with :func:`parse_args`, which imports first."""
    parser.add_argument("--visual-token-num", type=int, default=None,
                        help="[FasterVLM] visual tokens kept per image (576 = all for LLaVA-1.5); default: no pruning")
    parser.add_argument("--pruning-method", type=str, default="fastervlm", choices=methods or MethodChoices(),
                        help="how visual tokens are chosen (default fastervlm; the others are baselines and the "
                             "paper's ablations, see llava/pruning/README.md; --import adds your own)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable), e.g. one defining your own @register'ed pruning method")
    add_method_flags(parser)


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """Each registered method's own options (e.g. --fastv-k) that ``parser`` does not have yet."""
    for p in cli_parameters():
        if p.flag in parser._option_string_actions:
            continue
        defaults = ", ".join(f"{name}: {value}" for name, value in p.defaults.items())
        parser.add_argument(p.flag, type=p.type, choices=p.choices, default=None, help=f"{p.help} (default {defaults})")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` after importing the ``--import`` modules, wherever they stand on the command line:
    the methods they register are ``--pruning-method`` choices and their parameters are flags."""
    imports = argparse.ArgumentParser(add_help=False)
    imports.add_argument("--import", dest="imports", action="append", default=[])
    import_modules(imports.parse_known_args(argv)[0].imports)
    add_method_flags(parser)
    return parser.parse_args(argv)


def add_device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=str, default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                        help="LLM dtype (default float16 on CUDA, the paper's protocol; float32 on CPU)")
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager", "flash_attention_2"], default="sdpa",
                        help="LLM attention kernel (flash_attention_2 needs the [flash] extra)")
    parser.add_argument("--cls-attn-arithmetic", choices=CLS_ATTN_ARITHMETICS, default="fp32",
                        help="[FasterVLM] how the vision tower computes the [CLS] scores: 'fp32' (default: SDPA layers, "
                             "the [CLS] row in fp32) or 'upstream' (the released code's eager attention in the tower "
                             "dtype; reproduces the paper's fp16-tower numbers: LLaVA-1.6, Video-LLaVA)")


def get_chunk(items: Sequence, num_chunks: int, chunk_idx: int) -> list:
    """LLaVA's chunking: contiguous slices of ceil(n / num_chunks) items (trailing chunks may be empty)."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise InputError(f"--chunk-idx {chunk_idx} must lie in [0, --num-chunks {num_chunks})")
    size = math.ceil(len(items) / num_chunks)
    return list(items[chunk_idx * size:(chunk_idx + 1) * size])


def key_of(sample: Sample) -> tuple:
    """A sample's key as answer lines spell it (JSON of each field), so ids of any type compare exactly."""
    return tuple(json.dumps(k) for k in sample.key)


def line_key(obj: dict, key_fields: Sequence[str]) -> tuple:
    return tuple(json.dumps(obj.get(k)) for k in key_fields)


def check_unique(samples: Sequence[Sample]) -> None:
    """Two questions with one key could not be told apart in the answers: name both places."""
    seen: dict[tuple, Sample] = {}
    for s in samples:
        first = seen.setdefault(key_of(s), s)
        if first is not s:
            raise InputError(f"{s.where}: question {s.key[0]!r} repeats {first.where}; answers could not be told apart")


def read_answers(path: Path, key_fields: Sequence[str], fingerprint: str | None) -> set[tuple]:
    """Keys already answered in ``path``, checked line by line.

    A torn last line (a killed run) is cut off; a complete last line without its newline gets one, so the next
    answer is not glued onto it. A malformed line elsewhere, a repeated key or a line made under another manifest
    (``metadata.manifest`` differs from ``fingerprint``) is an error naming the line.
    """
    if not path.is_file():
        return set()
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    done: dict[tuple, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):  # the line in flight when the run died: drop it and answer again
                with open(path, "r+b") as f:
                    f.truncate(len(raw) - len(line))
                break
            raise InputError(f"{path}:{lineno}: malformed answer line; fix or delete the file to resume") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object")
        made_by = (obj.get("metadata") or {}).get("manifest") if isinstance(obj.get("metadata"), dict) else None
        if fingerprint is not None and made_by != fingerprint:
            raise InputError(f"{path}:{lineno}: made by another run (manifest {made_by!r}, this run's is {fingerprint!r});"
                             " pass --overwrite to start afresh, or use another --answers-file")
        key = line_key(obj, key_fields)
        if key in done:
            raise InputError(f"{path}:{lineno}: question {key[0]} is answered twice (first at line {done[key]})")
        done[key] = lineno
        if lineno == len(lines):  # complete, but its newline is missing
            with open(path, "ab") as f:
                f.write(b"\n")
    return set(done)


def build_prompt(question: str, placeholders: int, conv_mode: str, mm_use_im_start_end: bool) -> str:
    if placeholders:
        image_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if mm_use_im_start_end else DEFAULT_IMAGE_TOKEN
        question = image_token * placeholders + "\n" + question
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def pruning_kwargs(args) -> dict:
    """The parameters of ``--pruning-method`` from its flags; a flag of another method is an error."""
    kwargs = {}
    for p in cli_parameters():
        value = getattr(args, p.flag.lstrip("-").replace("-", "_"))
        if value is None:
            continue
        if args.pruning_method not in p.defaults:
            raise InputError(f"{p.flag} applies to --pruning-method {' or '.join(p.defaults)}, "
                             f"not {args.pruning_method}")
        kwargs[p.param] = value
    if "seed" in method_parameters(args.pruning_method):
        kwargs["seed"] = args.seed
    return kwargs


def resolve_conv_mode(args) -> str:
    """``--conv-mode``, with LLaVA's rule for pretrain-only (``plain``) checkpoints."""
    if args.conv_mode not in conv_templates:
        raise InputError(f"--conv-mode {args.conv_mode!r} is unknown; choose from {', '.join(sorted(conv_templates))}")
    model_name = get_model_name_from_path(os.path.expanduser(args.model_path))
    if "plain" in model_name and "finetune" not in model_name.lower() and "mmtag" not in args.conv_mode:
        return args.conv_mode + "_mmtag"
    return args.conv_mode


def _file_sha256(args, name: str) -> str | None:
    value = getattr(args, name, None)
    if value is None:
        return None
    path = Path(os.path.expanduser(value))
    if not path.is_file():
        raise InputError(f"--{name.replace('_', '-')} {value}: file not found")
    return provenance.file_sha256(path)


def build_manifest(args, loader: Callable, chunk: Sequence[Sample], extra_settings: dict | None = None) -> dict:
    """Everything that can change this run's answers (``settings``, ``environment``), how the work is split
    (``chunk``) and where things are (``info``), from the arguments and files alone: no weight is loaded."""
    from llava.model.builder import read_model_config, resolve_anyres_protocol

    model_path = os.path.expanduser(args.model_path)
    cfg = read_model_config(model_path)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    method = get_method(args.pruning_method, **pruning_kwargs(args))
    method_flags = {p.flag.lstrip("-").replace("-", "_") for p in cli_parameters()}
    mapped = {"model_base", "dtype", "attn_implementation", "cls_attn_arithmetic", "anyres_protocol", "visual_token_num",
              "pruning_method",
              "conv_mode", "temperature", "top_p", "num_beams", "max_new_tokens", "seed", "batch_size"}
    options = {k: v for k, v in sorted(vars(args).items())
               if k not in _BOOKKEEPING | mapped | method_flags and k not in _HASHED_FILES}
    default_dtype = "float16" if device.startswith("cuda") else "float32"
    settings = {
        "model": {"checkpoint": Path(model_path).name, "fingerprint": provenance.checkpoint_fingerprint(model_path),
                  "model_base": args.model_base, "dtype": args.dtype or default_dtype,
                  "attn_implementation": args.attn_implementation, "cls_attn_arithmetic": args.cls_attn_arithmetic,
                  "device": device.split(":")[0],
                  "anyres_protocol": resolve_anyres_protocol(cfg, args.visual_token_num, args.anyres_protocol)},
        "pruning": {"visual_token_num": args.visual_token_num, "method": method.name,
                    "params": {name: getattr(method, name) for name in method_parameters(method.name)}},
        "decoding": {"conv_mode": resolve_conv_mode(args), "temperature": args.temperature, "top_p": args.top_p,
                     "num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                     "batch_size": args.batch_size},
        "task": {"module": _module_name(loader), "options": options,
                 "inputs_sha256": {name: _file_sha256(args, name) for name in _HASHED_FILES if hasattr(args, name)},
                 **(extra_settings or {})},
    }
    paths = {k: os.path.abspath(os.path.expanduser(v)) for k, v in vars(args).items()
             if k in _BOOKKEEPING and isinstance(v, str) and k != "device"}
    manifest = {"format": provenance.FORMAT, "settings": settings, "environment": provenance.environment(device),
                "chunk": {"num_chunks": args.num_chunks, "chunk_idx": args.chunk_idx, "questions": len(chunk)},
                "info": {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "paths": paths, "git": provenance.git_info(),
                         "limit": args.limit, "argv": sys.argv[1:]}}
    manifest["fingerprint"] = provenance.fingerprint(manifest)
    return manifest


def _module_name(loader: Callable) -> str:
    """The importable name of the module defining ``loader`` (``__main__`` under ``python -m`` is resolved)."""
    module = sys.modules[loader.__module__]
    spec = getattr(module, "__spec__", None)
    return spec.name if spec is not None else loader.__module__


def start_answers_file(answers_file: Path, manifest: dict, answers: AnswerFormat, overwrite: bool) -> set[tuple]:
    """Make ``answers_file`` this run's: refuse one made under other settings, write the manifest, return the
    keys it already answers."""
    missing_log = answers_file.with_name(answers_file.name + ".missing.jsonl")
    if overwrite:
        for path in (answers_file, provenance.manifest_path(answers_file), missing_log):
            path.unlink(missing_ok=True)
    existing = provenance.read_manifest(answers_file)
    has_answers = answers_file.is_file() and answers_file.stat().st_size > 0
    if has_answers and existing is None:
        raise InputError(f"{answers_file}: holds answers but no manifest ({provenance.manifest_path(answers_file).name}),"
                         " so how they were made is unknown; pass --overwrite to start afresh")
    if has_answers:
        diffs = provenance.differences(existing, manifest, parts=(*provenance.COMPARED, "chunk"))
        if diffs:
            raise InputError(f"{answers_file}: was made with other settings; resuming would mix runs:\n  "
                             + "\n  ".join(diffs) + "\npass --overwrite to start afresh, or use another --answers-file")
        manifest["info"]["resumed"] = existing["info"].get("created")
        if "loaded" in existing:
            manifest["loaded"] = existing["loaded"]
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    provenance.write_manifest(answers_file, manifest)
    answers_file.touch()  # an empty chunk still writes its (empty) answers file
    return read_answers(answers_file, answers.key_fields, manifest["fingerprint"])


def loaded_facts(model) -> dict:
    """What only the loaded model can say: the dtypes and kernel it runs with, and where tower weights came from
    (Video-LLaVA: the LanguageBind folders upstream reads, or the bf16 copies embedded in the checkpoint)."""
    inner = model.get_model()
    towers = {name: getattr(inner, name) for name in ("vision_tower", "image_tower", "video_tower")
              if getattr(inner, name, None) is not None}
    return {"llm_dtype": str(model.dtype).removeprefix("torch."),
            "attn_implementation": model.config._attn_implementation,
            "towers": {name: {"dtype": str(t.dtype).removeprefix("torch."),
                              "weights": "checkpoint" if getattr(t, "weights_source", None) == "checkpoint"
                              else "tower folder"} for name, t in towers.items()}}


def record_loaded(answers_file: Path, manifest: dict, model) -> None:
    """Add :func:`loaded_facts` to the manifest; a resumed run that loaded differently (e.g. tower weights from
    another source) is refused like any other change of settings."""
    loaded = loaded_facts(model)
    previous = provenance.read_manifest(answers_file).get("loaded")
    if previous is not None and previous != loaded:
        diffs = provenance.differences({"loaded": previous}, {"loaded": loaded}, parts=("loaded",))
        raise InputError(f"{answers_file}: the model loaded differently from the run being resumed:\n  "
                         + "\n  ".join(diffs) + "\npass --overwrite to start afresh, or use another --answers-file")
    manifest["loaded"] = loaded
    provenance.write_manifest(answers_file, manifest)


def _load_model(args, method_kwargs: dict):
    from llava.model.builder import load_pretrained_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"attn_implementation": args.attn_implementation, "cls_attn_arithmetic": args.cls_attn_arithmetic}
    if args.dtype:
        kwargs["torch_dtype"] = getattr(torch, args.dtype)
    model_name = get_model_name_from_path(os.path.expanduser(args.model_path))
    tokenizer, model, processor, _ = load_pretrained_model(
        os.path.expanduser(args.model_path), args.model_base, model_name, device=device,
        visual_token_num=args.visual_token_num, anyres_protocol=args.anyres_protocol,
        pruning_method=args.pruning_method, pruning_kwargs=method_kwargs, **kwargs)
    return tokenizer, model, processor, model_name


def check_args(args) -> None:
    """Argument errors that need no file: fail before anything is read or written."""
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 0:
        raise InputError(f"--limit must be >= 0, got {args.limit}")
    if args.visual_token_num is not None and args.visual_token_num < 0:
        raise InputError(f"--visual-token-num must be >= 0, got {args.visual_token_num}")
    if args.temperature < 0:
        raise InputError(f"--temperature must be >= 0, got {args.temperature}")
    if args.num_beams < 1 or args.max_new_tokens < 1:
        raise InputError("--num_beams and --max_new_tokens must be >= 1")
    try:
        method = get_method(args.pruning_method, **pruning_kwargs(args))  # bad values fail here, before any weights load
    except ValueError as e:
        raise InputError(str(e)) from None
    check_installed(method)


def run(args, loader: Callable[[argparse.Namespace], list[Sample]], answers: AnswerFormat = AnswerFormat(),
        extra_settings: dict | None = None, postprocess: Callable[[str], str] | None = None,
        processor_key: str | None = None) -> list[int]:
    """Answer this chunk of ``loader(args)`` into ``args.answers_file`` (see the module docstring); returns the
    visual-token count of each answer this call wrote (none when the chunk was already answered).

    ``extra_settings`` go into the manifest's ``settings.task`` (e.g. the video decoder); ``postprocess`` edits each
    decoded answer; ``processor_key`` picks one processor when the loader returns several (Video-LLaVA's ``video``).
    """
    from llava.model.builder import check_visual_token_num

    check_args(args)
    samples = loader(args)
    check_unique(samples)
    chunk = get_chunk(samples, args.num_chunks, args.chunk_idx)
    if args.limit is not None:
        chunk = chunk[:args.limit]
    if any(s.seed is not None for s in chunk) and args.batch_size > 1:
        raise InputError("this task seeds every question's draws on its own; use --batch-size 1")
    check_visual_token_num(os.path.expanduser(args.model_path), args.visual_token_num)  # fail before loading weights
    answers_file = Path(os.path.expanduser(args.answers_file))
    manifest = build_manifest(args, loader, chunk, extra_settings)
    done = start_answers_file(answers_file, manifest, answers, args.overwrite)
    todo = [s for s in chunk if key_of(s) not in done]
    missing_log = answers_file.with_name(answers_file.name + ".missing.jsonl")
    if not todo:
        print(f"{answers_file}: all {len(chunk)} questions of this chunk are answered")
        _rewrite_in_question_order(answers_file, chunk, answers.key_fields)
        return []

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer, model, processor, model_name = _load_model(args, pruning_kwargs(args))
    record_loaded(answers_file, manifest, model)
    if processor_key is not None:
        processor = processor[processor_key]
    conv_mode = manifest["settings"]["decoding"]["conv_mode"]
    im_start_end = getattr(model.config, "mm_use_im_start_end", False)
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, use_cache=True,
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if args.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    else:
        gen_kwargs.update(do_sample=False)

    prompts = {key_of(s): tokenizer_image_token(build_prompt(s.question, s.placeholders if s.media else 0, conv_mode,
                                                             im_start_end), tokenizer) for s in todo}
    if args.batch_size > 1:  # longest first: less padding per batch, and an early out-of-memory
        todo = sorted(todo, key=lambda s: -len(prompts[key_of(s)]))
    visual_tokens: list[int] = []
    skipped: dict[tuple, dict] = {}
    bar = tqdm(total=len(todo), desc=answers_file.name)
    with open(answers_file, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), args.batch_size):
            batch, media = _load_media(todo[start:start + args.batch_size], args.skip_missing_images, skipped, bar)
            if not batch:
                continue
            if batch[0].seed is not None:
                torch.manual_seed(batch[0].seed)
            texts, counts = generate_batch(model, tokenizer, processor, [prompts[key_of(s)] for s in batch], media,
                                           gen_kwargs)
            for sample, text, count in zip(batch, texts, counts):
                line = {**sample.record, answers.text_field: postprocess(text) if postprocess else text}
                if answers.llava_ids:
                    line.update(answer_id=shortuuid.uuid(), model_id=model_name)
                line["metadata"] = {"manifest": manifest["fingerprint"]}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                visual_tokens.append(count)
            out.flush()
            bar.update(len(batch))
            bar.set_postfix(v_token_num=counts[-1])
    bar.close()
    if visual_tokens:
        print(f"Average number of visual tokens: {sum(visual_tokens) / len(visual_tokens):.2f} "
              f"(over the {len(visual_tokens)} answers of this run)")
    _write_missing_log(missing_log, skipped, answers_file, chunk, answers.key_fields)
    if skipped and not visual_tokens and not done:  # nothing readable at all: a wrong folder, not a few bad files
        raise InputError(f"all {len(skipped)} images/videos to answer are missing or unreadable, e.g. "
                         f"{next(iter(skipped.values()))['error']}; check the folder arguments")
    _rewrite_in_question_order(answers_file, chunk, answers.key_fields)
    return visual_tokens


def _load_media(batch: list[Sample], skip: bool, skipped: dict, bar) -> tuple[list[Sample], list]:
    kept, media = [], []
    for s in batch:
        try:
            media.append(s.media() if s.media is not None else None)
            kept.append(s)
        except (OSError, ValueError) as e:  # missing, unreadable, oversized (each loader names the file)
            if not skip:
                raise InputError(f"{s.where}: question {s.key[0]!r}: {e}; pass --skip-missing-images "
                                 "to record it and go on") from None
            skipped[key_of(s)] = {"key": list(s.key), "media": s.media_name, "error": str(e)}
            tqdm.write(f"skipped question {s.key[0]!r} ({s.where}): {e}", file=sys.stderr)
            bar.update(1)
    return kept, media


def _write_missing_log(path: Path, skipped: dict, answers_file: Path, chunk: Sequence[Sample],
                       key_fields: Sequence[str]) -> None:
    """``<answers>.missing.jsonl``: the chunk's questions still unanswered because their media could not be read."""
    answered = {line_key(json.loads(l), key_fields) for l in answers_file.read_text(encoding="utf-8").splitlines()
                if l.strip()}
    previous = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                previous[tuple(json.dumps(k) for k in entry["key"])] = entry
    entries = {k: v for k, v in {**previous, **skipped}.items() if k not in answered and k in {key_of(s) for s in chunk}}
    if not entries:
        path.unlink(missing_ok=True)
        return
    from llava.eval.utils import write_jsonl

    write_jsonl(path, entries.values())
    print(f"WARNING: {len(entries)} question(s) of this chunk have no answer because their image/video could not be "
          f"read; listed in {path}", file=sys.stderr)


@torch.no_grad()
def generate_batch(model, tokenizer, processor, prompt_ids: list[list[int]], media: list, gen_kwargs: dict
                   ) -> tuple[list[str], list[int]]:
    """Greedy/sampled answers for one batch; returns texts and visual-token counts per sample.

    ``media``: one PIL image (preprocessed here), preprocessed (3, T, H, W) video clip, or None per prompt.
    Batches of more than one question are left-padded, so every sequence ends at the last column
    and the kept visual tokens keep the same (contiguous) positions they have at batch size 1.
    """
    device = model.device
    present = [m is not None for m in media]
    if any(present) and not all(present):
        raise InputError("a batch mixes questions with and without images; use --batch-size 1 for such files")
    pixel_values, image_sizes = None, None
    if all(present) and all(isinstance(m, torch.Tensor) for m in media):  # video clips, already preprocessed
        pixel_values = [m.to(device=device, dtype=model.dtype) for m in media]
    elif all(present):
        pixel_values = process_images(media, processor, model.config)
        pixel_values = pixel_values.to(device=device, dtype=model.dtype) if torch.is_tensor(pixel_values) else \
            [p.to(device=device, dtype=model.dtype) for p in pixel_values]
        image_sizes = [m.size for m in media]
    if len(prompt_ids) == 1:
        input_ids = torch.tensor([prompt_ids[0]], device=device)
        kwargs = {}
    else:
        longest = max(map(len, prompt_ids))
        pad = gen_kwargs["pad_token_id"]
        input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompt_ids], device=device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        kwargs = {"attention_mask": mask}
    # The model splices a batch left-padded for generation (LlavaLlamaForCausalLM.generate).
    output_ids = model.generate(input_ids, images=pixel_values, image_sizes=image_sizes, **kwargs, **gen_kwargs)
    texts = [t.strip() for t in tokenizer.batch_decode(output_ids, skip_special_tokens=True)]
    counts = model.last_pruning.visual_tokens if pixel_values is not None and model.last_pruning else [0] * len(texts)
    return texts, list(counts)


def _rewrite_in_question_order(path: Path, chunk: Sequence[Sample], key_fields: Sequence[str]) -> None:
    """Order the chunk's lines as the questions are (batching answers them out of order)."""
    order = {key_of(s): i for i, s in enumerate(chunk)}
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keyed = [(order.get(line_key(json.loads(l), key_fields), len(order)), i, l) for i, l in enumerate(lines)]
    if [k for k, _, _ in keyed] == sorted(k for k, _, _ in keyed):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(l + "\n" for _, _, l in sorted(keyed)), encoding="utf-8")
    os.replace(tmp, path)
