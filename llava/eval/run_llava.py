"""Ask one question about one or more images (LLaVA's ``run_llava``), with FasterVLM pruning.

    python -m llava.eval.run_llava --model-path checkpoints/llava-v1.5-7b --image-file view.jpg \\
        --query "What is in the picture?" --visual-token-num 58
"""
from __future__ import annotations

import json
import os
import re

import torch

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER
from llava.conversation import conv_templates
from llava.eval.runner import add_pruning_args, device_flag, finite_float, generate_batch, parse_args, pruning_kwargs
from llava.eval.utils import ArgumentParser, InputError, cli
from llava.mm_utils import get_model_name_from_path, load_image, tokenizer_image_token


def infer_conv_mode(model_name: str) -> str:
    """LLaVA's template choice by checkpoint name."""
    name = model_name.lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name:
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    if "v1" in name or "llava-1.5" in name:  # [FasterVLM] llava-hf names LLaVA-1.5 llava-1.5-7b-hf
        return "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "llava_v0"


def image_files(value: str, sep: str) -> list[str]:
    """``--image-file``: one existing file (its name may contain ``sep``), else ``sep``-separated files, each named
    when it is missing."""
    if os.path.isfile(value) or not sep or sep not in value:
        parts = [value]
    else:
        parts = value.split(sep)
    for part in parts:
        if not os.path.isfile(part):
            raise InputError(f"--image-file: no such file {part!r}")
    return parts


def eval_model(args) -> str:
    from llava.model.builder import load_pretrained_model

    files = image_files(args.image_file, args.sep)  # before any weight is loaded
    method_kwargs = pruning_kwargs(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_name = get_model_name_from_path(args.model_path)
    tokenizer, model, processor, _ = load_pretrained_model(args.model_path, args.model_base, model_name, device=device,
                                                           visual_token_num=args.visual_token_num,
                                                           pruning_method=args.pruning_method,
                                                           pruning_kwargs=method_kwargs)
    image_token = DEFAULT_IMAGE_TOKEN
    if model.config.mm_use_im_start_end:
        image_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    query = args.query
    if IMAGE_PLACEHOLDER in query:
        query = re.sub(re.escape(IMAGE_PLACEHOLDER), image_token if model.config.mm_use_im_start_end else DEFAULT_IMAGE_TOKEN, query)
    else:
        query = image_token + "\n" + query
    conv_mode = args.conv_mode or infer_conv_mode(model_name)
    if conv_mode not in conv_templates:
        raise InputError(f"--conv-mode {conv_mode!r} is unknown; choose from {', '.join(sorted(conv_templates))}")
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    images = [load_image(f) for f in files]
    if len(images) > 1:
        raise NotImplementedError("several images in one prompt are not supported; pass one --image-file")
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, use_cache=True,
                      pad_token_id=tokenizer.eos_token_id)
    gen_kwargs.update(dict(do_sample=True, temperature=args.temperature, top_p=args.top_p) if args.temperature > 0
                      else dict(do_sample=False))
    texts, counts = generate_batch(model, tokenizer, processor, [tokenizer_image_token(conv.get_prompt(), tokenizer)],
                                   images, gen_kwargs)
    print(texts[0])
    print(f"[visual tokens kept: {counts[0]}]")
    if args.record_kept:
        kept = [sorted(int(i) for i in crop) for crop in model.last_pruning.kept_indices_per_image()[0]]
        print(json.dumps({"kept": kept}))
    return texts[0]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", type=str, required=True, help="LLaVA checkpoint folder")
    parser.add_argument("--model-base", type=str, default=None, help="base model for LoRA checkpoints (not supported)")
    parser.add_argument("--image-file", type=str, required=True, help="image path")
    parser.add_argument("--query", type=str, required=True, help="the question; <image-placeholder> marks where the image goes")
    parser.add_argument("--conv-mode", type=str, default=None, help="prompt template (default: inferred from the model name)")
    parser.add_argument("--sep", type=str, default=",", help="separator between several image files")
    parser.add_argument("--temperature", type=finite_float, default=0.2, help="sampling temperature; 0 = greedy (default 0.2)")
    parser.add_argument("--top_p", type=finite_float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--num_beams", type=int, default=1, help="beam search width")
    parser.add_argument("--max_new_tokens", type=int, default=512, help="generation limit (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (matters only when sampling)")
    parser.add_argument("--device", type=device_flag, default=None, help="cpu, cuda, cuda:N, auto or mps (default: cuda if available)")
    add_pruning_args(parser)
    parser.add_argument("--record-kept", action="store_true",
                        help="also print, per image crop, the sorted indices (0..N-1, raster order in the tower's "
                             "patch grid) of the patches the pruning kept, as a JSON line {\"kept\": [[...], ...]}")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse_args(build_parser(), argv)
    torch.manual_seed(args.seed)
    eval_model(args)


if __name__ == "__main__":
    cli(main)
