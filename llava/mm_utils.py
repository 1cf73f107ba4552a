"""Image and prompt preprocessing shared by every entry point (LLaVA's ``mm_utils``)."""
from __future__ import annotations

import ast
import math
import os
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria

from llava.constants import IMAGE_TOKEN_INDEX


def load_image(image_file: str | os.PathLike) -> Image.Image:
    """Open an image as RGB; a missing or unreadable file raises an error that names it."""
    try:
        with Image.open(image_file) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {image_file}") from None
    except Image.DecompressionBombError as e:  # PIL's guard against images of > 2 × MAX_IMAGE_PIXELS pixels
        raise ValueError(f"image too large to open safely: {image_file}: {e}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {image_file}: {e}") from None


def check_image_size(image: Image.Image, model_cfg, name: str | None) -> None:
    """Refuse an image whose preprocessing would build a canvas above PIL's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``): LLaVA-1.5's ``pad`` makes a 60000×2 strip a 60000×60000 square (3.6 G pixels)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    pixels = max(width, height) ** 2 if getattr(model_cfg, "image_aspect_ratio", None) == "pad" else width * height
    if limit is not None and pixels > limit:
        raise ValueError(f"image too large to preprocess safely: {name}: {width}×{height}"
                         f"{' padded to a square' if pixels != width * height else ''} is {pixels} pixels, above PIL's "
                         f"limit Image.MAX_IMAGE_PIXELS = {limit}")


def expand2square(pil_img: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad the short side symmetrically (LLaVA-1.5's ``pad`` aspect ratio mode)."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def select_best_resolution(original_size: tuple[int, int], possible_resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA-NeXT's grid choice: most effective pixels, then least wasted area (``(width, height)`` pairs).

    The ``vanilla`` protocol's rule; ``released`` uses FasterVLM's replacement, ``select_fill_ratio_resolution``.
    """
    original_width, original_height = original_size
    best_fit, best_effective, best_wasted = None, -1, float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        down_w, down_h = int(original_width * scale), int(original_height * scale)
        effective = min(down_w * down_h, original_width * original_height)
        wasted = width * height - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best_fit, best_effective, best_wasted = (width, height), effective, wasted
    return best_fit


