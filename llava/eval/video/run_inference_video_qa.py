"""Zero-shot video QA inference (TGIF, MSVD, MSRVTT, ActivityNet) with Video-LLaVA and [FasterVLM] per-frame pruning.

    python -m llava.eval.video.run_inference_video_qa --model-path checkpoints/Video-LLaVA-7B \\
        --video-dir eval/GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA/videos \\
        --gt-file-question eval/GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA/test_q_1k.json \\
        --gt-file-answers eval/GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA/test_a_1k.json \\
        --answers-file out/1_0.jsonl --visual-token-num 64

As upstream (Video-LLaVA's ``run_inference_video_qa.py`` as FasterVLM ran it): the video is
``{video-dir}/{video-prefix}{video_name}`` with the first existing extension of .mp4/.avi/.mov/.mkv,
8 frames; the prompt is eight ``<image>``, a newline and the question under ``llava_v1``; the answer is
the new tokens up to ``</s>``. Each line of ``--answers-file`` is ``{"id", "question", "answer", "pred"}``,
the input of ``llava.eval.video.eval_video_qa``.

Unlike upstream, answers are joined to questions by ``question_id`` (upstream pairs them by position,
which goes wrong for every chunk but the first); the file is appended to and questions already in it
are skipped, so a killed run resumes; and a video that is missing or undecodable is not skipped
silently: it is listed in ``<answers-file>.missing.jsonl`` and reported at the end (its question gets no
line, so a rerun retries it).

``--protocol`` (default ``paper``):

- ``paper``: what FasterVLM's video numbers come from. Upstream decodes with ``do_sample=True,
  temperature=0.1`` and no seed, and LanguageBind's video transform flips each clip horizontally with
  probability 0.5 even at inference. Both draws are kept, but from a seed derived from ``--seed`` and
  the question id, so a run repeats exactly (on the same hardware and software) whatever the chunking
  or resumption.
- ``greedy``: greedy decoding and no flip: deterministic, but not the paper's protocol.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import SeparatorStyle, conv_templates
from llava.eval.runner import PRUNING_METHODS, get_chunk, read_done
from llava.eval.utils import InputError, read_json, require_keys, write_jsonl
from llava.mm_utils import tokenizer_image_token
from llava.video_utils import BACKENDS, VideoDecodeError, find_video

PROTOCOLS = ("paper", "greedy")
PAPER_TEMPERATURE = 0.1


@dataclass(frozen=True)
class Item:
    question_id: str | int
    video_name: str
    question: str
    answer: str


def _read_records(path: str | os.PathLike, keys: tuple[str, ...]) -> list[dict]:
    """A Video-ChatGPT QA file: a JSON list of objects with ``keys`` and a unique ``question_id``."""
    records = read_json(path)
    if not isinstance(records, list):
        raise InputError(f"{path}: expected a JSON list of {{{', '.join(keys)}}}")
    seen: set[str] = set()
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"{path}[{i}]: expected an object")
        require_keys(record, keys, f"{path}[{i}]")
        if str(record["question_id"]) in seen:
            raise InputError(f"{path}[{i}]: duplicate question_id {record['question_id']!r}")
        seen.add(str(record["question_id"]))
    return records


def load_items(question_file: str | os.PathLike, answer_file: str | os.PathLike) -> list[Item]:
    """Questions (``test_q*.json``) in file order, each joined by ``question_id`` to its answer (``test_a*.json``)."""
    answers = {str(a["question_id"]): str(a["answer"]) for a in _read_records(answer_file, ("question_id", "answer"))}
    items, unanswered = [], []
    for q in _read_records(question_file, ("video_name", "question", "question_id")):
        qid = q["question_id"]
        if str(qid) not in answers:
            unanswered.append(qid)
            continue
        items.append(Item(qid, str(q["video_name"]), str(q["question"]), answers[str(qid)]))
    if unanswered:
        raise InputError(f"{answer_file}: no answer for {len(unanswered)} question id(s), e.g. {unanswered[:5]}")
    return items


def item_seed(seed: int, question_id: str | int) -> int:
    """A per-question seed: the same draws for a question whatever the chunk or the resume point."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{question_id}".encode()).digest()[:8], "little")


