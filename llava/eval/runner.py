"""The one inference loop behind every benchmark CLI (``model_vqa*``, video QA): chunks, resume, manifests, batching.

A CLI module registers a :class:`~llava.eval.tasks.Task` (its flags, its question file as :class:`Sample`
objects, its :class:`AnswerFormat`) and calls :func:`run`. The loop owns everything else: the run manifest
(``llava.eval.provenance``: resuming or appending under other settings is refused), the answers file
(``llava.eval.answers_file``: one writer at a time, resume, final question-order rewrite), loading the model, the
prompt template, greedy or sampled decoding, appending one answer line per question (flushed, so a killed run
loses at most the lines in flight), and media that cannot be read. ``llava.eval.merge_chunks`` resolves the task
by the name the manifest records and loads its samples again, to check that the merged chunks answer exactly the
question set.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import shortuuid
import torch
from PIL import Image
from tqdm import tqdm

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates
from llava.devices import check_device
from llava.eval import answers_file as answers_io
from llava.eval import provenance
from llava.eval.tasks import AnswerFormat, Sample, Task, get_chunk, key_of
from llava.eval.utils import InputError
from llava.mm_utils import (ANYRES_PROTOCOL_HELP, ANYRES_PROTOCOLS, check_image_size, get_model_name_from_path,
                            process_images, tokenizer_image_token)
from llava.model.multimodal_encoder.clip_encoder import CLS_ATTN_ARITHMETICS
from llava.pruning import (InLLMPruningMethod, MethodChoices, check_installed, cli_parameters, get_method,
                           import_modules, method_parameters)


# Flags that say where things are, which part of the work a process does or how it is paced: recorded in the
# manifest's ``info`` (or ``chunk``), never part of the fingerprint. --limit and --batch-size are here so that a
# trial run can be continued and a failing batch got past without discarding finished answers.
_BOOKKEEPING = frozenset({"model_path", "answers_file", "question_file", "image_folder", "video_dir", "gt_file_question",
                          "gt_file_answers", "num_chunks", "chunk_idx", "limit", "skip_missing_images", "overwrite",
                          "debug", "device", "batch_size"})
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
    parser.add_argument("--temperature", type=finite_float, default=temperature,
                        help=f"sampling temperature; 0 = greedy, the paper's protocol (default {temperature}, as upstream)")
    parser.add_argument("--top_p", type=finite_float, default=None, help="nucleus sampling threshold (only when sampling)")
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
    add_record_kept_arg(parser)


def add_record_kept_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record-kept", action="store_true",
                        help="add \"kept\" to every answer line: per image crop or video frame, the sorted indices "
                             "(0..N-1, raster order in the tower's patch grid) of the patches the pruning kept (merging "
                             "methods: the patches their kept tokens are centred on); a result-defining setting, since "
                             "it changes the lines")


def finite_float(text: str) -> float:
    """A float flag that must be a finite number: NaN or infinity could never be matched by a rerun."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def device_flag(text: str) -> str:
    """``--device``, checked before anything loads (``llava.devices.check_device``)."""
    try:
        return check_device(text, flag="")
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error).strip()) from None


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
    parser.add_argument("--device", type=device_flag, default=None,
                        help="cpu, cuda, cuda:N (the whole model on that GPU), auto (a model too big for one GPU, "
                             "spread by accelerate over every visible GPU) or mps (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                        help="LLM dtype (default float16 on CUDA, the paper's protocol; float32 on CPU)")
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager", "flash_attention_2"], default="sdpa",
                        help="LLM attention kernel (flash_attention_2 needs the [flash] extra)")
    parser.add_argument("--cls-attn-arithmetic", choices=CLS_ATTN_ARITHMETICS, default="fp32",
                        help="[FasterVLM] how the vision tower computes the [CLS] scores: 'fp32' (default: SDPA layers, "
                             "the [CLS] row in fp32) or 'upstream' (the released code's eager attention in the tower "
                             "dtype; reproduces the paper's fp16-tower numbers: LLaVA-1.6, Video-LLaVA)")


def check_samples(samples: Sequence[Sample]) -> None:
    """Two questions with one key could not be told apart in the answers: name both places. Text that is not
    valid Unicode (a lone surrogate from a "\\ud800" escape) can be neither tokenized nor written: named."""
    seen: dict[tuple, Sample] = {}
    for s in samples:
        first = seen.setdefault(key_of(s), s)
        if first is not s:
            raise InputError(f"{s.where}: question {s.key[0]!r} repeats {first.where}; answers could not be told apart")
        try:
            json.dumps([s.question, s.record], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"{s.where}: question {s.key[0]!r}: holds a lone surrogate {e.object[e.start:e.end]!r} "
                             "(an unpaired \\ud800-\\udfff escape), which is not text") from None


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


def build_manifest(args, task: Task, samples: Sequence[Sample], chunk: Sequence[Sample],
                   extra_settings: dict | None = None) -> dict:
    """Everything that can change this run's answers (``settings``, ``environment``), how the work is split
    (``chunk``: this chunk's questions, before ``--limit``) and the bookkeeping (``info``), from the arguments and
    files alone: no weight is loaded."""
    from llava.model.builder import read_model_config, resolve_anyres_protocol

    model_path = os.path.expanduser(args.model_path)
    cfg = read_model_config(model_path)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    method = get_method(args.pruning_method, **pruning_kwargs(args))
    method_flags = {p.flag.lstrip("-").replace("-", "_") for p in cli_parameters()}
    mapped = {"model_base", "dtype", "attn_implementation", "cls_attn_arithmetic", "anyres_protocol", "visual_token_num",
              "pruning_method",
              "conv_mode", "temperature", "top_p", "num_beams", "max_new_tokens", "seed", "record_kept"}
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
                     "num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens, "seed": args.seed},
        "task": {"name": task.name, "options": options, "record_kept": args.record_kept,
                 "inputs_sha256": {name: _file_sha256(args, name) for name in _HASHED_FILES if hasattr(args, name)},
                 # Identity of every image/video the question set names (the whole set, so chunks compare).
                 "media": provenance.media_fingerprint([(json.dumps(s.key), s.media_file) for s in samples
                                                        if s.media_file]),
                 **(extra_settings or {})},
    }
    paths = {k: os.path.abspath(os.path.expanduser(v)) for k, v in vars(args).items()
             if k in _BOOKKEEPING and isinstance(v, str) and k != "device"}
    manifest = {"format": provenance.FORMAT, "settings": settings, "environment": provenance.environment(device),
                "chunk": {"num_chunks": args.num_chunks, "chunk_idx": args.chunk_idx, "questions": len(chunk)},
                "info": {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "paths": paths, "git": provenance.git_info(),
                         "limit": args.limit, "batch_sizes": [args.batch_size], "argv": sys.argv[1:]}}
    manifest["fingerprint"] = provenance.fingerprint(manifest)
    return manifest


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
    previous = manifest.get("loaded")  # the resumed run's, as the manifest on disk had it when this run started
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
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise InputError(f"--top_p must lie in (0, 1], got {args.top_p}")
    if args.num_beams < 1 or args.max_new_tokens < 1:
        raise InputError("--num_beams and --max_new_tokens must be >= 1")
    try:
        method = get_method(args.pruning_method, **pruning_kwargs(args))  # bad values fail here, before any weights load
    except ValueError as e:
        raise InputError(str(e)) from None
    check_installed(method)
    return method


