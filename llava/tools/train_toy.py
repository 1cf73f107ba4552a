"""Train the toy world's LLaVA-1.5 on CPU in minutes and save it in the original liuhaotian layout.

    python -m llava.tools.train_toy --out checkpoints/llava-v1.5-toy [--seed 0] [--world v3 --threads 1]

Two stages, as the toy world needs them (``llava.tools.toy_world`` makes the scenes):

1. **Vision tower from [CLS] alone.** A tiny ``CLIPVisionModel`` at LLaVA-1.5's geometry (336 px, 14-px patches,
   576 patches + [CLS]) learns to name the target's colour from its [CLS] token at the layer LLaVA reads. The
   only way to the answer is that layer's [CLS] attention, so [CLS] learns to look at the few patches the target
   covers: the property FasterVLM relies on.
2. **LLaVA on the questions, tower frozen.** A tiny LLaMA and an ``mlp2x_gelu`` projector learn to answer the three
   question families (short answer, yes/no, lettered choice) in the ``vicuna_v1`` template, the answer token
   and ``</s>`` as labels, through ``LlavaLlamaForCausalLM``'s own multimodal forward on the penultimate tower
   layer's patches: all 576 in half the steps, a random subset holding the target in the other half (``train_llm`` says
   why; unlike LLaVA, which always trains on all 576).

In the v2 world (``--world v2``: 3–4 coloured shapes, questions about the colour most of them have) stage 1 names
that colour from [CLS], so [CLS] learns to look at all the coloured shapes, and stage 2's subsets hold all of them.
v3 (``--world v3``: 4–7 shapes of three colours, the colour covering the most of the picture) trains the same way,
without a curriculum.

In v1 and v2 both stages start with large targets that shrink to the toy world's size (``curriculum``). Every batch is freshly
generated, so nothing is seen twice; the evaluation splits come from other random streams. The run is
deterministic for a seed and ``--threads``. ``OUT`` then holds ``config.json``, the fp16 LLM weights (two shards
and an index), the sentencepiece tokenizer, ``vision_tower/`` (fp32 CLIP weights and preprocessor, which
``mm_vision_tower`` names), and ``training.png`` / ``training.json`` (loss curves, accuracy, times).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from llava.constants import IGNORE_INDEX
from llava.eval.runner import build_prompt
from llava.eval.utils import ArgumentParser, cli
from llava.mm_utils import tokenizer_image_token
from llava.pruning import PruningMethod, TowerOutputs, select_topk_raster
from llava.tools import toy_world
from llava.tools.make_tiny_checkpoint import _save_sharded, train_tokenizer

# The tower: LLaVA and FasterVLM read layer -2, the first here; the last layer is never run by LLaVA and never
# trained (see train_tower). Four heads of 16 dims: [CLS] then has a target patch among its top 29 in every image
# (hidden 32 with two heads: in about two thirds), and 16-dim heads run far faster on CPU than 8-dim ones.
TOWER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=336,
             patch_size=14, projection_dim=64)
# The LLM: 3 layers in v1, so FastV's default K = 2 leaves a layer to prune before; 6 in v2 (WORLD_DEFAULTS), where
# the majority colour needs more than 3 layers (3 layers, 300 + 1200 steps: unpruned 90.0 %, FastV at 58 only 1.8
# points below it; 6 layers, 300 + 1000 steps: 92.2 %, FastV at 58 15 points below).
LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
           max_position_embeddings=2048, rms_norm_eps=1e-5)
VOCAB_SIZE = 640
CONV_MODE = "vicuna_v1"
COLORS = list(toy_world.COLORS)


def pixel_values(images: list[Image.Image]) -> torch.Tensor:
    """(B, 3, 336, 336) CLIP-normalised pixels: what ``process_images`` gives for 336-px RGB images, faster."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPImageProcessor

    mean = torch.tensor(CLIPImageProcessor().image_mean).view(3, 1, 1)
    std = torch.tensor(CLIPImageProcessor().image_std).view(3, 1, 1)
    x = torch.from_numpy(np.stack([np.asarray(img, dtype=np.float32) for img in images])).permute(0, 3, 1, 2)
    return (x / 255 - mean) / std


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def curriculum(step: int, steps: int, start: int = 96) -> tuple[int, int]:
    """Target side range (px) at ``step``: from 88–96 px (``start``) shrinking linearly to the toy world's 28–36
    over the first half of the steps, then the toy world's. v2 starts at 64 px: four 96-px shapes barely fit
    apart in 336 px.

    A target a few patches wide is a needle among 576 tokens: a tiny model trained from scratch on it sits on a
    plateau for hundreds of steps. Large targets first teach the tower and the LLM where to look within tens.
    """
    lo, hi = toy_world.TARGET_SIDE
    top = round(start + (hi - start) * min(1.0, step / (0.5 * steps)))
    return max(lo, top - (hi - lo)), top


