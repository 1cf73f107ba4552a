"""One unpruned prefill per sample: the vision tower's [CLS] attention and the LLM's attention to the image.

Upstream hard-coded the visual span as positions 35..610 (a 35-token vicuna_v1 prefix, 576 tokens)
and generated up to 128 tokens only to read the prefill attentions. Here the span is found from the
prompt itself, the position of ``IMAGE_TOKEN_INDEX`` in ``input_ids`` and the number of visual tokens
the model spliced there, and a single forward with ``output_attentions=True`` replaces generation.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from llava.analysis.data import build_prompt, first_turn_question, load_samples
from llava.analysis.plotting import write_json
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import get_model_name_from_path, load_image, process_images, tokenizer_image_token

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class SampleAttention:
    """What one sample contributes to the analyses (all fp32, on the model's device).

    ``image_rows[l]``: (Q, V) head-mean attention of LLM layer ``l`` from the query rows at and after the
    first visual token (Q = prompt length − ``start``) to the V visual tokens: rows ``0..V-1`` are the
    visual tokens themselves, rows ``V..Q-1`` the text after the image, row ``Q-1`` the last prompt token.
    """

    cls: torch.Tensor  # (N·crops,) head-mean [CLS] attention of the vision tower's selected layer
    image_rows: list[torch.Tensor]  # num_layers × (Q, V)
    start: int  # position of the first visual token in the spliced sequence
    prompt_len: int  # length of the spliced sequence


@dataclass
class Run:
    """Bookkeeping of one pass over the data: processed and skipped samples."""

    requested: int = 0
    processed: list[dict] = field(default_factory=list)  # {"id", "image_start", "prompt_len"}
    skipped: list[dict] = field(default_factory=list)  # {"id", "image", "reason"}

    def summary(self) -> dict:
        return {"requested": self.requested, "processed": len(self.processed), "skipped": self.skipped,
                "per_sample": self.processed}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by both analyses (upstream's names, defaults of ``scripts/analyze_attn_*.sh``)."""
    parser.add_argument("--model-path", default="./checkpoints/llava-v1.5-7b",
                        help="LLaVA checkpoint folder (default ./checkpoints/llava-v1.5-7b)")
    parser.add_argument("--question-file", default="./playground/data/analysis/llava_v1_5_mix1k.jsonl",
                        help="LLaVA-format data (.jsonl or .json list) with id, image, conversations; only the "
                             "first human turn is used")
    parser.add_argument("--image-folder", default="./playground/data/train",
                        help="folder that the samples' image paths are relative to")
    parser.add_argument("--output-folder", required=True, help="folder for the PNG plots and the JSON numbers")
    parser.add_argument("--conv-mode", default="vicuna_v1", help="conversation template (default vicuna_v1)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="analyse only the first N samples")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first sample that cannot be analysed (missing or unreadable image, "
                             "unsupported multi-crop input) instead of recording and skipping it")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default=None,
                        help="model dtype (default: fp16 on CUDA, fp32 on CPU)")


def load_model(args: argparse.Namespace):
    """``(tokenizer, model, image_processor)``, unpruned, with eager attention so the LLM returns attentions."""
    from llava.model.builder import load_pretrained_model

    dtype = _DTYPES[args.dtype] if args.dtype else None
    extra = {"dtype": dtype, "vision_tower_dtype": dtype} if dtype else {}
    tokenizer, model, processor, _ = load_pretrained_model(
        args.model_path, None, get_model_name_from_path(args.model_path), device=args.device,
        visual_token_num=None, attn_implementation="eager", **extra)
    return tokenizer, model, processor