def check_checkpoint(args, method) -> None:
    """Checkpoint facts a flag depends on, before any weight loads: the tokenizer is there, and an in-LLM method's
    layer exists in the LLM."""
    from llava.model.builder import read_model_config

    model_path = Path(os.path.expanduser(args.model_path))
    if not any((model_path / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
        raise InputError(f"{model_path / 'tokenizer.model'}: not found (nor tokenizer.json); the checkpoint's "
                         "tokenizer is missing: copy it from the checkpoint's source")
    layer = getattr(method, "llm_layer", None)
    cfg = read_model_config(model_path)
    layers = cfg.get("num_hidden_layers", (cfg.get("text_config") or {}).get("num_hidden_layers"))
    if layer is not None and isinstance(layers, int) and layer >= layers:
        flags = " / ".join(p.flag for p in cli_parameters()
                           if method.name in p.defaults and getattr(method, p.param, None) == layer) or "its layer"
        raise InputError(f"--pruning-method {method.name} prunes before LLM layer {layer} ({flags}), but the LLM of "
                         f"{model_path} has {layers} layers (0..{layers - 1})")


def run(args, task: Task, extra_settings: dict | None = None, postprocess: Callable[[str], str] | None = None,
        processor_key: str | None = None) -> list[int]:
    """Answer this chunk of ``task.load_samples(args)`` into ``args.answers_file`` (see the module docstring);
    returns the visual-token count of each answer this call wrote (none when the chunk was already answered).

    ``extra_settings`` go into the manifest's ``settings.task`` (e.g. the video decoder); ``postprocess`` edits each
    decoded answer; ``processor_key`` picks one processor when the loader returns several (Video-LLaVA's ``video``).
    """
    from llava.model.builder import check_visual_token_num

    method = check_args(args)
    samples = task.load_samples(args)
    check_samples(samples)
    chunk = get_chunk(samples, args.num_chunks, args.chunk_idx)
    if any(s.seed is not None for s in chunk) and args.batch_size > 1:
        raise InputError("this task seeds every question's draws on its own; use --batch-size 1")
    check_visual_token_num(os.path.expanduser(args.model_path), args.visual_token_num)  # fail before loading weights
    check_checkpoint(args, method)
    answers_file = Path(os.path.expanduser(args.answers_file))
    if answers_file.is_dir():
        raise InputError(f"--answers-file {args.answers_file}: is a folder; give the path of a .jsonl file")
    manifest = build_manifest(args, task, samples, chunk, extra_settings)
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    with answers_io.exclusive(answers_file):
        done = answers_io.start(answers_file, manifest, task.answers.key_fields, args.overwrite)
        return _answer(args, task.answers, answers_file, manifest, chunk, done, postprocess, processor_key)


def _answer(args, answers: AnswerFormat, answers_file: Path, manifest: dict, chunk: list[Sample], done: set[tuple],
            postprocess: Callable[[str], str] | None, processor_key: str | None) -> list[int]:
    """The loop of :func:`run`, with the answers file locked and started."""
    order = [key_of(s) for s in chunk]
    todo = [s for s in (chunk if args.limit is None else chunk[:args.limit]) if key_of(s) not in done]
    if not todo:
        print(f"{answers_file}: all {len(chunk) if args.limit is None else min(args.limit, len(chunk))} questions "
              "of this chunk are answered")
        answers_io.rewrite_in_order(answers_file, order, answers.key_fields)
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
    if args.batch_size > 1:  # a batch holds only image or only text-only questions; longest first: less padding
        todo = sorted(todo, key=lambda s: (s.media is None, -len(prompts[key_of(s)])))
    batches = [todo[i:i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
    batches = [part for b in batches for part in ([x for x in b if x.media is not None], [x for x in b if x.media is None])
               if part]
    visual_tokens: list[int] = []
    skipped: dict[tuple, dict] = {}
    # The bar closes (ending its line) before any error is printed.
    with (tqdm(total=len(todo), desc=answers_file.name) as bar,
          open(answers_file, "a", encoding="utf-8", newline="\n") as out):
        for planned in batches:
            batch, media = _load_media(planned, args.skip_missing_images, skipped, bar, model.config)
            if not batch:
                continue
            if batch[0].seed is not None:
                torch.manual_seed(batch[0].seed)
            texts, counts = generate_batch(model, tokenizer, processor, [prompts[key_of(s)] for s in batch], media,
                                           gen_kwargs)
            kept = kept_patches(model, batch) if args.record_kept else None
            for i, (sample, text, count) in enumerate(zip(batch, texts, counts)):
                line = {**sample.record, answers.text_field: postprocess(text) if postprocess else text}
                if answers.llava_ids:
                    line.update(answer_id=shortuuid.uuid(), model_id=model_name)
                if kept is not None:
                    line["kept"] = kept[i]
                line["metadata"] = {"manifest": manifest["fingerprint"]}
                out.write(answers_io.format_line(line))
                visual_tokens.append(count)
            out.flush()
            bar.update(len(batch))
            bar.set_postfix(v_token_num=counts[-1])
    if visual_tokens:
        print(f"Average number of visual tokens: {sum(visual_tokens) / len(visual_tokens):.2f} "
              f"(over the {len(visual_tokens)} answers of this run)")
        method = model.get_pruning_method() if hasattr(model, "get_pruning_method") else None
        if isinstance(method, InLLMPruningMethod) and args.visual_token_num is not None:
            print(f"{method.name} prunes inside the LLM: all of these tokens enter it; "
                  f"{method.budget_note(args.visual_token_num)}")
    unanswered = answers_io.write_missing_log(answers_file, skipped, order, answers.key_fields)
    if unanswered:
        print(f"WARNING: {unanswered} question(s) of this chunk have no answer because their image/video could not "
              f"be read; listed in {answers_io.missing_log_path(answers_file)}", file=sys.stderr)
    if skipped and not visual_tokens and not done:  # nothing readable at all: a wrong folder, not a few bad files
        raise InputError(f"all {len(skipped)} images/videos to answer are missing or unreadable, e.g. "
                         f"{next(iter(skipped.values()))['error']}; check the folder arguments")
    answers_io.rewrite_in_order(answers_file, order, answers.key_fields)
    return visual_tokens


def kept_patches(model, batch: list[Sample]) -> list[list[list[int]]]:
    """``--record-kept``: for each row of the batch, one sorted list of kept patch indices per image crop or video
    frame (``PruningInfo.kept_indices_per_image``, raster order in the tower's patch grid; for merging methods the
    patches their kept tokens are centred on; for in-LLM methods the patches that survive their layer). Rows are
    in batch order; a text-only batch keeps nothing."""
    info = model.last_pruning
    if info is None or not any(s.media is not None for s in batch):
        return [[] for _ in batch]
    groups = [[sorted(int(i) for i in crop) for crop in group] for group in info.kept_indices_per_image()]
    if len(groups) == len(batch):  # one image (its crops) per row
        return groups
    if len(batch) == 1:  # one video: a group per frame
        return [[crop for group in groups for crop in group]]
    raise RuntimeError(f"{len(groups)} kept-patch groups for a batch of {len(batch)} rows")


def _load_media(batch: list[Sample], skip: bool, skipped: dict, bar, model_cfg) -> tuple[list[Sample], list]:
    kept, media = [], []
    for s in batch:
        try:
            item = s.media() if s.media is not None else None
            if isinstance(item, Image.Image):
                check_image_size(item, model_cfg, s.media_name)  # before preprocessing can build a huge canvas
            media.append(item)
            kept.append(s)
        except (OSError, ValueError) as e:  # missing, unreadable, oversized (each loader names the file)
            if not skip:
                raise InputError(f"{s.where}: question {s.key[0]!r}: {e}; pass --skip-missing-images "
                                 "to record it and go on") from None
            skipped[key_of(s)] = {"key": list(s.key), "media": s.media_name, "error": str(e)}
            tqdm.write(f"skipped question {s.key[0]!r} ({s.where}): {e}", file=sys.stderr)
            bar.update(1)
    return kept, media


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
