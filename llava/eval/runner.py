"""The one inference loop behind every benchmark CLI (``model_vqa*``): chunking, resume, batching, progress.

A CLI turns its question file into :class:`Sample` objects and calls :func:`run`. The loop owns
everything else: loading the model, the prompt template, greedy or sampled decoding, appending one
answer line per question (flushed, so a killed run loses at most the lines in flight), skipping
questions already answered when rerun, and the final question-order rewrite of the answers file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import shortuuid
import torch
from PIL import Image
from tqdm import tqdm

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates
from llava.eval.utils import InputError
from llava.mm_utils import get_model_name_from_path, load_image, process_images, tokenizer_image_token
from llava.pruning import available_methods, cli_parameters, get_method, method_parameters

PRUNING_METHODS = available_methods()


@dataclass
class Sample:
    """One question. ``question`` is the user text without the image token; ``record`` is copied into the answer line."""

    key: tuple  # unique id of the answer line, e.g. (question_id,) or (question_id, round_id)
    question: str
    image: Callable[[], Image.Image] | None  # lazily loaded; None for text-only questions
    record: dict = field(default_factory=dict)
    image_name: str | None = None  # for error messages and the missing-images report


def add_common_args(parser: argparse.ArgumentParser, max_new_tokens: int, temperature: float = 0.2,
                    conv_mode: str = "llava_v1") -> None:
    """Flags shared by every inference CLI (upstream LLaVA/FasterVLM names and defaults)."""
    parser.add_argument("--model-path", type=str, required=True, help="LLaVA checkpoint folder (e.g. checkpoints/llava-v1.5-7b)")
    parser.add_argument("--model-base", type=str, default=None, help="base model for LoRA checkpoints (not supported; merge first)")
    parser.add_argument("--answers-file", type=str, required=True,
                        help="answers JSON-lines file; appended to, skipping questions it already answers")
    parser.add_argument("--conv-mode", type=str, default=conv_mode, help=f"prompt template (default {conv_mode}; the paper uses vicuna_v1)")
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many contiguous chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="which chunk (0-based) this process answers")
    parser.add_argument("--temperature", type=float, default=temperature,
                        help=f"sampling temperature; 0 = greedy, the paper's protocol (default {temperature}, as upstream)")
    parser.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold (only when sampling)")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search width (default 1)")
    parser.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help=f"generation limit (default {max_new_tokens})")
    parser.add_argument("--visual-token-num", type=int, default=None,
                        help="[FasterVLM] visual tokens kept per image (576 = all for LLaVA-1.5); default: no pruning")
    parser.add_argument("--pruning-method", type=str, default="fastervlm", choices=PRUNING_METHODS,
                        help="how visual tokens are chosen (default fastervlm; the others are baselines and the "
                             "paper's ablations, see llava/pruning/README.md)")
    for p in cli_parameters():  # each method's own options, e.g. --fastv-k
        defaults = ", ".join(f"{name}: {value}" for name, value in p.defaults.items())
        parser.add_argument(p.flag, type=p.type, choices=p.choices, default=None, help=f"{p.help} (default {defaults})")
    parser.add_argument("--anyres-protocol", choices=["paper", "vanilla"], default=None,
                        help="LLaVA-NeXT only: 'paper' (fixed 672x672 grid, no newline tokens; the default when pruning) "
                             "or 'vanilla' (LLaVA-NeXT's own grid choice and spatial_unpad merge)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed (matters when sampling, and for --pruning-method random)")
    parser.add_argument("--device", type=str, default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                        help="LLM dtype (default float16 on CUDA, the paper's protocol; float32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="questions per forward (default 1, the paper's protocol); >1 left-pads and sorts by length")
    parser.add_argument("--attn-implementation", choices=["sdpa", "eager", "flash_attention_2"], default="sdpa",
                        help="LLM attention kernel (flash_attention_2 needs the [flash] extra)")
    parser.add_argument("--skip-missing-images", action="store_true",
                        help="record missing images in <answers-file>.missing.jsonl and go on, instead of stopping")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions of the chunk (quick runs)")


def get_chunk(items: Sequence, num_chunks: int, chunk_idx: int) -> list:
    """LLaVA's chunking: contiguous slices of ceil(n / num_chunks) items."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise InputError(f"--chunk-idx {chunk_idx} must lie in [0, --num-chunks {num_chunks})")
    size = math.ceil(len(items) / num_chunks)
    return list(items[chunk_idx * size:(chunk_idx + 1) * size])


