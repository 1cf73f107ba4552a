"""The toy world's data: synthetic 336-px scenes and questions in the real benchmark file layouts.

    python -m llava.tools.toy_world OUT_DIR [--world v3] [--seed 1] [--questions 510]

Every image is LLaVA-1.5's geometry (336 × 336 px, 14-px patches: 24 × 24 = 576 patches): low-contrast colour
noise as clutter, a few grey shapes as distractors, and one *target*, a small saturated shape (28–36 px, about
2–3 patches wide) whose colour and shape are what every question asks about. The answer therefore lives in a
handful of the 576 patches: a pruning method that keeps the target's patches can answer, one that drops them
can only guess.

The questions ask for the target's colour (8 colours); its shape (4 shapes) varies the target's footprint.
A tiny tower trained for minutes reads colour from [CLS] reliably, shape not. Three question families, written in the files and formats of the benchmarks whose scorers they reuse:

* ``textvqa/``: short answers ("What color is the shape?" → ``red``), LLaVA's ``llava_textvqa_val_v051_ocr.jsonl``
  + ``TextVQA_0.5.1_val.json`` (10 answers each), scored with the TextVQA/VQAv2 normalisation and soft accuracy;
* ``pope/``: yes/no ("Is the colored shape a warm color?": red, orange, yellow and pink are, so half the answers
  are no), ``llava_pope_test.jsonl`` +
  ``coco/coco_pope_random.json``, scored with POPE's rule;
* ``sqa/``: lettered choices of the target's colour (the four colours of its half of the palette),
  ``llava_test_CQM-A.json`` + ``problems.json`` +
  ``pid_splits.json``, scored with ScienceQA's rule.

**v2** (``--world v2``) asks about several separate regions: 3–4 coloured shapes of one kind and size (28–36 px),
two of one colour and one or two of other colours, among the same clutter; the three formats ask v1's questions
about the colour *most* of the shapes have. A method that keeps one shape's patches answers with its colour, right
only when that shape is of the majority: v1's single target saturates (FasterVLM keeps 97.7 % at 29 tokens), v2
needs patches of several shapes. (Two earlier v2 families, measured in pilots, stayed at chance in training: the
colour of the topmost shape, batch accuracy 0.12–0.24 after 220 of 600 steps, and the number of shapes, 2–5,
0.16–0.29 after 200; v1's family is at 0.99 after 100. The majority colour is v1's skill on an average over
several regions.)

**v3** (``--world v3``, the demo's default) asks about area: 4–7 coloured shapes of random kind and side (40–80 px,
3–6 patches wide), each of one of three colours, apart, and no grey distractors; the three formats ask which colour
covers the most of the picture, and scenes are redrawn until that colour's pixels are 1.15–1.6 times the next
colour's. The answer is spread over about 150 patches, so a budget of 58 or fewer must estimate the areas from a
part of them: v2's shapes fit in 58 tokens, and there several methods stayed within 2 points of the unpruned model.

Everything is a function of ``--seed`` (Python's ``random`` and NumPy's legacy ``RandomState``, both stable across
versions); the training set (``llava.tools.train_toy``) draws its scenes from another stream of the same seed.
Within a family every prompt has the same number of tokens, so batched inference answers in question order.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from llava.eval.utils import ArgumentParser, cli

IMAGE_SIZE, PATCH = 336, 14
GRID = IMAGE_SIZE // PATCH  # 24 patches per side
PATCHES = GRID * GRID  # 576
# Saturated and bright, far from the clutter (channels 30–110) and the grey distractors.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35), "green": (40, 190, 60), "blue": (40, 80, 235), "yellow": (235, 215, 40),
    "purple": (150, 60, 220), "orange": (250, 145, 25), "cyan": (40, 215, 225), "pink": (245, 120, 190)}
SHAPES = ("square", "circle", "triangle", "cross")
TARGET_SIDE = (28, 36)  # px: 2–3 patches wide
DISTRACTORS = (4, 7)  # grey shapes per image
FAMILIES = ("textvqa", "pope", "sqa")
WORLDS = ("v1", "v2", "v3")
MINORITY = (1, 2)  # v2: shapes of other colours, one each, beside the two of the majority colour

SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
COLOR_QUESTION = "What color is the shape?"
YESNO_QUESTION = "Is the colored shape a warm color?"
WARM = ("red", "yellow", "orange", "pink")
CHOICE_QUESTION = "What color is the colored shape?"
CHOICE_CONTEXT = "Context: A picture of shapes."
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCD"
MAJORITY_QUESTION = "What color are most of the colored shapes?"
MAJORITY_YESNO_QUESTION = "Are most of the colored shapes a warm color?"
AREA_QUESTION = "Which color covers the most of the picture?"
AREA_YESNO_QUESTION = "Is the color that covers the most of the picture a warm color?"
AREA_SHAPES = (4, 7)  # v3: coloured shapes per picture
AREA_SIDE = (40, 80)  # px: 3–6 patches wide
AREA_COLORS = 3  # distinct colours among them
AREA_MARGIN = (1.15, 1.6)  # the largest colour area over the second largest


@dataclass(frozen=True)
class Scene:
    """One picture: the target's colour, shape and box (x0, y0, x1, y1 in px, exclusive), plus the pixel seed."""

    color: str
    shape: str
    box: tuple[int, int, int, int]
    distractors: tuple[tuple[str, tuple[int, int, int, int], int], ...]  # (shape, box, grey level)
    noise_seed: int

    def target_patches(self) -> list[int]:
        """Raster indices of the patches the target's box touches (what a pruning method has to keep)."""
        return box_patches(self.box)

    def colored(self) -> tuple[tuple[str, str, tuple[int, int, int, int]], ...]:
        """The coloured shapes as (colour, shape, box), what ``render`` draws over the distractors."""
        return ((self.color, self.shape, self.box),)


