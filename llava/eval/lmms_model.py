"""[FasterVLM] The lmms-eval model ``fastervlm``: this project's loader, prompt template, preprocessing and decoding
behind lmms-eval's model API, so that an lmms-eval task runs under the protocol of our benchmark scripts.

    pip install -e ".[lmms]"   # on a CPU-only torch, then: pip uninstall -y torchvision (docs/transformers-lmms.md)
    python -m lmms_eval --model fastervlm --tasks textvqa_val --batch_size 1 \\
        --model_args pretrained=checkpoints/llava-v1.5-7b,visual_token_num=58

lmms-eval finds the model through its entry point group ``lmms_eval.models`` (this package declares
``fastervlm = "llava.eval.lmms_model:manifest"``). Model args (``--model_args k=v,...``):

- ``pretrained``: checkpoint folder, original (liuhaotian / LanguageBind) or transformers (llava-hf) layout;
- ``visual_token_num``: visual tokens kept per image (per crop for LLaVA-NeXT, per frame for Video-LLaVA); unset: all;
- ``pruning_method`` (``fastervlm``) and that method's options under their CLI names with ``_`` (``fastv_k``,
  ``fastv_score``, ``adaptprune_k``, ...; ``llava/pruning/README.md``), ``seed`` (0; ``random``'s draws);
- ``anyres_protocol``: ``paper`` / ``vanilla`` for LLaVA-NeXT (default: paper when pruning);
- ``conv_template`` (``vicuna_v1``, the paper's), ``device`` (cuda if available, else cpu), ``dtype`` (float16 on
  CUDA, float32 on CPU), ``attn_implementation`` (sdpa), and lmms-eval's ``--batch_size`` (left-padded batches).

``generate_until`` builds each prompt as ``llava.eval.runner`` does (image placeholder, then the task's text, in the
template) and decodes with the runner's ``generate_batch``: the answers of our CLIs for the same question and
settings; lmms-eval's ``until`` strings then cut the text. ``loglikelihood`` scores the continuation as the
assistant's reply in the template (the template's end-of-reply separator included) and returns, in lmms-eval's
convention (its ``multiple_choice`` takes the argmin, as its own models return their loss), the mean negative
log-likelihood per reply token, and whether greedy decoding would produce the reply.
Data parallel: under ``accelerate launch`` (or ``torchrun``) ``python -m lmms_eval ...`` each process reads its rank
from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, as lmms-eval's own models do through accelerate: lmms-eval gives
each rank its shard of the requests, and the model runs on ``cuda:LOCAL_RANK`` (``device=cuda`` means that device too;
``device=cuda:N`` or ``cpu`` is taken as given).
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates
from llava.eval.runner import generate_batch, pruning_kwargs, resolve_conv_mode
from llava.eval.utils import InputError
from llava.mm_utils import ANYRES_PROTOCOLS, get_model_name_from_path, process_images, tokenizer_image_token
from llava.pruning import available_methods, cli_parameters

try:
    from lmms_eval.api.model import lmms as _LmmsModel
except ImportError:  # lmms-eval is an optional extra: without it this module imports, and the model refuses to start
    _LmmsModel = object

MODEL_NAME = "fastervlm"
DTYPES = ("float16", "bfloat16", "float32")
# lmms-eval's generation_kwargs that decoding understands (others, e.g. image_aspect_ratio, are errors).
_GENERATION_KEYS = {"until", "max_new_tokens", "temperature", "top_p", "num_beams", "do_sample"}


def manifest():
    """lmms-eval's registration payload for the entry point group ``lmms_eval.models``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.FasterVLM")