def select_fill_ratio_resolution(original_size: tuple[int, int],
                                 possible_resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """[FasterVLM] The released FasterVLM code's grid choice: largest fill ratio (scaled / canvas area), first on ties.

    Upstream FasterVLM replaced ``select_best_resolution`` by this rule without a marker. It matches neither
    vanilla LLaVA-NeXT (a 1280×720 image gets 672×336, 3 crops, instead of 2×2) nor the paper's fixed
    672×672 grid, so crop and token counts vary per image (3–5 crops with LLaVA-1.6's pinpoints); only the
    ``released`` protocol uses it, to reproduce that code. An image so thin that every canvas scales one of
    its sides to 0 px has no fill ratio: upstream then failed with a TypeError, here it is a ValueError.
    """
    original_width, original_height = original_size
    best_fit, best_ratio = None, 0.0
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        ratio = int(original_width * scale) * int(original_height * scale) / (width * height)
        if ratio > best_ratio:
            best_fit, best_ratio = (width, height), ratio
    if best_fit is None:
        raise ValueError(f"a {original_width}×{original_height} image fits none of the grids "
                         f"{list(possible_resolutions)}: every one scales a side of it to 0 px")
    return best_fit


def resize_and_pad_image(image: Image.Image, target_resolution: tuple[int, int]) -> Image.Image:
    """Resize keeping the aspect ratio, then centre on a black canvas of ``target_resolution``."""
    original_width, original_height = image.size
    target_width, target_height = target_resolution
    scale_w, scale_h = target_width / original_width, target_height / original_height
    if scale_w < scale_h:
        new_width, new_height = target_width, min(math.ceil(original_height * scale_w), target_height)
    else:
        new_height, new_width = target_height, min(math.ceil(original_width * scale_h), target_width)
    resized = image.resize((new_width, new_height))
    canvas = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    canvas.paste(resized, ((target_width - new_width) // 2, (target_height - new_height) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Row-major crops of ``patch_size``×``patch_size``."""
    width, height = image.size
    return [image.crop((j, i, j + patch_size, i + patch_size))
            for i in range(0, height, patch_size) for j in range(0, width, patch_size)]


def parse_grid_pinpoints(grid_pinpoints) -> list[tuple[int, int]]:
    """``image_grid_pinpoints`` as ``(width, height)`` tuples; configs store a list or its string form."""
    if isinstance(grid_pinpoints, str):
        grid_pinpoints = ast.literal_eval(grid_pinpoints)
    if not grid_pinpoints:
        raise ValueError("image_aspect_ratio 'anyres' needs image_grid_pinpoints in the model config")
    return [tuple(p) for p in grid_pinpoints]


# Preprocessing modes of ``image_aspect_ratio`` (None and "square"/"resize" are a plain resize + centre crop).
IMAGE_ASPECT_RATIOS = (None, "pad", "anyres", "square", "resize")
# [FasterVLM] How LLaVA-NeXT (anyres) images are cut and merged:
#   "paper":    the protocol FasterVLM was evaluated with (Theia-4869/FasterVLM#8): a fixed 2×2 grid of crops
#               (672×672 for a 336-px tower) and the 'spatial' merge, no unpadding, no image_newline;
#               5 crops × visual_token_num tokens per image.
#   "vanilla":  LLaVA-NeXT as released: the grid from select_best_resolution and the config's mm_patch_merge_type.
#   "released": the released FasterVLM code: the grid from its fill-ratio rule (select_fill_ratio_resolution,
#               3–5 crops) and the 'spatial' merge, no unpadding, no image_newline;
#               (1 + rows·cols) crops × visual_token_num tokens per image.
ANYRES_PROTOCOLS = ("paper", "vanilla", "released")
# One line per protocol, for --help.
ANYRES_PROTOCOL_HELP = {
    "paper": "fixed 672x672 grid (5 crops), spatial merge without newline tokens; the default when pruning",
    "vanilla": "LLaVA-NeXT's own grid choice and spatial_unpad merge; the default without pruning",
    "released": "the released FasterVLM code: its fill-ratio grid choice (3-5 crops, 3 for 1280x720), "
                "spatial merge without newline tokens",
}


def check_image_aspect_ratio(model_cfg) -> str | None:
    """The config's ``image_aspect_ratio``; an unsupported value is an error rather than a silent fallback."""
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"unsupported image_aspect_ratio {aspect!r} (expected 'pad', 'anyres', 'square' or None)")
    return aspect


def get_anyres_protocol(model_cfg) -> str:
    """[FasterVLM] The config's ``anyres_protocol``; unset means vanilla (``load_pretrained_model`` always sets it)."""
    protocol = getattr(model_cfg, "anyres_protocol", None) or "vanilla"
    if protocol not in ANYRES_PROTOCOLS:
        raise ValueError(f"unsupported anyres_protocol {protocol!r} (expected one of {ANYRES_PROTOCOLS})")
    return protocol


def anyres_resolution(model_cfg, image_size: tuple[int, int] | None, crop_size: int) -> tuple[int, int]:
    """[FasterVLM] The ``(width, height)`` canvas an image of ``image_size`` is cut into ``crop_size`` crops on.

    ``paper``: always the 2×2 grid (672×672 for LLaVA-1.6), so every image gets 5 crops whatever its shape
    (``image_size`` may then be None). ``vanilla``: LLaVA-NeXT's ``select_best_resolution`` over the
    checkpoint's ``image_grid_pinpoints``; ``released``: FasterVLM's ``select_fill_ratio_resolution`` over them.
    """
    protocol = get_anyres_protocol(model_cfg)
    if protocol == "paper":
        return 2 * crop_size, 2 * crop_size
    pinpoints = parse_grid_pinpoints(getattr(model_cfg, "image_grid_pinpoints", None))
    if any(w <= 0 or h <= 0 or w % crop_size or h % crop_size for w, h in pinpoints):
        raise ValueError(f"image_grid_pinpoints {pinpoints} are not whole grids of the tower's {crop_size}-px crops")
    select = select_fill_ratio_resolution if protocol == "released" else select_best_resolution
    return select(image_size, pinpoints)


def process_anyres_image(image: Image.Image, processor, resolution: tuple[int, int]) -> torch.Tensor:
    """LLaVA-NeXT crops: the whole image resized, then the grid crops in raster order. ``(1 + rows·cols, 3, H, W)``.

    [FasterVLM] Takes the canvas (``anyres_resolution``) rather than the pinpoints, so the protocol picks the grid.
    """
    padded = resize_and_pad_image(image, resolution)
    crop = processor.crop_size["height"]
    base = image.resize((processor.size["shortest_edge"],) * 2)
    crops = [base] + divide_to_patches(padded, crop)
    return torch.stack([processor.preprocess(c, return_tensors="pt")["pixel_values"][0] for c in crops])


def process_images(images: Sequence[Image.Image], image_processor, model_cfg) -> torch.Tensor | list[torch.Tensor]:
    """Preprocess per ``model_cfg.image_aspect_ratio``: ``pad`` (LLaVA-1.5), ``anyres`` (NeXT) or plain resize+crop.

    Returns a ``(B, 3, H, W)`` tensor, or for ``anyres`` a ``(B, crops, 3, H, W)`` tensor when every
    image has the same number of crops and a list otherwise. [FasterVLM] ``model_cfg.anyres_protocol`` picks
    the anyres grid (``anyres_resolution``): under ``paper`` every image is cut on the fixed 2×2 grid (5 crops).
    """
    aspect = check_image_aspect_ratio(model_cfg)
    if aspect == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        out = [image_processor.preprocess(expand2square(img, background), return_tensors="pt")["pixel_values"][0]
               for img in images]
    elif aspect == "anyres":
        crop = image_processor.crop_size["height"]
        out = [process_anyres_image(img, image_processor, anyres_resolution(model_cfg, img.size, crop))
               for img in images]
    else:
        return image_processor.preprocess(list(images), return_tensors="pt")["pixel_values"]
    if all(x.shape == out[0].shape for x in out):
        return torch.stack(out)
    return out


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX,
                          return_tensors: str | None = None):
    """Token ids of ``prompt`` with each ``<image>`` replaced by ``image_token_index``.

    Each text chunk is tokenised on its own, exactly as LLaVA was trained: BOS once at the start,
    then the chunks' ids (each with its sentencepiece dummy prefix) joined by the image placeholder.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    bos = tokenizer.bos_token_id
    input_ids: list[int] = []
    for i, ids in enumerate(chunks):
        if ids and ids[0] == bos and bos is not None:
            if i == 0:
                input_ids.append(bos)
            ids = ids[1:]
        if i > 0:
            input_ids.append(image_token_index)
        input_ids.extend(ids)
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    if return_tensors is not None:
        raise ValueError(f"unsupported tensor type: {return_tensors}")
    return input_ids


def get_model_name_from_path(model_path: str) -> str:
    """``…/llava-v1.5-7b`` → ``llava-v1.5-7b``; ``…/llava-v1.5-7b/checkpoint-100`` → ``llava-v1.5-7b_checkpoint-100``."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop when every sequence in the batch ends with one of ``keywords`` (e.g. a conversation separator)."""

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: torch.Tensor):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.start_len = input_ids.shape[1]
        self.keyword_ids = []
        for keyword in self.keywords:
            ids = tokenizer(keyword).input_ids
            if len(ids) > 1 and ids[0] == tokenizer.bos_token_id:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids))

    def _stopped(self, output_ids: torch.Tensor) -> bool:
        for ids in self.keyword_ids:
            if output_ids.shape[0] >= len(ids) and torch.equal(output_ids[-len(ids):].cpu(), ids):
                return True
        offset = min(output_ids.shape[0] - self.start_len, 3)
        text = self.tokenizer.decode(output_ids[-offset:] if offset > 0 else output_ids[:0], skip_special_tokens=True)
        return any(k in text for k in self.keywords)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        done = [self._stopped(seq) for seq in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
