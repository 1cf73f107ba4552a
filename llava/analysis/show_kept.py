"""Draw which patches each pruning method keeps: one panel per method and budget, over the image as the model sees it.

    python -m llava.analysis.show_kept --image IMG --methods fastervlm vispruner visionzip --tokens 58 29

The image is shown after the model's own preprocessing (LLaVA-1.5: padded to a square and resized to 336 px), the
first crop only for LLaVA-NeXT (its base image); pruned patches are dimmed, kept ones outlined. In-LLM methods run a
prefill with ``--question`` to choose. Default model: the shipped toy checkpoint (``llava/toy/llava-v1.5-toy``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from llava.eval.runner import build_prompt  # noqa: E402
from llava.mm_utils import load_image, process_images, tokenizer_image_token  # noqa: E402
from llava.pruning import InLLMPruningMethod, available_methods  # noqa: E402

TOY = Path(__file__).resolve().parents[1] / "toy" / "llava-v1.5-toy"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.analysis.show_kept", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--methods", nargs="+", default=["fastervlm"], choices=available_methods(), metavar="METHOD",
                   help=f"pruning methods, one row each ({', '.join(available_methods())})")
    p.add_argument("--tokens", nargs="+", type=int, default=[58], help="budgets per crop, one column each")
    p.add_argument("--param", nargs="+", default=[], metavar="METHOD.NAME=VALUE",
                   help="a method parameter (its dataclass field), e.g. pdrop.layers=1 pdrop.ratio=0.5 "
                        "sparsevlm.keeps=100,40")
    p.add_argument("--model-path", default=str(TOY), help="LLaVA checkpoint (default: the shipped toy model)")
    p.add_argument("--question", default="What is in the image?", help="prompt for in-LLM methods")
    p.add_argument("--conv-mode", default="vicuna_v1", help="conversation template (default vicuna_v1)")
    p.add_argument("--out", default="kept.png", help="PNG to write (default kept.png)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available, else cpu)")
    return p


def shown_image(pixels: torch.Tensor, processor) -> np.ndarray:
    """(3, H, W) normalised pixels → (H, W, 3) in [0, 1], undoing the processor's normalisation."""
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    return (pixels.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


@torch.inference_mode()
def method_params(items: list[str]) -> dict[str, dict]:
    """``METHOD.NAME=VALUE`` items → {method: {name: value}}, each value typed as the field's default."""
    import dataclasses

    from llava.pruning import available_methods, get_method

    params: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        fields = {f.name: f for f in dataclasses.fields(get_method(method))} if method in available_methods() else {}
        if not (sep and dot and name in fields):
            raise SystemExit(f"--param {item!r}: expected METHOD.NAME=VALUE with a parameter of a registered method")
        params.setdefault(method, {})[name] = type(fields[name].default)(value)
    return params


def kept_patches(model, tokenizer, pixels, image_size, method: str, tokens: int, prompt_ids,
                 params: dict | None = None) -> torch.Tensor:
    """Raster indices the method keeps in the first crop at budget ``tokens``."""
    model.set_pruning_method(method, **(params or {}))
    model.set_visual_token_num(tokens)
    if isinstance(model.get_pruning_method(), InLLMPruningMethod):
        model(prompt_ids, images=pixels, image_sizes=[image_size], use_cache=False, logits_to_keep=1)
        info = model.last_pruning
    else:
        _, info = model.encode_images(pixels[0] if pixels.ndim == 5 else pixels)
    return info.kept_indices[0].cpu()


def draw(image: np.ndarray, kept: dict[tuple[str, int], torch.Tensor], side: int, out: Path) -> None:
    methods = list(dict.fromkeys(m for m, _ in kept))
    budgets = list(dict.fromkeys(t for _, t in kept))
    fig, axes = plt.subplots(len(methods), len(budgets), figsize=(3.2 * len(budgets), 3.4 * len(methods)),
                             squeeze=False)
    px = image.shape[0] / side
    for (method, tokens), indices in kept.items():
        ax = axes[methods.index(method)][budgets.index(tokens)]
        mask = np.zeros(side * side, dtype=bool)
        mask[indices.numpy()] = True
        shade = np.kron(mask.reshape(side, side), np.ones((round(px), round(px))))[..., None]
        ax.imshow(image * (0.25 + 0.75 * shade[:image.shape[0], :image.shape[1]]))
        for i in indices.tolist():  # outline each kept patch
            ax.add_patch(plt.Rectangle(((i % side) * px, (i // side) * px), px, px, fill=False, lw=0.6,
                                       edgecolor="#ffd400"))
        ax.set_title(f"{method} · {len(indices)} of {side * side}", fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[tuple[str, int], list[int]]:
    args = build_parser().parse_args(argv)
    method_params(args.param)  # fail before loading the model
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(args.model_path, None,
                                                           get_model_name_from_path(args.model_path),
                                                           device=args.device)
    img = load_image(args.image)
    pixels = process_images([img], processor, model.config).to(args.device, model.dtype)
    prompt = build_prompt(args.question, 1, args.conv_mode, getattr(model.config, "mm_use_im_start_end", False))
    prompt_ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None].to(args.device)
    side = model.get_vision_tower().config.image_size // model.get_vision_tower().config.patch_size
    params = method_params(args.param)
    kept = {(m, t): kept_patches(model, tokenizer, pixels, img.size, m, t, prompt_ids, params.get(m))
            for m in args.methods for t in args.tokens}
    first = pixels[0, 0] if pixels.ndim == 5 else pixels[0]  # LLaVA-NeXT: the base crop
    draw(shown_image(first, processor), kept, side, Path(args.out))
    print(f"wrote {args.out}")
    return {key: v.tolist() for key, v in kept.items()}


if __name__ == "__main__":
    main()