@dataclass(frozen=True)
class Placement:
    """This process's share of a data-parallel run: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int
    world_size: int
    device: torch.device


def placement(device: str | None, env: Mapping[str, str], cuda_available: bool) -> Placement:
    """The rank, world size and device of this process from the launcher's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``; one process when unset) and the ``device`` model arg (None: CUDA if available, else CPU).
    A plain ``cuda`` is the process's own GPU, ``cuda:LOCAL_RANK``."""
    try:
        rank, world, local = (int(env.get(name, default)) for name, default in
                              (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    except ValueError:
        raise InputError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers, got {env.get('RANK')!r} / "
                         f"{env.get('WORLD_SIZE')!r} / {env.get('LOCAL_RANK')!r}") from None
    if not 0 <= rank < world:
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={world}")
    try:
        chosen = torch.device(device or ("cuda" if cuda_available else "cpu"))
    except RuntimeError:
        raise InputError(f"model arg device={device!r}: cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local)
    return Placement(rank, world, chosen)


def _option_name(flag: str) -> str:
    """``--fastv-k`` → ``fastv_k``: a method option's model-arg name."""
    return flag.lstrip("-").replace("-", "_")


class FasterVLM(_LmmsModel):
    """lmms-eval's ``fastervlm`` model (see the module docstring for its model args)."""

    is_simple = True

    def __init__(self, pretrained: str, visual_token_num: int | None = None, pruning_method: str = "fastervlm",
                 anyres_protocol: str | None = None, conv_template: str = "vicuna_v1", device: str | None = None,
                 dtype: str | None = None, attn_implementation: str = "sdpa", batch_size: int | str = 1,
                 max_batch_size: int | None = None, seed: int = 0, **method_options: Any) -> None:
        """``max_batch_size``: passed by lmms-eval for adaptive batch sizes, which fastervlm does not use."""
        if _LmmsModel is object:
            raise ImportError("the fastervlm lmms-eval model needs lmms-eval: pip install 'fastervlm[lmms]'")
        super().__init__()
        from llava.model.builder import load_pretrained_model

        if pruning_method not in available_methods():
            raise InputError(f"model arg pruning_method={pruning_method!r}: choose from {', '.join(available_methods())}")
        options = {_option_name(p.flag) for p in cli_parameters()}
        unknown = sorted(set(method_options) - options)
        if unknown:
            raise InputError(f"unknown model args {unknown}; fastervlm takes pretrained, visual_token_num, pruning_method, "
                             f"anyres_protocol, conv_template, device, dtype, attn_implementation, seed and the "
                             f"pruning options {sorted(options)}")
        if anyres_protocol is not None and anyres_protocol not in ANYRES_PROTOCOLS:
            raise InputError(f"model arg anyres_protocol={anyres_protocol!r}: choose from {', '.join(ANYRES_PROTOCOLS)}")
        if dtype is not None and dtype not in DTYPES:
            raise InputError(f"model arg dtype={dtype!r}: choose from {', '.join(DTYPES)}")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise InputError(f"--batch_size {batch_size!r}: a positive integer (no 'auto')")
        if visual_token_num is not None and (not isinstance(visual_token_num, int) or visual_token_num < 0):
            raise InputError(f"model arg visual_token_num={visual_token_num!r}: a non-negative integer")
        # The runner's own argument handling, so that options mean what the CLIs' flags mean.
        args = argparse.Namespace(model_path=str(pretrained), conv_mode=conv_template, pruning_method=pruning_method,
                                  seed=seed, **{o: method_options.get(o) for o in options})
        try:
            method_kwargs = pruning_kwargs(args)
        except InputError as e:  # it names the CLI flag (--fastv-k); the model arg is fastv_k
            raise InputError(f"model args: {e}") from None
        self.conv_mode = resolve_conv_mode(args)
        self.batch_size_per_gpu = int(batch_size)
        where = placement(device, os.environ, torch.cuda.is_available())
        # lmms-eval shards the requests by these (lmms.rank / lmms.world_size).
        self._rank, self._world_size, self._device = where.rank, where.world_size, where.device
        load_kwargs = {"attn_implementation": attn_implementation}
        if dtype is not None:
            load_kwargs["torch_dtype"] = getattr(torch, dtype)
        torch.manual_seed(seed)
        self.model_name = get_model_name_from_path(str(pretrained))
        self.tokenizer, self.model, self.processor, self.max_length = load_pretrained_model(
            str(pretrained), None, self.model_name, device=str(self._device), visual_token_num=visual_token_num,
            anyres_protocol=anyres_protocol, pruning_method=pruning_method, pruning_kwargs=method_kwargs, **load_kwargs)
        self.pad_token_id = (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                             else self.tokenizer.eos_token_id)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------ inputs

    def _doc_media(self, doc_to_visual, task: str, split: str, doc_id: int):
        """The question's media: None, one PIL image, or a preprocessed (3, T, H, W) video clip (Video-LLaVA)."""
        visuals = [v for v in (doc_to_visual(self.task_dict[task][split][doc_id]) or []) if v is not None]
        if len(visuals) > 1:
            raise NotImplementedError(f"{task} doc {doc_id}: {len(visuals)} images or videos; fastervlm answers one per question")
        if not visuals:
            return None
        if isinstance(visuals[0], str):  # a video file
            if not isinstance(self.processor, dict):
                raise InputError(f"{task} doc {doc_id}: a video ({visuals[0]}), but {self.model_name} is not Video-LLaVA")
            return self.processor["video"](visuals[0])
        return visuals[0]

    def _image_processor(self):
        return self.processor["image"] if isinstance(self.processor, dict) else self.processor

    def _placeholders(self, media) -> int:
        """``<image>`` placeholders of a question: one per image, one per frame of a video."""
        if media is None:
            return 0
        return media.shape[1] if isinstance(media, torch.Tensor) else 1

    def _prompt(self, context: str, media, reply: str | None = None) -> str:
        """The prompt ``llava.eval.runner.build_prompt`` makes (placeholders, a newline, the task's text, in the
        template), or with ``reply`` as the assistant's message. A context that places ``<image>`` itself keeps it."""
        question = context
        if media is not None and "<image>" not in context:
            image_token = (DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
                           if self.model.config.mm_use_im_start_end else DEFAULT_IMAGE_TOKEN)
            question = image_token * self._placeholders(media) + "\n" + context
        conv = conv_templates[self.conv_mode].copy()
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], reply)
        return conv.get_prompt()

    # ------------------------------------------------------------------ generation

    def _decoding(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """The runner's ``generate`` arguments from lmms-eval's ``generation_kwargs``, and the ``until`` strings."""
        unknown = sorted(set(gen_kwargs) - _GENERATION_KEYS)
        if unknown:
            raise InputError(f"generation_kwargs {unknown} are not supported by fastervlm (it takes {sorted(_GENERATION_KEYS)})")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.get("temperature") or 0)
        decoding = dict(max_new_tokens=int(gen_kwargs.get("max_new_tokens", 128)), num_beams=int(gen_kwargs.get("num_beams", 1)),
                        use_cache=True, pad_token_id=self.pad_token_id)
        # As the runner (and LLaVA): sampling exactly when the temperature is positive; do_sample alone changes nothing.
        if temperature > 0:
            decoding.update(do_sample=True, temperature=temperature, top_p=gen_kwargs.get("top_p"))
        else:
            decoding.update(do_sample=False)
        return decoding, until

    def generate_until(self, requests) -> list[str]:
        """Answers in request order; requests with equal ``generation_kwargs`` go in batches of ``batch_size``."""
        answers: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        for indices in groups.values():
            decoding, until = self._decoding(dict(requests[indices[0]].args[1]))
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                media, prompts = [], []
                for i in batch:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    media.append(self._doc_media(doc_to_visual, task, split, doc_id))
                    prompts.append(tokenizer_image_token(self._prompt(context, media[-1]), self.tokenizer))
                texts, _ = generate_batch(self.model, self.tokenizer, self._image_processor(), prompts, media, decoding)
                for i, text in zip(batch, texts):
                    for stop in until:
                        if stop:
                            text = text.split(stop)[0]
                    answers[i] = text
        return answers

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("fastervlm answers single-round tasks (generate_until, loglikelihood)")

    # ------------------------------------------------------------------ scoring

    def _pixels(self, media):
        """The model's ``images`` and ``image_sizes`` for one question's media, preprocessed as ``generate_batch`` does."""
        if media is None:
            return None, None
        if isinstance(media, torch.Tensor):
            return [media.to(device=self.model.device, dtype=self.model.dtype)], None
        pixels = process_images([media], self._image_processor(), self.model.config)
        pixels = (pixels.to(device=self.model.device, dtype=self.model.dtype) if torch.is_tensor(pixels)
                  else [p.to(device=self.model.device, dtype=self.model.dtype) for p in pixels])
        return pixels, [media.size]

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """``(mean −log p of the continuation's tokens, greedy)`` per request; the continuation is the assistant's reply."""
        results = []
        for request in requests:
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            if callable(continuation):
                continuation = continuation(self.task_dict[task][split][doc_id])
            media = self._doc_media(doc_to_visual, task, split, doc_id)
            prompt = self._prompt(context, media)
            reply = self._prompt(context, media, str(continuation).strip())
            context_ids = tokenizer_image_token(prompt, self.tokenizer)
            ids = tokenizer_image_token(reply, self.tokenizer)
            if ids[:len(context_ids)] != context_ids:
                raise InputError(f"{task} doc {doc_id}: the reply {continuation!r} changes the tokens of the prompt before it")
            target = torch.tensor(ids[len(context_ids):], device=self.model.device)  # (T,)
            images, sizes = self._pixels(media)
            logits = self.model(torch.tensor([ids], device=self.model.device), images=images, image_sizes=sizes).logits
            # The reply is the sequence's tail, after the visual tokens: its T tokens are predicted by the T positions
            # before the last.
            scores = logits[0, -len(target) - 1:-1].float().log_softmax(-1)  # (T, V)
            nll = -scores.gather(1, target[:, None]).mean()
            results.append((float(nll), bool(torch.equal(scores.argmax(-1), target))))
        return results