def build_prompt(question: str, num_frames: int, conv_mode: str) -> str:
    """Upstream's layout: one ``<image>`` per frame, a newline, the question."""
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN * num_frames + "\n" + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True, help="Video-LLaVA checkpoint folder (e.g. checkpoints/Video-LLaVA-7B)")
    parser.add_argument("--model-base", default=None, help="base model for LoRA checkpoints (not supported; merge first)")
    parser.add_argument("--video-dir", required=True, help="folder holding the videos")
    parser.add_argument("--video-prefix", default="",
                        help="prefix of the video file names: 'v_' for ActivityNet (upstream's _act script), else none")
    parser.add_argument("--video-backend", choices=("auto", *BACKENDS), default="auto",
                        help="video decoder: decord (upstream's) or pyav; auto picks decord if installed, else PyAV")
    parser.add_argument("--gt-file-question", required=True, help="questions: JSON list of {video_name, question, question_id}")
    parser.add_argument("--gt-file-answers", required=True,
                        help="answers: JSON list of {answer, type, question_id}, joined to the questions by question_id")
    parser.add_argument("--answers-file", required=True,
                        help='JSON-lines output, one {"id", "question", "answer", "pred"} per question; appended to, '
                             "skipping questions it already answers")
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many contiguous chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="which chunk (0-based) this process answers")
    parser.add_argument("--visual-token-num", type=int, default=None,
                        help="[FasterVLM] patches kept per frame, L in 0..256 (8·L visual tokens per video; "
                             "256 or unset = no pruning)")
    parser.add_argument("--pruning-method", choices=PRUNING_METHODS, default="fastervlm",
                        help="how visual tokens are chosen (default fastervlm)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                        help=f"paper (default): sampling at temperature {PAPER_TEMPERATURE} and a random horizontal flip, "
                             "seeded per question, as FasterVLM ran it; greedy: greedy decoding, no flip")
    parser.add_argument("--seed", type=int, default=0, help="seed of the paper protocol's draws (default 0)")
    parser.add_argument("--conv-mode", default="llava_v1", help="prompt template (default llava_v1, as upstream)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="generation limit (default 1024, as upstream)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions of the chunk (quick runs)")
    return parser


@torch.no_grad()
def answer(model, tokenizer, input_ids: torch.Tensor, video: torch.Tensor, gen_kwargs: dict, stop_str: str) -> str:
    """The decoded new tokens for one (3, T, H, W) clip, stripped of the stop string as upstream does."""
    output_ids = model.generate(input_ids, images=[video], **gen_kwargs)
    text = tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
    return text[:-len(stop_str)].strip() if text.endswith(stop_str) else text


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.conv_mode not in conv_templates:
        raise InputError(f"--conv-mode {args.conv_mode!r} is unknown; choose from {', '.join(sorted(conv_templates))}")
    chunk = get_chunk(load_items(args.gt_file_question, args.gt_file_answers), args.num_chunks, args.chunk_idx)
    if args.limit is not None:
        chunk = chunk[:args.limit]
    answers_file = Path(os.path.expanduser(args.answers_file))
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    missing_log = answers_file.with_name(answers_file.name + ".missing.jsonl")
    done = read_done(answers_file, ("id",))
    todo = [it for it in chunk if (json.dumps(it.question_id),) not in done]
    if not todo:
        print(f"{answers_file}: all {len(chunk)} questions of this chunk are answered")
        missing_log.unlink(missing_ok=True)
        return

    from llava.model.builder import load_pretrained_model
    from llava.model.video_llava import is_video_llava

    model_path = os.path.expanduser(args.model_path)
    if not is_video_llava(model_path):
        raise InputError(f"{model_path}: not a Video-LLaVA checkpoint (its config.json names no mm_video_tower)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model, processor, _ = load_pretrained_model(model_path, args.model_base, device=device,
                                                           visual_token_num=args.visual_token_num,
                                                           pruning_method=args.pruning_method)
    video_processor = processor["video"]
    video_processor.backend = args.video_backend
    conv = conv_templates[args.conv_mode]
    stop_str = conv.sep2 if conv.sep_style == SeparatorStyle.TWO else conv.sep
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, num_beams=1, use_cache=True,
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if args.protocol == "paper":
        gen_kwargs.update(do_sample=True, temperature=PAPER_TEMPERATURE)
    else:
        gen_kwargs.update(do_sample=False)

    missing: list[dict] = []
    visual_tokens: list[int] = []
    bar = tqdm(todo, desc=answers_file.name)
    with open(answers_file, "a", encoding="utf-8") as out:
        for item in bar:
            path = find_video(args.video_dir, args.video_prefix + item.video_name)
            seed = item_seed(args.seed, item.question_id)
            flip = args.protocol == "paper" and random.Random(seed).random() < 0.5
            try:
                if path is None:
                    raise FileNotFoundError(f"no {args.video_prefix}{item.video_name}.{{mp4,avi,mov,mkv}} in {args.video_dir}")
                video = video_processor(path, flip=flip).to(device=model.device, dtype=model.dtype)  # (3, T, H, W)
            except (FileNotFoundError, VideoDecodeError) as e:
                missing.append({"id": item.question_id, "video_name": item.video_name, "error": str(e)})
                continue
            prompt = build_prompt(item.question, video.shape[1], args.conv_mode)
            input_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None].to(model.device)
            torch.manual_seed(seed)  # the sampling draws of the paper protocol (a no-op for greedy)
            pred = answer(model, tokenizer, input_ids, video, gen_kwargs, stop_str)
            out.write(json.dumps({"id": item.question_id, "question": item.question, "answer": item.answer,
                                  "pred": pred}, ensure_ascii=False) + "\n")
            out.flush()
            visual_tokens.append(model.last_pruning.visual_tokens[0])
            bar.set_postfix(v_token_num=visual_tokens[-1])
    bar.close()
    if visual_tokens:
        print(f"Average number of visual tokens: {sum(visual_tokens) / len(visual_tokens):.2f}")
    if not missing:
        missing_log.unlink(missing_ok=True)
        return
    write_jsonl(missing_log, missing)
    report = (f"{len(missing)} video(s) missing or unreadable, their questions left unanswered "
              f"(listed in {missing_log}), e.g. {missing[0]['error']}")
    if not visual_tokens and not done:  # no video found at all: a wrong --video-dir or --video-prefix
        raise InputError(report)
    print(f"WARNING: {report}", file=sys.stderr)


if __name__ == "__main__":
    main()
