"""Tokenisation and image preprocessing against independent references (sentencepiece, numpy)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import expand2square, load_image, process_images, tokenizer_image_token

PROMPTS = [
    "<image>\nWhat is the color of the bus?",
    "Describe <image> please",  # a chunk that starts with a space: transformers 5's default drops a piece here
    "<image>\nReference OCR token: DAKOTA, DIGITAL\nAnswer the question using a single word or phrase.",
    "Two images: <image> and <image>  (note the double space)",
    "No image at all, just text.",
    "<image>\n请直接回答选项字母。",
    "Context: A. cat\nB. tree <image>",
]


@pytest.mark.parametrize("template", ["vicuna_v1", "llava_v0", "llava_llama_2", "mistral_instruct", "plain"])
@pytest.mark.parametrize("question", PROMPTS)
def test_tokenizer_image_token_equals_sentencepiece_per_chunk(tiny_ckpt, tiny_model, template, question):
    tokenizer = tiny_model[0]
    sp = spm.SentencePieceProcessor(model_file=str(tiny_ckpt / "tokenizer.model"))
    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()
    if "</s>" in prompt or "<s>" in prompt:
        pytest.skip("special-token strings inside text are not sentencepiece text")
    expected = [sp.bos_id()]
    for i, chunk in enumerate(prompt.split("<image>")):
        if i:
            expected.append(IMAGE_TOKEN_INDEX)
        expected += sp.encode(chunk)
    assert tokenizer_image_token(prompt, tokenizer) == expected
    assert tokenizer_image_token(prompt, tokenizer, return_tensors="pt").tolist() == expected


def test_decode_round_trip(tiny_model):
    tokenizer = tiny_model[0]
    for text in [" leading space", "Yes", "two  spaces\nand a newline", "图片"]:
        ids = tokenizer(text).input_ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def _reference_clip_preprocess(img: Image.Image, size: int, mean, std) -> np.ndarray:
    """CLIP's preprocessing written out: bicubic resize of the short side, centre crop, rescale, normalise."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, int(round(w * scale))) if w >= h else size, size if w >= h else max(size, int(round(h * scale))))
    img = img.resize(new, Image.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return ((arr - np.array(mean)) / np.array(std)).transpose(2, 0, 1)


@pytest.mark.parametrize("size", [(90, 60), (40, 100), (84, 84)])
def test_pad_preprocessing_matches_reference(tiny_model, size):
    _, model, processor, _ = tiny_model
    rng = np.random.RandomState(sum(size))
    img = Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8"))
    out = process_images([img], processor, model.config)
    mean = processor.image_mean
    background = tuple(int(m * 255) for m in mean)
    side = max(size)
    canvas = np.zeros((side, side, 3), dtype=np.uint8) + np.array(background, dtype=np.uint8)
    x0, y0 = (side - size[0]) // 2, (side - size[1]) // 2
    canvas[y0:y0 + size[1], x0:x0 + size[0]] = np.asarray(img)
    assert np.array_equal(np.asarray(expand2square(img, background)), canvas)
    ref = _reference_clip_preprocess(Image.fromarray(canvas), processor.crop_size["height"], mean, processor.image_std)
    assert out.shape == (1, 3, 336, 336)
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("protocol, size, canvas", [
    ("paper", (1280, 720), (672, 672)), ("vanilla", (1280, 720), (672, 672)), ("released", (1280, 720), (672, 336)),
    ("released", (720, 1280), (336, 672)), ("released", (2000, 300), (1008, 336)),
])
def test_anyres_crops_match_reference(tiny_model, protocol, size, canvas):
    """Each protocol's canvas for LLaVA-1.6's pinpoints, and the crops written out: the whole image resized to one
    crop, then the image fitted to the canvas (the other side rounded up), centred on black, cut row by row."""
    _, _, processor, _ = tiny_model
    cfg = type("Cfg", (), {"image_aspect_ratio": "anyres", "anyres_protocol": protocol,
                           "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]})()
    img = Image.fromarray((np.random.RandomState(1).rand(size[1], size[0], 3) * 255).astype("uint8"))
    out = process_images([img], processor, cfg)
    (w, h), (cw, ch), crop = size, canvas, processor.crop_size["height"]
    fitted = (cw, min(math.ceil(h * (cw / w)), ch)) if cw / w < ch / h else (min(math.ceil(w * (ch / h)), cw), ch)
    board = np.zeros((ch, cw, 3), dtype=np.uint8)
    x0, y0 = (cw - fitted[0]) // 2, (ch - fitted[1]) // 2
    board[y0:y0 + fitted[1], x0:x0 + fitted[0]] = np.asarray(img.resize(fitted))
    crops = [img.resize((crop, crop))] + [Image.fromarray(board[y:y + crop, x:x + crop])
                                          for y in range(0, ch, crop) for x in range(0, cw, crop)]
    ref = np.stack([_reference_clip_preprocess(c, crop, processor.image_mean, processor.image_std) for c in crops])
    assert out.shape == (1, 1 + (cw // crop) * (ch // crop), 3, crop, crop)
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-5)


def test_unsupported_aspect_ratio_is_an_error(tiny_model):
    _, model, processor, _ = tiny_model
    cfg = type("Cfg", (), {"image_aspect_ratio": "stretch"})()
    with pytest.raises(ValueError, match="image_aspect_ratio 'stretch'"):
        process_images([Image.new("RGB", (10, 10))], processor, cfg)


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        load_image(bad)
    Image.new("L", (5, 5)).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png").mode == "RGB"
