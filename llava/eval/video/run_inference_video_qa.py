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

Answers are joined to questions by ``question_id``. Upstream pairs the two files by position, which is right
on any number of GPUs (both lists are chunked alike) as long as the files are position-aligned, as the 1k files
are; the join by id does not rely on that. The loop is the one every benchmark shares (``llava.eval.runner``):
the file is appended to and questions already in it are skipped, so a killed run resumes, and a run manifest
records how the answers were made (resuming under other settings is refused). A video that is missing or
undecodable is not skipped silently: it is listed on the console and in ``<answers-file>.missing.jsonl`` (its
question gets no line, so a rerun retries it); if no video at all can be read, the run stops.

``--protocol`` (default ``paper``):

- ``paper``: what FasterVLM's video numbers come from. Upstream decodes with ``do_sample=True,
  temperature=0.1`` and no seed, and LanguageBind's video transform flips each clip horizontally with
  probability 0.5 even at inference. Both draws are kept, but from a seed derived from ``--seed`` and
  the question id, so a run repeats exactly (on the same hardware and software) whatever the chunking
  or resumption.
- ``greedy``: greedy decoding and no flip: deterministic, but not the paper's protocol.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass

from llava.conversation import SeparatorStyle, conv_templates
from llava.eval.runner import add_chunk_args, add_device_args, add_pruning_args, add_record_kept_arg, parse_args, run
from llava.eval.tasks import AnswerFormat, Sample, Task, register
from llava.eval.utils import ArgumentParser, InputError, cli, read_json, require_keys
from llava.video_utils import BACKENDS, VideoProcessor, find_video

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
    seen: dict[str, int] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise InputError(f"{path}[{i}]: expected an object")
        require_keys(record, keys, f"{path}[{i}]")
        qid = record["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise InputError(f"{path}[{i}]: question_id must be an integer or a string, got {qid!r}")
        if str(qid) in seen:
            raise InputError(f"{path}[{i}]: duplicate question_id {qid!r} (first at [{seen[str(qid)]}])")
        seen[str(qid)] = i
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


def _clip_loader(processor: VideoProcessor, video_dir: str, name: str, flip: bool):
    def load():
        path = find_video(video_dir, name)
        if path is None:
            raise FileNotFoundError(f"no {name}.{{mp4,avi,mov,mkv}} in {video_dir}")
        return processor(path, flip=flip)  # (3, T, H, W)
    return load


def load_samples(args) -> list[Sample]:
    """One :class:`Sample` per question: its clip is decoded when it is answered, flipped (paper protocol) by a
    draw from the question's own seed."""
    from llava.model.video_llava import video_tower_config

    tower = video_tower_config(os.path.expanduser(args.model_path))
    processor = VideoProcessor(size=tower.image_size, num_frames=tower.num_frames, backend=args.video_backend)
    samples = []
    for i, item in enumerate(load_items(args.gt_file_question, args.gt_file_answers)):
        seed = item_seed(args.seed, item.question_id)
        flip = args.protocol == "paper" and random.Random(seed).random() < 0.5
        samples.append(Sample(
            key=(item.question_id,), question=item.question, placeholders=tower.num_frames,
            media=_clip_loader(processor, args.video_dir, args.video_prefix + item.video_name, flip),
            media_name=args.video_prefix + item.video_name, where=f"{args.gt_file_question}[{i}]",
            media_file=str(find_video(args.video_dir, args.video_prefix + item.video_name)
                           or os.path.join(args.video_dir, args.video_prefix + item.video_name)),
            seed=seed if args.protocol == "paper" else None,
            record={"id": item.question_id, "question": item.question, "answer": item.answer}))
    return samples


def add_args(parser) -> None:
    parser.add_argument("--video-dir", required=True, help="folder holding the videos")
    parser.add_argument("--video-prefix", default="",
                        help="prefix of the video file names: 'v_' for ActivityNet (upstream's _act script), else none")
    parser.add_argument("--video-backend", choices=("auto", *BACKENDS), default="auto",
                        help="video decoder: decord (upstream's) or pyav; auto picks decord if installed, else PyAV")
    parser.add_argument("--gt-file-question", required=True, help="questions: JSON list of {video_name, question, question_id}")
    parser.add_argument("--gt-file-answers", required=True,
                        help="answers: JSON list of {answer, type, question_id}, joined to the questions by question_id")


TASK = register(Task("video_qa", add_args, load_samples, AnswerFormat(("id",), text_field="pred", llava_ids=False)))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", required=True, help="Video-LLaVA checkpoint folder (e.g. checkpoints/Video-LLaVA-7B)")
    parser.add_argument("--model-base", default=None, help="base model for LoRA checkpoints (not supported; merge first)")
    TASK.add_args(parser)
    parser.add_argument("--answers-file", required=True,
                        help='JSON-lines output, one {"id", "question", "answer", "pred", "metadata"} per question; '
                             "appended to, skipping questions it already answers, under the same manifest")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard an existing answers file (and its manifest) and start afresh")
    add_chunk_args(parser)
    add_pruning_args(parser)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                        help=f"paper (default): sampling at temperature {PAPER_TEMPERATURE} and a random horizontal flip, "
                             "seeded per question, as FasterVLM ran it; greedy: greedy decoding, no flip")
    parser.add_argument("--seed", type=int, default=0, help="seed of the paper protocol's draws (default 0)")
    parser.add_argument("--conv-mode", default="llava_v1", help="prompt template (default llava_v1, as upstream)")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=1024,
                        help="generation limit (default 1024, as upstream)")
    add_device_args(parser)
    add_record_kept_arg(parser)
    # Settings the shared loop reads that video QA fixes: one clip per forward, no beams, missing videos listed.
    parser.set_defaults(top_p=None, num_beams=1, batch_size=1, anyres_protocol=None, skip_missing_images=True)
    return parser


def strip_stop(conv_mode: str):
    """Upstream cuts the conversation's stop string off the end of each answer."""
    conv = conv_templates[conv_mode]
    stop = conv.sep2 if conv.sep_style == SeparatorStyle.TWO else conv.sep

    def strip(text: str) -> str:
        return text[:-len(stop)].strip() if stop and text.endswith(stop) else text
    return strip


def main(argv: list[str] | None = None) -> None:
    from llava.video_utils import decoder_info

    args = parse_args(build_parser(), argv)
    if args.conv_mode not in conv_templates:
        raise InputError(f"--conv-mode {args.conv_mode!r} is unknown; choose from {', '.join(sorted(conv_templates))}")
    args.temperature = PAPER_TEMPERATURE if args.protocol == "paper" else 0.0
    run(args, TASK, extra_settings={"video_decoder": decoder_info(args.video_backend)},
        postprocess=strip_stop(args.conv_mode), processor_key="video")


if __name__ == "__main__":
    cli(main)