@torch.inference_mode()
def forward_attentions(model, input_ids: torch.Tensor, images, image_sizes) -> SampleAttention:
    """One prefill of ``input_ids`` (1, T) holding exactly one image placeholder."""
    placeholders = (input_ids[0] == IMAGE_TOKEN_INDEX).nonzero().flatten()
    if placeholders.numel() != 1:
        raise ValueError(f"the prompt must hold exactly one image placeholder, found {placeholders.numel()}")
    start = int(placeholders[0])
    # logits_to_keep=1: the analysis needs no logits, and the full (T, vocab) matrix is large for 7B.
    out = model(input_ids, images=images, image_sizes=image_sizes, output_attentions=True, use_cache=False,
                logits_to_keep=1)
    if not out.attentions or out.attentions[0] is None:
        raise RuntimeError("the LLM returned no attentions; load it with attn_implementation='eager'")
    info = model.last_pruning
    visual = info.visual_tokens[0]
    prompt_len = input_ids.shape[1] - 1 + visual
    if out.attentions[0].shape[-1] != prompt_len:  # e.g. truncated at tokenizer_model_max_length
        raise ValueError(f"attention covers {out.attentions[0].shape[-1]} positions, expected {prompt_len}")
    # (1, H, T, T) → (Q, V): rows from the first visual token on (earlier rows cannot see the image).
    rows = [a[0, :, start:, start:start + visual].float().mean(dim=0) for a in out.attentions]
    return SampleAttention(cls=info.cls_attn.float().reshape(-1), image_rows=rows, start=start,
                           prompt_len=prompt_len)


def iter_sample_attentions(args: argparse.Namespace, tokenizer, model, processor,
                           run: Run) -> Iterator[SampleAttention]:
    """Yield each analysable sample of ``args.question_file``; record the others in ``run.skipped``.

    Every yielded sample has as many visual tokens and [CLS] scores as the first one, so per-position
    averages are well defined; LLaVA-NeXT images whose crop layout differs from the first are skipped.
    """
    samples = load_samples(args.question_file, args.limit)
    run.requested = len(samples)
    mm_use_im_start_end = bool(getattr(model.config, "mm_use_im_start_end", False))
    shape: tuple[int, int] | None = None  # (visual tokens V, [CLS] scores) of the first analysed sample
    bar = tqdm(samples, desc=os.path.basename(args.question_file), unit="sample")
    for sample in bar:
        sid = str(sample.get("id"))
        try:
            if not sample.get("image"):
                raise ValueError("sample has no image")
            prompt = build_prompt(first_turn_question(sample, mm_use_im_start_end), args.conv_mode)
            input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None].to(model.device)
            image = load_image(os.path.join(args.image_folder, sample["image"]))
            pixels = process_images([image], processor, model.config)
            pixels = ([p.to(model.device, model.dtype) for p in pixels] if isinstance(pixels, list)
                      else pixels.to(model.device, model.dtype))
            result = forward_attentions(model, input_ids, pixels, [image.size])
            this = (result.image_rows[0].shape[1], result.cls.shape[0])
            shape = shape or this
            if this != shape:
                raise ValueError(f"{this[0]} visual tokens and {this[1]} [CLS] scores, but earlier samples had "
                                 f"{shape[0]} and {shape[1]} (LLaVA-NeXT crop counts vary with the image)")
        except (FileNotFoundError, ValueError, NotImplementedError) as e:
            if args.strict:
                raise
            run.skipped.append({"id": sid, "image": sample.get("image"), "reason": str(e)})
            bar.set_postfix(skipped=len(run.skipped))
            continue
        run.processed.append({"id": sid, "image_start": result.start, "prompt_len": result.prompt_len})
        yield result


def report(run: Run, json_path: Path, header: dict) -> None:
    """Print a summary naming up to ten skipped samples; with nothing analysed, write ``header`` and the
    skip list to ``json_path`` and exit with an error, as no average exists."""
    print(f"analysed {len(run.processed)} of {run.requested} samples; results in {json_path.parent}", file=sys.stderr)
    if run.skipped:
        print(f"skipped {len(run.skipped)} samples (listed under samples.skipped in the JSON):", file=sys.stderr)
        for s in run.skipped[:10]:
            print(f"  {s['id']} ({s['image']}): {s['reason']}", file=sys.stderr)
    if not run.processed:
        write_json(json_path, {**header, "samples": run.summary()})
        raise SystemExit(f"no sample could be analysed; see {json_path}")


def run_header(args: argparse.Namespace) -> dict:
    """Inputs of the run, recorded at the top of each JSON output."""
    return {"model_path": args.model_path, "question_file": args.question_file, "image_folder": args.image_folder,
            "conv_mode": args.conv_mode}
