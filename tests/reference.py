"""Independent reference computations for the model tests, built from stock transformers classes only.

Nothing here imports the code under test's model path: the vision side is HF's eager
``CLIPVisionModel(output_attentions=True)``, the language side HF's ``LlamaForCausalLM`` fed with
``inputs_embeds``, the projector plain ``torch.nn.functional`` on the checkpoint's tensors.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode
from transformers import AttentionInterface, CLIPVisionModel, LlamaConfig, LlamaForCausalLM


def checkpoint_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted(ckpt.glob("*.safetensors")):
        state.update(load_file(shard))
    return {k: v.float() for k, v in state.items()}


def reference_llama(ckpt: Path) -> LlamaForCausalLM:
    cfg = json.loads((ckpt / "config.json").read_text())
    keys = {k for k in LlamaConfig().to_dict()} | {"vocab_size"}
    llama = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k in keys and k != "model_type"}))
    # The LLM's tensors only: not the projector, nor LLaVA-NeXT's tower and image_newline.
    state = {k: v for k, v in checkpoint_state(ckpt).items()
             if not k.startswith(("model.mm_projector.", "model.vision_tower.", "model.image_newline"))}
    llama.load_state_dict(state, strict=True)
    return llama.eval()


def eager_437_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers 4.37's eager ``CLIPAttention`` arithmetic, the release FasterVLM's image code pins.

    4.37 multiplied the projected query by the scale, took ``bmm(query, key^T)`` and a softmax in the
    input dtype; the ``eager`` of later releases scales the logits instead and takes the softmax in fp32.
    Registered as ``attn_implementation="eager_437"``, so a stock ``CLIPVisionModel`` runs it.
    """
    weights = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register("eager_437", eager_437_attention)


def kept_set_agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Two (cases, k) kept-index tensors: the fraction of cases keeping the same set, and the mean overlap |A ∩ B| / k."""
    same = [set(x.tolist()) == set(y.tolist()) for x, y in zip(a, b)]
    overlap = [len(set(x.tolist()) & set(y.tolist())) / len(x) for x, y in zip(a, b)]
    return sum(same) / len(same), sum(overlap) / len(overlap)


def reference_tower(ckpt: Path) -> CLIPVisionModel:
    return CLIPVisionModel.from_pretrained(ckpt / "vision_tower", attn_implementation="eager").eval()


def reference_visual_tokens(ckpt: Path, tower: CLIPVisionModel, pixel_values: torch.Tensor, k: int | None):
    """FasterVLM as the paper defines it: CLS row of attentions[-2], head mean, top-k, raster order, projector."""
    out = tower(pixel_values, output_hidden_states=True, output_attentions=True)
    feats = out.hidden_states[-2][:, 1:]  # (B, N, C)
    scores = out.attentions[-2][:, :, 0, 1:].mean(dim=1)  # (B, N)
    if k is None:
        keep = torch.arange(feats.shape[1]).expand(feats.shape[0], -1)
    else:
        keep = torch.sort(torch.topk(scores, k, dim=-1).indices, dim=-1).values
    kept = torch.stack([f[i] for f, i in zip(feats, keep)])
    state = checkpoint_state(ckpt)
    h = F.linear(kept, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"])
    h = F.linear(F.gelu(h), state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
    return h, keep, scores


def splice(llama: LlamaForCausalLM, input_ids: torch.Tensor, visual: torch.Tensor, image_token: int = -200):
    """(1, L) ids with one placeholder + (k, D) visual embeddings → (1, L-1+k, D)."""
    ids = input_ids[0]
    pos = int((ids == image_token).nonzero())
    embed = llama.get_input_embeddings()
    return torch.cat([embed(ids[:pos]), visual, embed(ids[pos + 1:])])[None]


@torch.no_grad()
def greedy(llama: LlamaForCausalLM, embeds: torch.Tensor, steps: int, eos: int) -> list[int]:
    """Greedy decoding by full recomputation each step (no KV cache)."""
    out: list[int] = []
    for _ in range(steps):
        nxt = int(llama(inputs_embeds=embeds).logits[0, -1].argmax())
        out.append(nxt)
        if nxt == eos:
            break
        embeds = torch.cat([embeds, llama.get_input_embeddings()(torch.tensor([[nxt]]))], dim=1)
    return out


OTHER_DEVICE = torch.device("meta")


def _on_other(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, "_on_other_device", False)


def _tag(out, other: bool):
    if isinstance(out, torch.Tensor):
        out._on_other_device = other
    elif isinstance(out, (tuple, list)):
        for x in out:
            _tag(x, other)
    return out


class TwoDevices(TorchFunctionMode):
    """A second device on a CPU-only machine, as ``device_map="auto"`` gives a model spread over two GPUs.

    A tensor moved ``.to("meta")`` keeps its CPU data but reports ``OTHER_DEVICE`` and is tagged; what is computed
    from tagged tensors is tagged; ``.to(cpu)`` moves it back. An op that mixes tagged and untagged tensors (other
    than 0-dim ones, which devices share) fails as CUDA does: "Expected all tensors to be on the same device".
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) is torch.Tensor.device:  # the ``.device`` getter
            return OTHER_DEVICE if _on_other(args[0]) else func(*args)
        if func is torch.Tensor.to:
            devices = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (torch.device, str))]
            rest = [a for a in args[1:] if not isinstance(a, (torch.device, str))]
            out = func(args[0], *rest, **{k: v for k, v in kwargs.items() if k != "device"})
            if out is args[0] and devices:  # a move is a new tensor, even when the data stay put
                out = out.clone()
            return _tag(out, torch.device(devices[0]) == OTHER_DEVICE if devices else _on_other(args[0]))
        flat = [*args, *kwargs.values()]
        flat += [x for a in flat if isinstance(a, (tuple, list)) for x in a]
        tensors = [t for t in flat if isinstance(t, torch.Tensor) and t.dim() > 0]
        tags = {_on_other(t) for t in tensors}
        if len(tags) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices "
                               f"(simulated, in {getattr(func, '__name__', func)})")
        return _tag(func(*args, **kwargs), tags == {True})


class OnOtherDevice(torch.nn.Module):
    """Wraps a module (the projector) so that its output lands on ``OTHER_DEVICE`` (use under :class:`TwoDevices`)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x).to(OTHER_DEVICE)