def box_patches(box: tuple[int, int, int, int]) -> list[int]:
    """Raster indices of the patches a box (x0, y0, x1, y1 in px, exclusive) touches."""
    x0, y0, x1, y1 = box
    cols = range(x0 // PATCH, (x1 - 1) // PATCH + 1)
    return [r * GRID + c for r in range(y0 // PATCH, (y1 - 1) // PATCH + 1) for c in cols]


class _ManyShapes:
    """What v2 and v3 scenes share: several coloured shapes (``shapes``: (colour, shape, box) each)."""

    shapes: tuple[tuple[str, str, tuple[int, int, int, int]], ...]

    def shape_patches(self) -> list[list[int]]:
        """Per coloured shape, the patches its box touches."""
        return [box_patches(box) for _, _, box in self.shapes]

    def target_patches(self) -> list[int]:
        """Every patch a coloured shape touches, raster order: all a method must keep to answer every question."""
        return sorted({i for patches in self.shape_patches() for i in patches})

    def colored(self) -> tuple[tuple[str, str, tuple[int, int, int, int]], ...]:
        return self.shapes


@dataclass(frozen=True)
class Scene2(_ManyShapes):
    """A v2 picture: 3–4 coloured shapes (colour, shape, box), the majority colour's two first, distractors and the
    pixel seed."""

    shapes: tuple[tuple[str, str, tuple[int, int, int, int]], ...]
    distractors: tuple[tuple[str, tuple[int, int, int, int], int], ...]
    noise_seed: int

    @property
    def color(self) -> str:
        """The colour most of the coloured shapes have (two of them), what every v2 question asks about."""
        return self.shapes[0][0]


def stream(seed: int, split: str, index: int) -> random.Random:
    """The independent random stream of item ``index`` of ``split`` (e.g. ``"train"``, ``"eval"``)."""
    digest = hashlib.sha256(f"toy-world/{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _near(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 4) -> bool:
    """Whether two boxes overlap or come within ``margin`` px."""
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _place_apart(rng: random.Random, count: int, side: Callable[[], int], stuck: int,
                 restart: bool) -> list[tuple[int, int, int, int]]:
    """``count`` square boxes of ``side()`` px anywhere in the picture, none near another, by rejection sampling.
    After ``stuck`` rejections (counted over the whole call) the boxes so far leave no room: start over
    (``restart``), or return the fewer boxes placed."""
    boxes: list[tuple[int, int, int, int]] = []
    misses = 0
    while len(boxes) < count:
        s = side()
        x0, y0 = rng.randrange(IMAGE_SIZE - s), rng.randrange(IMAGE_SIZE - s)
        box = (x0, y0, x0 + s, y0 + s)
        if any(_near(box, b) for b in boxes):
            misses += 1
            if misses == stuck:
                if not restart:
                    break
                boxes, misses = [], 0
            continue
        boxes.append(box)
    return boxes


def make_scene2(rng: random.Random, side: tuple[int, int] = TARGET_SIDE) -> Scene2:
    """A random v2 scene: two shapes of the majority colour and one or two of other colours, one shape kind and side
    for all (equal areas: "most" by count is most by area), apart, then grey distractors anywhere not over them.
    Placement is rejection sampling, restarted when stuck."""
    major, *others = rng.sample(list(COLORS), 1 + rng.randint(*MINORITY))
    colors = [major, major, *others]
    kind, s = rng.choice(SHAPES), rng.randint(*side)
    boxes = _place_apart(rng, len(colors), lambda: s, stuck=100, restart=True)
    shapes = [(c, kind, b) for c, b in zip(colors, boxes)]
    distractors, n = [], rng.randint(*DISTRACTORS)
    while len(distractors) < n:
        d = rng.randint(14, 42)
        dx, dy = rng.randrange(IMAGE_SIZE - d), rng.randrange(IMAGE_SIZE - d)
        if not any(_near((dx, dy, dx + d, dy + d), b) for b in boxes):
            distractors.append((rng.choice(SHAPES), (dx, dy, dx + d, dy + d), rng.randint(120, 200)))
    return Scene2(tuple(shapes), tuple(distractors), rng.randrange(2**31))


@dataclass(frozen=True)
class Scene3(_ManyShapes):
    """A v3 picture: 4–7 coloured shapes of 3 colours and many sizes (colour, shape, box); ``color`` is the colour
    whose shapes cover the most pixels, by 1.15–1.6 times the next one."""

    shapes: tuple[tuple[str, str, tuple[int, int, int, int]], ...]
    color: str
    noise_seed: int
    distractors: tuple = ()


def color_areas(shapes) -> dict[str, int]:
    """Pixels each colour covers, as ``render`` draws the shapes."""
    areas: dict[str, int] = {}
    for color, kind, box in shapes:
        mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE))
        _draw_shape(ImageDraw.Draw(mask), kind, box, 1)
        areas[color] = areas.get(color, 0) + int(np.asarray(mask).sum())
    return areas


def make_scene3(rng: random.Random) -> Scene3:
    """A random v3 scene: shapes of random kind, side and colour (of 3), apart; redrawn until the largest colour area
    is 1.15–1.6 times the second (so that the answer needs most of the coloured patches, and 576 of them decide it)."""
    while True:
        palette = rng.sample(list(COLORS), AREA_COLORS)
        boxes = _place_apart(rng, rng.randint(*AREA_SHAPES), lambda: rng.randint(*AREA_SIDE), stuck=200, restart=False)
        shapes = tuple((rng.choice(palette), rng.choice(SHAPES), b) for b in boxes)
        areas = sorted(color_areas(shapes).items(), key=lambda kv: -kv[1])
        if len(areas) >= 2 and AREA_MARGIN[0] <= areas[0][1] / areas[1][1] <= AREA_MARGIN[1]:
            return Scene3(shapes, areas[0][0], rng.randrange(2**31))


def make_scene(rng: random.Random, target_side: tuple[int, int] = TARGET_SIDE) -> Scene:
    """A random scene: the target (side drawn from ``target_side`` px) anywhere, distractors anywhere not over it."""
    side = rng.randint(*target_side)
    x0, y0 = rng.randrange(IMAGE_SIZE - side), rng.randrange(IMAGE_SIZE - side)
    box = (x0, y0, x0 + side, y0 + side)
    distractors, count = [], rng.randint(*DISTRACTORS)
    while len(distractors) < count:
        d = rng.randint(14, 42)
        dx, dy = rng.randrange(IMAGE_SIZE - d), rng.randrange(IMAGE_SIZE - d)
        if dx < box[2] + 4 and box[0] < dx + d + 4 and dy < box[3] + 4 and box[1] < dy + d + 4:
            continue  # keep the target whole
        distractors.append((rng.choice(SHAPES), (dx, dy, dx + d, dy + d), rng.randint(120, 200)))
    return Scene(rng.choice(list(COLORS)), rng.choice(SHAPES), box, tuple(distractors), rng.randrange(2**31))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    if shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # a cross: two bars a third of the side wide
        t = (x1 - x0) / 3
        draw.rectangle((x0, y0 + t, x1, y1 - t), fill=fill)
        draw.rectangle((x0 + t, y0, x1 - t, y1), fill=fill)


def render(scene: Scene | Scene2 | Scene3) -> Image.Image:
    """The scene as a 336 × 336 RGB picture."""
    noise = np.random.RandomState(scene.noise_seed).randint(30, 111, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    for shape, box, grey in scene.distractors:
        _draw_shape(draw, shape, box, (grey, grey, grey))
    for color, shape, box in scene.colored():
        _draw_shape(draw, shape, box, COLORS[color])
    return img


@dataclass(frozen=True)
class Question:
    """One question about a scene: the user text (without the image) and the expected answer.

    ``choices``: the options of a lettered question (``answer`` is then the letter).
    """

    family: str
    text: str
    answer: str
    choices: tuple[str, ...] = ()


def make_question(family: str, scene: Scene) -> Question:
    """A question of ``family`` about ``scene``'s target colour: short answer, yes/no or one of 4 choices.

    The yes/no question is one fixed question, not POPE's "Is there a <colour> shape?" about varying colours: there
    the answer hangs on the asked and the seen colour together (an XOR-like target), and a model this small trained
    for minutes stays at chance on it (measured: 50 % after 450 steps, with the other families at 100 %).
    """
    return color_question(family, scene.color, COLOR_QUESTION, YESNO_QUESTION, CHOICE_QUESTION)


def make_question2(family: str, scene: Scene2) -> Question:
    """A v2 question: v1's three questions, about the colour most of the coloured shapes have."""
    return color_question(family, scene.color, MAJORITY_QUESTION, MAJORITY_YESNO_QUESTION, MAJORITY_QUESTION)


def color_question(family: str, color: str, short: str, yesno: str, choice: str) -> Question:
    """The ``family`` question whose answer is ``color``: ``short`` (the colour), ``yesno`` (is it warm?) or ``choice``
    (one of 4 lettered colours)."""
    if family == "textvqa":
        return Question(family, short + SHORT_SUFFIX, color)
    if family == "pope":
        return Question(family, yesno + SHORT_SUFFIX, "Yes" if color in WARM else "No")
    if family == "sqa":
        choices = choice_set(color)
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        text = f"{CHOICE_CONTEXT}\n{choice}\n{options}"
        return Question(family, text, LETTERS[choices.index(color)], tuple(choices))
    raise ValueError(f"unknown question family {family!r} (expected one of {FAMILIES})")


def choice_set(color: str) -> list[str]:
    """The four options of a lettered question about ``color``: its half of the palette, in palette order.

    Fixed sets make the letter name the colour directly; matching the colour against shuffled options is a
    second skill that a model this small does not pick up in minutes of training.
    """
    names = list(COLORS)
    half = names.index(color) // len(LETTERS)
    return names[half * len(LETTERS):(half + 1) * len(LETTERS)]


def sample(seed: int, split: str, index: int, family: str | None = None,
           target_side: tuple[int, int] = TARGET_SIDE, world: str = "v1") -> tuple[Scene | Scene2 | Scene3, Question]:
    """Item ``index`` of ``split`` in ``world``: one question (of ``family``, or one drawn at random) and its scene.

    A v2 or v3 split's stream is named apart from v1's (``v2/``, ``v3/`` prefix), so the worlds share no scenes;
    v3 has no curriculum (``target_side`` is not used).
    """
    if world == "v3":
        rng = stream(seed, f"v3/{split}", index)
        family = family or rng.choice(FAMILIES)
        scene = make_scene3(rng)
        return scene, color_question(family, scene.color, AREA_QUESTION, AREA_YESNO_QUESTION, AREA_QUESTION)
    if world == "v2":
        rng = stream(seed, f"v2/{split}", index)
        family = family or rng.choice(FAMILIES)
        scene = make_scene2(rng, target_side)
        return scene, make_question2(family, scene)
    rng = stream(seed, split, index)
    family = family or rng.choice(FAMILIES)
    scene = make_scene(rng, target_side)
    return scene, make_question(family, scene)


def training_prompt(question: Question) -> str:
    """The user text as the benchmark CLI builds it (ScienceQA's CLI appends its letter instruction)."""
    return question.text + ("\n" + CHOICE_INSTRUCTION if question.family == "sqa" else "")


def tokenizer_corpus(world: str = "v1") -> list[str]:
    """Every string the toy LLM of ``world`` reads or writes: the prompt template, the questions and the answers."""
    from llava.conversation import conv_templates

    system = conv_templates["vicuna_v1"].system
    words = list(COLORS) + list(SHAPES)
    lines = [f"{system} USER: <image>\n{COLOR_QUESTION}{SHORT_SUFFIX} ASSISTANT: red</s>",
             CHOICE_CONTEXT, CHOICE_QUESTION, CHOICE_INSTRUCTION,
             "Yes No yes no", " ".join(f"{LETTERS[i % 4]}. {w}" for i, w in enumerate(words))]
    lines += [YESNO_QUESTION, " ".join(WARM)]
    if world == "v2":
        lines += [MAJORITY_QUESTION, MAJORITY_YESNO_QUESTION]
    if world == "v3":
        lines += [AREA_QUESTION, AREA_YESNO_QUESTION]
    return lines + words


# --------------------------------------------------------------------------- benchmark writers


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":  # 4:4:4 and high quality: JPEG must not bleed the target's colour into its patches
        img.save(path, quality=95, subsampling=0)
    else:
        img.save(path)


def write_textvqa(root: Path, items: list[tuple[Scene, Question]]) -> None:
    d, questions, data = root / "textvqa", [], []
    for i, (scene, q) in enumerate(items):
        image_id = f"{i:016x}"
        _save(render(scene), d / "train_images" / f"{image_id}.jpg")
        questions.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": q.text, "category": "default"})
        data.append({"image_id": image_id, "question_id": i, "question": q.text.split("\n")[0].lower(),
                     "answers": [q.answer] * 10, "image_classes": [shape for _, shape, _ in scene.colored()], "flickr_original_url": "",
                     "set_name": "val"})
    _jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", questions)
    _json(d / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
                                         "data": data})


def write_pope(root: Path, items: list[tuple[Scene, Question]]) -> None:
    d, rows, ann = root / "pope", [], []
    for i, (scene, q) in enumerate(items):
        name = f"COCO_val2014_{i:012d}.jpg"
        _save(render(scene), d / "val2014" / name)
        first_line = q.text.split("\n")[0]
        ann.append({"question_id": i + 1, "image": name, "text": first_line, "label": q.answer.lower()})
        # LLaVA's POPE file offsets the question ids of each split; "random" is the second.
        rows.append({"question_id": 10_000_000 + i + 1, "image": name, "text": q.text, "category": "random"})
    _jsonl(d / "coco" / "coco_pope_random.json", ann)
    _jsonl(d / "llava_pope_test.jsonl", rows)


def write_sqa(root: Path, items: list[tuple[Scene, Question]]) -> None:
    d, convs, problems = root / "sqa", [], {}
    pids = [str(1000 + i) for i in range(len(items))]
    for pid, (scene, q) in zip(pids, items):
        _save(render(scene), d / "images" / "test" / pid / "image.png")
        convs.append({"id": pid, "image": f"{pid}/image.png",
                      "conversations": [{"from": "human", "value": "<image>\n" + q.text},
                                        {"from": "gpt", "value": q.answer}]})
        problems[pid] = {"question": q.text.split("\n")[1], "choices": list(q.choices), "answer": LETTERS.index(q.answer),
                         "hint": CHOICE_CONTEXT.removeprefix("Context: "), "image": "image.png",
                         "task": "closed choice", "grade": "grade1", "subject": "natural science",
                         "topic": "colors", "category": "Identify colors", "skill": "", "lecture": "",
                         "solution": "", "split": "test"}
    _json(d / "llava_test_CQM-A.json", convs)
    _json(d / "problems.json", problems)
    _json(d / "pid_splits.json", {"test": pids, "train": [], "val": [], "minival": [], "minitrain": []})


WRITERS = {"textvqa": write_textvqa, "pope": write_pope, "sqa": write_sqa}


def make_toy_benchmarks(root: str | Path, seed: int = 1, questions: int = 510, world: str = "v1") -> Path:
    """Write ``questions`` held-out questions of ``world``, split evenly over the three families, under ``root``."""
    root = Path(root)
    per_family = -(-questions // len(FAMILIES))
    for family in FAMILIES:
        items = [sample(seed, f"eval-{family}", i, family, world=world) for i in range(per_family)]
        WRITERS[family](root, items)
    (root / "toy_world.json").write_text(json.dumps(stamp(seed, per_family, world)))
    return root


def stamp(seed: int, per_family: int, world: str) -> dict:
    """What ``toy_world.json`` records of a benchmark folder (v1's folders keep their old two keys)."""
    return {"seed": seed, "questions_per_family": per_family, **({"world": world} if world != "v1" else {})}


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", help="benchmark root to fill (textvqa/, pope/, sqa/ as in playground/data/eval)")
    parser.add_argument("--world", choices=WORLDS, default="v1",
                        help="v1: one coloured target; v2: 3–4 coloured shapes, the colour most of them have; v3: 4–7 "
                             "shapes of three colours, the colour covering the most of the picture")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the scenes and questions (default 1; the shipped model was trained on seed 0's "
                             "training stream, which no evaluation split shares)")
    parser.add_argument("--questions", type=int, default=510,
                        help="held-out questions in all, split evenly over textvqa, pope and sqa (default 510)")
    args = parser.parse_args(argv)
    print(f"toy benchmarks written to {make_toy_benchmarks(args.out_dir, args.seed, args.questions, args.world)}")


if __name__ == "__main__":
    cli(main)