def read_done(path: Path, key_fields: Sequence[str]) -> set[tuple]:
    """Keys already answered in ``path``. A torn last line (a killed run) is cut off; any other bad line is an error."""
    if not path.is_file():
        return set()
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    done: set[tuple] = set()
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
        done.add(tuple(json.dumps(obj.get(k)) for k in key_fields))
    return done


def _key(sample: Sample) -> tuple:
    return tuple(json.dumps(k) for k in sample.key)


def build_prompt(question: str, has_image: bool, conv_mode: str, mm_use_im_start_end: bool) -> str:
    if has_image:
        image_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN if mm_use_im_start_end else DEFAULT_IMAGE_TOKEN
        question = image_token + "\n" + question
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
    try:
        get_method(args.pruning_method, **kwargs)  # bad values fail here, before any weights load
    except ValueError as e:
        raise InputError(str(e)) from None
    return kwargs


def _load_model(args):
    from llava.model.builder import check_visual_token_num, load_pretrained_model

    check_visual_token_num(args.model_path, args.visual_token_num)  # fail before loading weights
    method_kwargs = pruning_kwargs(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"attn_implementation": args.attn_implementation}
    if args.dtype:
        kwargs["torch_dtype"] = getattr(torch, args.dtype)
    model_name = get_model_name_from_path(os.path.expanduser(args.model_path))
    tokenizer, model, processor, _ = load_pretrained_model(
        os.path.expanduser(args.model_path), args.model_base, model_name, device=device,
        visual_token_num=args.visual_token_num, anyres_protocol=args.anyres_protocol,
        pruning_method=args.pruning_method, pruning_kwargs=method_kwargs, **kwargs)
    return tokenizer, model, processor, model_name


