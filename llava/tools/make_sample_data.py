"""Write a tiny copy of every image benchmark in its real file layout, for the demo and the script tests.

    python -m llava.tools.make_sample_data playground/data/eval [--questions 4]

Each benchmark gets a few generated images and questions in exactly the formats of LLaVA's eval
files and of the official ground truth (see docs/eval.md), so ``scripts/v1_5/eval/<bench>.sh`` runs end
to end. The answers are made up; only the formats are real.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

SHORT = "\nAnswer the question using a single word or phrase."
COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def _image(seed: int, size=(96, 72)) -> Image.Image:
    rng = random.Random(seed)
    color = list(COLORS.values())[seed % len(COLORS)]
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
    draw.rectangle((x, y, x + size[0] // 3, y + size[1] // 3), fill=color)
    return img


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def textvqa(root: Path, n: int) -> None:
    d, questions, data = root / "textvqa", [], []
    for i in range(n):
        image_id = f"{i:016x}"
        _save(_image(i), d / "train_images" / f"{image_id}.jpg")
        question = f"what color is box number {i}?"
        questions.append({"question_id": image_id, "image": f"{image_id}.jpg", "text":
                          f"{question.capitalize()}\nReference OCR token: STOP, {i}{SHORT}", "category": "default"})
        answer = list(COLORS)[i % len(COLORS)]
        data.append({"image_id": image_id, "question_id": i, "question": question, "answers": [answer] * 7 + ["box"] * 3,
                     "image_classes": [], "flickr_original_url": "", "set_name": "val"})
    _jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", questions)
    _json(d / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})


def vqav2(root: Path, n: int) -> None:
    d, rows = root / "vqav2", []
    for i in range(n):
        name = f"COCO_test2015_{i:012d}.jpg"
        _save(_image(10 + i), d / "test2015" / name)
        rows.append({"question_id": 262144000 + i, "image": name, "text": f"What color is the box?{SHORT}", "category": "default"})
    _jsonl(d / "llava_vqav2_mscoco_test-dev2015.jsonl", rows)
    extra = {"question_id": 262144999, "image": "COCO_test2015_000000000999.jpg", "text": "Not in test-dev?" + SHORT,
             "category": "default"}
    _jsonl(d / "llava_vqav2_mscoco_test2015.jsonl", rows + [extra])  # the full test set is a superset of test-dev


def gqa(root: Path, n: int) -> None:
    d, rows, gt = root / "gqa", [], {}
    for i in range(n):
        qid = str(201307251 + i)
        _save(_image(20 + i), d / "data" / "images" / f"n{i}.jpg")
        rows.append({"question_id": qid, "image": f"n{i}.jpg", "text": f"Is the box red?{SHORT}", "category": "default"})
        gt[qid] = {"question": "Is the box red?", "answer": "yes" if i % 2 else "no", "imageId": f"n{i}", "isBalanced": True,
                   "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
                   "semantic": [], "groups": {"global": None, "local": None}, "entailed": [], "equivalent": [qid]}
    _jsonl(d / "llava_gqa_testdev_balanced.jsonl", rows)
    _json(d / "data" / "testdev_balanced_questions.json", gt)


def vizwiz(root: Path, n: int) -> None:
    d, rows = root / "vizwiz", []
    suffix = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT
    for i in range(n):
        name = f"VizWiz_test_{i:08d}.jpg"
        _save(_image(30 + i), d / "test" / name)
        rows.append({"question_id": i, "image": name, "text": "What is this?" + suffix, "category": "default"})
    _jsonl(d / "llava_test.jsonl", rows)


def sqa(root: Path, n: int) -> None:
    d, items, problems = root / "sqa", [], {}
    pids = [str(100 + i) for i in range(n)]
    for i, pid in enumerate(pids):
        choices = ["cat", "tree", "rock"]
        text = f"Context: A picture.\nWhich of these is an animal?\nA. {choices[0]}\nB. {choices[1]}\nC. {choices[2]}"
        item = {"id": pid, "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "A"}]}
        if i % 2 == 0:  # ScienceQA mixes image and text-only questions
            _save(_image(40 + i), d / "images" / "test" / pid / "image.png")
            item["image"] = f"{pid}/image.png"
            item["conversations"][0]["value"] = "<image>\n" + text
        items.append(item)
        problems[pid] = {"question": "Which of these is an animal?", "choices": choices, "answer": 0, "hint": "A picture.",
                         "image": "image.png" if i % 2 == 0 else None, "task": "closed choice", "grade": "grade2",
                         "subject": "natural science", "topic": "biology", "category": "Classification", "skill": "",
                         "lecture": "", "solution": "", "split": "test"}
    _json(d / "llava_test_CQM-A.json", items)
    _json(d / "problems.json", problems)
    _json(d / "pid_splits.json", {"test": pids, "train": [], "val": []})


def pope(root: Path, n: int) -> None:
    d, rows = root / "pope", []
    offsets = {"adversarial": 0, "random": 10000000, "popular": 20000000}
    for split, offset in offsets.items():
        ann = []
        for i in range(n):
            name = f"COCO_val2014_{i:012d}.jpg"
            _save(_image(50 + i), d / "val2014" / name)
            obj = list(COLORS)[(i + offset) % 4]
            text = f"Is there a {obj} box in the image?"
            label = "yes" if i % 2 == 0 else "no"
            ann.append({"question_id": i + 1, "image": name, "text": text, "label": label})
            rows.append({"question_id": offset + i + 1, "image": name, "text": text + SHORT, "category": split})
        _jsonl(d / "coco" / f"coco_pope_{split}.json", ann)
    _jsonl(d / "llava_pope_test.jsonl", rows)


def mme(root: Path, n: int) -> None:
    d, rows = root / "MME", []
    for category in ("existence", "OCR"):
        base = d / "MME_Benchmark_release_version" / category
        for i in range(max(1, n // 2)):
            stem = f"{i:012d}"
            _save(_image(60 + i), base / f"{stem}.jpg")
            pairs = [("Is there a box in this image?", "Yes"), ("Is there a dog in this image?", "No")]
            (base / f"{stem}.txt").write_text(
                "".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in pairs), encoding="utf-8")
            for q, _ in pairs:
                rows.append({"question_id": f"{category}/{stem}.jpg", "image": f"{category}/{stem}.jpg", "text": q + SHORT,
                             "category": category})
    _jsonl(d / "llava_mme.jsonl", rows)


def _mmbench(path: Path, n: int, question: str) -> None:
    import pandas as pd

    records = []
    for i in range(n):
        buf = io.BytesIO()
        _image(70 + i).save(buf, format="PNG")
        b64 = base64.b64encode(buf.getvalue()).decode()
        options = ["red", "green", "blue", "yellow"]
        for k in range(4):  # circular copies: index + k·10⁶, options rotated
            rot = options[k:] + options[:k]
            records.append({"index": i + k * 1_000_000, "question": question, "hint": "A coloured box." if i % 2 else None,
                            "A": rot[0], "B": rot[1], "C": rot[2], "D": rot[3], "answer": "ABCD"[(-k) % 4],
                            "category": "attribute_recognition", "image": b64, "source": "sample",
                            "l2-category": "finegrained_perception (instance-level)", "comment": None, "split": "dev"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame.from_records(records).to_csv(path, sep="\t", index=False)


def mmvet(root: Path, n: int) -> None:
    d, rows = root / "mm-vet", []
    for i in range(n):
        _save(_image(80 + i), d / "images" / f"v1_{i}.png")
        rows.append({"image": f"v1_{i}.png", "text": "What is the main colour of the box?", "category": "conv", "question_id": i})
    _jsonl(d / "llava-mm-vet.jsonl", rows)


def make_sample_data(root: str | Path, questions: int = 4) -> Path:
    root = Path(root)
    for make in (textvqa, vqav2, gqa, vizwiz, sqa, pope, mme, mmvet):
        make(root, questions)
    _mmbench(root / "mmbench" / "mmbench_dev_20230712.tsv", questions, "What colour is the box?")
    _mmbench(root / "mmbench_cn" / "mmbench_dev_cn_20231003.tsv", questions, "方框是什么颜色？")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="folder to fill, normally playground/data/eval")
    parser.add_argument("--questions", type=int, default=4, help="questions per benchmark (default 4)")
    args = parser.parse_args(argv)
    print(f"sample benchmark data written to {make_sample_data(args.root, args.questions)}")


if __name__ == "__main__":
    main()