# v3 draws its shapes at their final sizes (``toy_world.make_scene3`` takes no side): its entry only feeds the
# progress bar, whose "side" then means nothing.
CURRICULUM_START = {"v1": 96, "v2": 64, "v3": 64}
# Per world: stage 1 and stage 2 steps and the LLM's depth (the shipped checkpoints' settings).
WORLD_DEFAULTS = {"v1": dict(tower_steps=200, llm_steps=600, llm_layers=3),
                  "v2": dict(tower_steps=300, llm_steps=1000, llm_layers=6),
                  "v3": dict(tower_steps=400, llm_steps=2000, llm_layers=6)}


def train_tower(seed: int, steps: int, batch_size: int, lr: float, log: dict, world: str = "v1"):
    """Stage 1: a CLIP tower and a colour head on [CLS] at the layer LLaVA reads (``mm_vision_select_layer``).

    The head reads ``hidden_states[-2][:, 0]`` (LayerNorm + linear), so the target's colour reaches [CLS] only
    through that layer's attention, the one FasterVLM scores with, and the patches' outputs play no part in the
    loss. Read from the last layer instead, the tower learns to copy the colour into every patch first (the
    patches feed the last layer's [CLS]), and then random patches answer as well as the target's. The last layer
    keeps its initial weights: LLaVA never runs it. In v2 the colour is the one most shapes have, which needs
    several shapes. Returns the tower; ``log["tower"]`` gets the curves.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    tower = CLIPVisionModel(CLIPVisionConfig(**TOWER))
    head = torch.nn.Sequential(torch.nn.LayerNorm(TOWER["hidden_size"]), torch.nn.Linear(TOWER["hidden_size"], len(COLORS)))
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, 10))
    losses, accs = [], []
    bar = tqdm(range(steps), desc="stage 1: tower from [CLS]", unit="step")
    for step in bar:
        side = curriculum(step, steps, CURRICULUM_START[world])
        scenes = [toy_world.sample(seed, "train-tower", step * batch_size + i, "textvqa", side, world)[0]
                  for i in range(batch_size)] if world != "v1" else \
            [toy_world.make_scene(toy_world.stream(seed, "train-tower", step * batch_size + i), side)
             for i in range(batch_size)]
        x = pixel_values([toy_world.render(s) for s in scenes])
        cls = tower(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 0]  # (B, C)
        logits = head(cls)  # (B, colours)
        y = torch.tensor([COLORS.index(s.color) for s in scenes])
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        accs.append((logits.argmax(-1) == y).float().mean().item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{np.mean(accs[-10:]):.2f}", side=f"{side[1]}px")
    log["tower"] = {"loss": losses, "accuracy": accs}
    return tower.requires_grad_(False).eval()


@torch.no_grad()
def cls_recall(tower, seed: int, images: int = 128, k: int = 58, world: str = "v1") -> tuple[float, float]:
    """How well FasterVLM's score finds the target on fresh scenes, for ``tower`` (a ``CLIPVisionTower``).

    Returns the mean fraction of the target's patches among the top-``k`` by head-mean [CLS] attention, and the
    fraction of images with at least one of them there (random selection: ``k``/576 and ~1 − (1 − ``k``/576)^9);
    in v2 the second is the fraction of images with a patch of *every* coloured shape there.
    """
    if world != "v1":
        scenes = [toy_world.sample(seed, "recall", i, "textvqa", world=world)[0] for i in range(images)]
    else:
        scenes = [toy_world.make_scene(toy_world.stream(seed, "recall", i)) for i in range(images)]
    _, cls_attn = tower(pixel_values([toy_world.render(s) for s in scenes]))  # (B, H, N)
    top = cls_attn.mean(dim=1).topk(k, dim=-1).indices
    found = [len(set(s.target_patches()) & set(t.tolist())) / len(s.target_patches()) for s, t in zip(scenes, top)]
    if world != "v1":
        every = [all(set(p) & set(t.tolist()) for p in s.shape_patches()) for s, t in zip(scenes, top)]
        return float(np.mean(found)), float(np.mean(every))
    return float(np.mean(found)), float(np.mean([f > 0 for f in found]))


def save_tower(tower, folder: Path) -> None:
    """The tower's config and weights, the weights keyed as openai's CLIP checkpoints key them (``vision_model.*``).

    transformers 5's ``save_pretrained`` writes a CLIPVisionModel's keys flat, and transformers 4.x loads such a
    file as a randomly initialised tower (the loader now refuses it); this layout every release reads.
    """
    from safetensors.torch import save_file

    tower.config.architectures = ["CLIPVisionModel"]
    tower.config.save_pretrained(folder)
    state = {(k if k.startswith("vision_model.") else f"vision_model.{k}"): v.contiguous()
             for k, v in tower.state_dict().items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def llava_config(vocab_size: int, llm_layers: int = LLM["num_hidden_layers"]) -> dict:
    """``config.json`` of a liuhaotian LLaVA-1.5 checkpoint, at the toy sizes (``llm_layers`` LLaMA layers)."""
    return {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", **LLM, "num_hidden_layers": llm_layers,
        "vocab_size": vocab_size,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "hidden_act": "silu", "tie_word_embeddings": False,
        "torch_dtype": "float16", "use_cache": True, "max_sequence_length": 2048,
        "mm_vision_tower": "vision_tower", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": TOWER["hidden_size"],
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat",
        "freeze_mm_mlp_adapter": False, "tune_mm_mlp_adapter": False, "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right", "use_mm_proj": True,
    }


def encode(tokenizer, questions: list[toy_world.Question]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, labels)``, each (B, L): the CLI's prompt, then answer + ``</s>``.

    Only the answer tokens and ``</s>`` are labels, as in LLaVA's ``preprocess_v1``.
    """
    rows, labels = [], []
    for q in questions:
        prompt = tokenizer_image_token(build_prompt(toy_world.training_prompt(q), 1, CONV_MODE, False), tokenizer)
        answer = tokenizer(q.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
    longest = max(map(len, rows))
    ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    lab = torch.tensor([l + [IGNORE_INDEX] * (longest - len(l)) for l in labels])
    return ids, mask, lab


# Stage 2's families after its first phase, in turn.
LATER_FAMILIES = ("textvqa", "pope", "sqa")


def family_at(step: int, steps: int) -> str:
    """The question family of stage 2's ``step``: short answers alone for the first quarter, then turns.

    One family per step: its prompts have one length, so a batch needs no padding and no attention mask.
    """
    if step < steps // 4:
        return "textvqa"
    return LATER_FAMILIES[step % len(LATER_FAMILIES)]


@dataclass
class TargetSubset(PruningMethod):
    """Stage 2's training views: every target patch of each image plus uniformly random others, raster order.

    Not registered: it reads the scenes (``targets``, one list of raster indices per image of the batch), which no
    inference method can.
    """

    name = "train-toy-target-subset"
    seed: int = 0
    targets: list[list[int]] = field(default_factory=list)
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)

    def select_patches(self, tower: TowerOutputs, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.rand(tower.features.shape[:2], generator=self.generator)  # (B, N) in [0, 1)
        for row, patches in enumerate(self.targets):
            scores[row, patches] += 1  # above every other patch
        return tower.features, select_topk_raster(scores, k)


def subset_size(rng: random.Random) -> int:
    """Patches in one training step's random subset: log-uniform between 29 and all 576."""
    return round(math.exp(rng.uniform(math.log(29), math.log(toy_world.PATCHES))))


def train_llm(model, tokenizer, seed: int, steps: int, batch_size: int, lr: float, log: dict,
              world: str = "v1") -> None:
    """Stage 2: projector + LLM on the question families, the tower frozen; ``log["llm"]`` gets the curves.

    The first quarter of the steps are short answers only, LLaVA's feature-alignment stage in spirit (learn to say
    what is in the picture); then the three families take turns (``family_at``), and every other step shows the LLM
    a subset of the patches (``TargetSubset``: the target's patches and uniformly random others, ``subset_size`` in
    all, raster order kept). A large pretrained LLM reads an image of any length; a 3-layer one trained on 576
    tokens only does not: given just the target's patches it names the colour half the time (measured, TextVQA
    family, 144 or 58 tokens holding every target patch: 47–55 %). The subsets know nothing of [CLS]. They always
    hold the target because subsets without it teach the LLM to guess the colour from the traces the tower's
    attention leaves in other patches (measured: uniform subsets gave random pruning 82 % at 58 tokens). In v2
    they hold every coloured shape, so a subset is at least as large as their patches.
    """
    torch.manual_seed(seed + 1)
    for layer in model.get_model().mm_projector:  # PyTorch's default init: LLaMA's 0.02 leaves the image too faint
        if isinstance(layer, torch.nn.Linear):
            layer.reset_parameters()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, 20))
    subsets = TargetSubset(seed=seed + 3)
    sizes = random.Random(seed + 4)
    losses, accs = [], []
    model.train()
    bar = tqdm(range(steps), desc="stage 2: projector + LLM", unit="step")
    for step in bar:
        family = family_at(step, steps)
        side = curriculum(step, steps, CURRICULUM_START[world])
        items = [toy_world.sample(seed, "train-llm", step * batch_size + i, family, side, world)
                 for i in range(batch_size)]
        subsets.targets = [s.target_patches() for s, _ in items]
        model.set_pruning_method(subsets)
        size = max(subset_size(sizes), max(map(len, subsets.targets))) if world != "v1" else subset_size(sizes)
        model.set_visual_token_num(size if step >= steps // 4 and step % 2 else None)
        ids, mask, labels = encode(tokenizer, [q for _, q in items])
        x = pixel_values([toy_world.render(s) for s, _ in items])
        out = model(input_ids=ids, attention_mask=None if bool(mask.all()) else mask, labels=labels, images=x)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        # The first answer token decides every family's score: its greedy accuracy on this batch.
        spliced = model.last_pruning.visual_tokens[0] - 1  # the splice shifts labels by the visual tokens
        first = (labels != IGNORE_INDEX).int().argmax(-1) + spliced  # (B,) position of the answer's first token
        pred = out.logits[torch.arange(len(first)), first - 1].argmax(-1)
        target = ids[torch.arange(len(first)), first - spliced]
        losses.append(out.loss.item())
        accs.append((pred == target).float().mean().item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{np.mean(accs[-10:]):.2f}", side=f"{side[1]}px")
    model.set_pruning_method("fastervlm")
    model.set_visual_token_num(None)
    model.eval()
    log["llm"] = {"loss": losses, "accuracy": accs}


def plot_curves(log: dict, path: Path) -> None:
    """Loss and batch accuracy of both stages, one panel each, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    titles = {"tower": "stage 1: tower, colour from [CLS]", "llm": "stage 2: projector + LLM, answers"}
    for ax, (stage, title) in zip(axes, titles.items()):
        curves = log[stage]
        ax.plot(curves["loss"], color="tab:blue", lw=1)
        ax.set(title=title, xlabel="step", ylabel="cross-entropy loss")
        twin = ax.twinx()
        acc = np.convolve(curves["accuracy"], np.ones(10) / 10, mode="valid") if len(curves["accuracy"]) >= 10 \
            else curves["accuracy"]
        twin.plot(np.arange(len(acc)) + len(curves["accuracy"]) - len(acc), acc, color="tab:orange", lw=1)
        twin.set(ylabel="batch accuracy (10-step mean)", ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_toy(out_dir: str | Path, seed: int = 0, tower_steps: int | None = None, llm_steps: int | None = None,
              batch_size: int = 32, llm_batch_size: int = 16, tower_lr: float = 2e-3, llm_lr: float = 3e-3,
              threads: int = 2, world: str = "v1", llm_layers: int | None = None) -> Path:
    """Train both stages and write the checkpoint folder; returns its path. ``None`` takes the world's default
    (``WORLD_DEFAULTS``)."""
    defaults = WORLD_DEFAULTS[world]
    tower_steps = defaults["tower_steps"] if tower_steps is None else tower_steps
    llm_steps = defaults["llm_steps"] if llm_steps is None else llm_steps
    llm_layers = defaults["llm_layers"] if llm_layers is None else llm_layers
    from llava.model.builder import load_tokenizer
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from llava.model.multimodal_encoder.clip_encoder import CLIPImageProcessor

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), time.process_time()
    vocab_size = train_tokenizer(out_dir, toy_world.tokenizer_corpus(world), VOCAB_SIZE)
    tokenizer = load_tokenizer(out_dir)

    log: dict = {}
    tower = train_tower(seed, tower_steps, batch_size, tower_lr, log, world)
    side = TOWER["image_size"]
    save_tower(tower, out_dir / "vision_tower")
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(
        out_dir / "vision_tower")
    stage1 = time.perf_counter() - wall

    config = llava_config(vocab_size, llm_layers)
    llava = LlavaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    llava._name_or_path = str(out_dir)  # mm_vision_tower is relative to the checkpoint folder
    torch.manual_seed(seed + 2)
    model = LlavaLlamaForCausalLM(llava)
    model.get_vision_tower().load_model()  # the tower just saved, frozen
    recall, hit = cls_recall(model.get_vision_tower(), seed, world=world)
    train_llm(model, tokenizer, seed, llm_steps, llm_batch_size, llm_lr, log, world)

    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if not k.startswith("model.vision_tower.")}  # LLaVA-1.5 checkpoints hold no tower weights
    _save_sharded(state, out_dir, "safetensors")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    log["summary"] = {
        **({"world": world} if world != "v1" else {}), "seed": seed, "threads": threads, "batch_size": batch_size, "llm_batch_size": llm_batch_size, "tower_steps": tower_steps, "llm_steps": llm_steps, **({"llm_layers": llm_layers} if llm_layers != LLM["num_hidden_layers"] else {}),
        "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
        "tower_wall_s": round(stage1, 1), "final_tower_accuracy": float(np.mean(log["tower"]["accuracy"][-10:])),
        "target_recall_top58": recall, "target_hit_top58": hit,
        "final_llm_accuracy": float(np.mean(log["llm"]["accuracy"][-10:])),
    }
    plot_curves(log, out_dir / "training.png")
    (out_dir / "training.json").write_text(json.dumps(log))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="checkpoint folder to write (e.g. checkpoints/llava-v1.5-toy)")
    parser.add_argument("--world", choices=toy_world.WORLDS, default="v1",
                        help="v1: one coloured target (llava/toy/llava-v1.5-toy); v2: 3–4 coloured shapes, the colour most have, "
                             "questions needing all of them (llava/toy/llava-v1.5-toy-v2); v3: 4–7 shapes of three colours, "
                             "the colour covering the most area (llava/toy/llava-v1.5-toy-v3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the training scenes (default 0)")
    parser.add_argument("--tower-steps", type=int, help="stage 1 optimiser steps (default: v1 200, v2 300, v3 400)")
    parser.add_argument("--llm-steps", type=int, help="stage 2 optimiser steps (default: v1 600, v2 1000, v3 2000)")
    parser.add_argument("--llm-layers", type=int, help="LLaMA layers of the toy LLM (default: v1 3, v2 and v3 6)")
    parser.add_argument("--batch-size", type=int, default=32, help="stage 1 images per step (default 32)")
    parser.add_argument("--llm-batch-size", type=int, default=16, help="stage 2 questions per step (default 16)")
    parser.add_argument("--tower-lr", type=float, default=2e-3, help="stage 1 peak AdamW learning rate (default 2e-3)")
    parser.add_argument("--llm-lr", type=float, default=3e-3, help="stage 2 peak AdamW learning rate (default 3e-3)")
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads (default 2); the weights are reproducible for a given seed and thread count")
    args = parser.parse_args(argv)
    path = train_toy(args.out, args.seed, args.tower_steps, args.llm_steps, args.batch_size, args.llm_batch_size,
                     args.tower_lr, args.llm_lr, args.threads, args.world, args.llm_layers)
    summary = json.loads((path / "training.json").read_text())["summary"]
    print(f"toy LLaVA written to {path} in {summary['wall_s']:.0f} s ({summary['cpu_s']:.0f} s CPU); "
          f"[CLS] top-58 holds {100 * summary['target_recall_top58']:.0f} % of the target's patches (random: 10 %); "
          f"loss curves: {path / 'training.png'}")


if __name__ == "__main__":
    cli(main)