def run(args, samples: Sequence[Sample], key_fields: Sequence[str] = ("question_id",)) -> None:
    """Answer this chunk of ``samples`` into ``args.answers_file`` (see the module docstring)."""
    if args.conv_mode not in conv_templates:
        raise InputError(f"--conv-mode {args.conv_mode!r} is unknown; choose from {', '.join(sorted(conv_templates))}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    keys = [_key(s) for s in samples]
    if len(set(keys)) != len(keys):
        raise InputError("the question file repeats a question id; answers could not be told apart")
    chunk = get_chunk(samples, args.num_chunks, args.chunk_idx)
    if args.limit is not None:
        chunk = chunk[:args.limit]
    answers_file = Path(os.path.expanduser(args.answers_file))
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(answers_file, key_fields)
    todo = [s for s in chunk if _key(s) not in done]
    if not todo:
        print(f"{answers_file}: all {len(chunk)} questions of this chunk are answered")
        return

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer, model, processor, model_name = _load_model(args)
    conv_mode = args.conv_mode
    if "plain" in model_name and "finetune" not in model_name.lower() and "mmtag" not in conv_mode:
        conv_mode += "_mmtag"  # LLaVA's rule for pretrain-only checkpoints
    im_start_end = getattr(model.config, "mm_use_im_start_end", False)
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, use_cache=True,
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if args.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    else:
        gen_kwargs.update(do_sample=False)

    prompts = {_key(s): tokenizer_image_token(build_prompt(s.question, s.image is not None, conv_mode, im_start_end), tokenizer)
               for s in todo}
    if args.batch_size > 1:  # longest first: less padding per batch, and an early out-of-memory
        todo = sorted(todo, key=lambda s: -len(prompts[_key(s)]))
    missing_log = answers_file.with_name(answers_file.name + ".missing.jsonl")
    visual_tokens: list[int] = []
    bar = tqdm(total=len(todo), desc=answers_file.name, initial=0)
    with open(answers_file, "a", encoding="utf-8") as out:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            batch, images = _load_images(batch, args, missing_log, bar)
            if not batch:
                continue
            texts, counts = generate_batch(model, tokenizer, processor, [prompts[_key(s)] for s in batch], images, gen_kwargs)
            for sample, text, count in zip(batch, texts, counts):
                line = {**sample.record, "text": text, "answer_id": shortuuid.uuid(), "model_id": model_name, "metadata": {}}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                visual_tokens.append(count)
            out.flush()
            bar.update(len(batch))
            bar.set_postfix(v_token_num=counts[-1])
    bar.close()
    if visual_tokens:
        print(f"Average number of visual tokens: {sum(visual_tokens) / len(visual_tokens):.2f}")
    _rewrite_in_question_order(answers_file, chunk, key_fields)


def _load_images(batch: list[Sample], args, missing_log: Path, bar) -> tuple[list[Sample], list[Image.Image | None]]:
    kept, images = [], []
    for s in batch:
        try:
            images.append(s.image() if s.image is not None else None)
            kept.append(s)
        except (FileNotFoundError, ValueError) as e:
            if not args.skip_missing_images:
                raise InputError(f"{e} (question {s.key[0]}); pass --skip-missing-images to record it and go on") from None
            with open(missing_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": list(s.key), "image": s.image_name, "error": str(e)}) + "\n")
            bar.update(1)
    return kept, images


@torch.no_grad()
def generate_batch(model, tokenizer, processor, prompt_ids: list[list[int]], images: list[Image.Image | None],
                   gen_kwargs: dict) -> tuple[list[str], list[int]]:
    """Greedy/sampled answers for one batch; returns texts and visual-token counts per sample.

    Batches of more than one question are left-padded, so every sequence ends at the last column
    and the kept visual tokens keep the same (contiguous) positions they have at batch size 1.
    """
    device = model.device
    with_image = [img is not None for img in images]
    if any(with_image) and not all(with_image):
        raise InputError("a batch mixes questions with and without images; use --batch-size 1 for such files")
    pixel_values = None
    if all(with_image):
        pixel_values = process_images(images, processor, model.config)
        pixel_values = pixel_values.to(device=device, dtype=model.dtype) if torch.is_tensor(pixel_values) else \
            [p.to(device=device, dtype=model.dtype) for p in pixel_values]
    image_sizes = [img.size for img in images] if all(with_image) else None
    if len(prompt_ids) == 1:
        input_ids = torch.tensor([prompt_ids[0]], device=device)
        kwargs = {}
    else:
        longest = max(map(len, prompt_ids))
        pad = gen_kwargs["pad_token_id"]
        input_ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompt_ids], device=device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        kwargs = {"attention_mask": mask}
    previous_side = getattr(model.config, "tokenizer_padding_side", "right")
    model.config.tokenizer_padding_side = "left" if len(prompt_ids) > 1 else previous_side
    try:
        output_ids = model.generate(input_ids, images=pixel_values, image_sizes=image_sizes, **kwargs, **gen_kwargs)
    finally:
        model.config.tokenizer_padding_side = previous_side
    texts = [t.strip() for t in tokenizer.batch_decode(output_ids, skip_special_tokens=True)]
    counts = model.last_pruning.visual_tokens if pixel_values is not None and model.last_pruning else [0] * len(texts)
    return texts, list(counts)


def _rewrite_in_question_order(path: Path, chunk: Sequence[Sample], key_fields: Sequence[str]) -> None:
    """Once a chunk is complete, order its lines as the questions are (batching answers them out of order)."""
    order = {_key(s): i for i, s in enumerate(chunk)}
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keyed = [(order.get(tuple(json.dumps(json.loads(l).get(k)) for k in key_fields), len(order)), i, l)
             for i, l in enumerate(lines)]
    if [k for k, _, _ in keyed] == sorted(k for k, _, _ in keyed):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(l + "\n" for _, _, l in sorted(keyed)), encoding="utf-8")
    os.replace(tmp, path)
