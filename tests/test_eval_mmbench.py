"""MMBench upload converter and local circular scorer."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from llava.eval import convert_mmbench_for_submission as conv
from llava.eval import eval_mmbench as mmb
from llava.eval.utils import InputError, read_json
from manifests import attach_manifest
from conftest import cli_error

UPLOAD = "llava-eval/mmbench/answers_upload/mmbench_dev_20230712/llava-v1.5-13b.xlsx"
ANSWERS = "llava-eval/mmbench/answers/mmbench_dev_20230712/llava-v1.5-13b.jsonl"
TSV_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image",
               "source", "l2-category", "comment", "split"]
UPLOAD_HEADER = ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


# --- letter extraction -------------------------------------------------------------------

@pytest.mark.parametrize("prediction, expected", [
    ("B", "B"),
    ("The answer is C.", "C"),
    ("(D) a dog", "D"),
    ("A: cat", "A"),
    ("E", "E"),                                   # E is a candidate letter in the 2023 rule
    ("A or B", None),                             # two letters: no option match, no text match
    ("a", None),                                  # letters are case-sensitive
    ("Bird", None),                               # a letter inside a word is not a token
    ("I can't process this file.", "E"),          # Bard refusal
    ("Failed to obtain answer via API", None),
])
def test_infer_option(prediction, expected):
    assert mmb.infer_option(prediction) == expected


def test_text_rule_and_fallback():
    choices = {"A": "Red", "B": "Blue", "C": "Green"}
    assert mmb.infer_text("it is blue.", choices) == "B"
    assert mmb.infer_text("blue or green", choices) is None
    assert mmb.extract_letter("The sky is blue", choices) == "B"        # no letter token -> text rule
    assert mmb.extract_letter("B. green", choices) == "B"               # option rule wins
    assert mmb.extract_letter("Failed to obtain answer via API: blue", choices) == "B"
    assert mmb.extract_letter("purple", choices) is None


# --- tiny generated benchmark ------------------------------------------------------------

def _rotations(index: int, options: list[str], answer: int, category: str, copies: int) -> list[dict]:
    """The original row plus ``copies - 1`` circular copies with rotated options."""
    rows = []
    for k in range(copies):
        rotated = options[k:] + options[:k]
        row = {"index": index + k * 1_000_000, "question": f"question {index}?", "hint": None,
               **{c: (rotated[i] if i < len(rotated) else None) for i, c in enumerate("ABCD")},
               "answer": "ABCD"[rotated.index(options[answer])], "category": category, "image": IMAGE,
               "source": "generated", "l2-category": f"l2 {category}", "comment": None, "split": "dev"}
        rows.append(row)
    return rows


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """A 3-question TSV (groups of 4, 2 and 1 rows) and answers: 1 circular hit, 2 single-pass hits."""
    rows = (_rotations(0, ["red", "blue", "green", "yellow"], 1, "color", 4)
            + _rotations(1, ["cat", "dog"], 0, "animal", 2)
            + _rotations(2, ["yes", "no"], 1, "animal", 1))
    tsv = tmp_path / "mmbench_dev.tsv"
    pd.DataFrame(rows, columns=TSV_COLUMNS).to_csv(tsv, sep="\t", index=False)
    predictions = {
        0: "B", 1_000_000: "The answer is A.", 2_000_000: "blue", 3_000_000: "(C) blue",  # all right
        1: "A", 1_000_001: "A",                                                          # copy wrong
        2: "Maybe.",                                                                     # unmatched
    }
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q, "round_id": 0, "prompt": "p", "text": t}) + "\n"
                               for q, t in predictions.items()))
    return tsv, answers


def test_tiny_round_trip(tiny, tmp_path, capsys):
    tsv, answers = tiny
    upload = tmp_path / "up" / "n_576.xlsx"
    conv.main(["--annotation-file", str(tsv), "--result-file", str(answers), "--upload-file", str(upload)])
    sheet = openpyxl.load_workbook(upload).active
    assert [c.value for c in sheet[1]] == UPLOAD_HEADER                  # no row-number column
    assert sheet.max_row == 8
    assert [c.value for c in sheet[3]][:7] == [1_000_000, "question 0?", "blue", "green", "yellow", "red",
                                               "The answer is A."]

    score_file = tmp_path / "score.json"
    mmb.main(["--upload-file", str(upload), "--score-file", str(score_file)])
    out = capsys.readouterr().out
    assert "Circular accuracy: 33.33% (1/3)" in out
    assert "Single-pass accuracy: 66.67% (2/3)" in out
    score = read_json(score_file)
    assert score["benchmark"] == "mmb" and score["metric"] == "circular_accuracy"
    assert score["score"] == pytest.approx(100 / 3)
    assert score["details"]["unmatched_rows"] == 1

    # The TSV route gives the same numbers plus per-category results.
    mmb.main(["--annotation-file", str(tsv), "--result-file", str(answers), "--benchmark", "mmb_cn",
              "--score-file", str(score_file)])
    score = read_json(score_file)
    assert score["benchmark"] == "mmb_cn"
    assert score["details"]["single_pass_hits"] == 2
    assert score["details"]["per_category"]["category"] == {"animal": 0.0, "color": 100.0}
    assert "color: 100.00%" in capsys.readouterr().out


def test_missing_and_extra_predictions(tiny, tmp_path):
    tsv, answers = tiny
    lines = answers.read_text().splitlines()
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(InputError, match=r"short\.jsonl: 2 of 7 TSV rows have no answer, e\.g\. 1000001, 2"):
        conv.build_upload(tsv, short)
    extra = tmp_path / "extra.jsonl"
    extra.write_text(answers.read_text() + json.dumps({"question_id": 99, "text": "A"}) + "\n")
    with pytest.raises(InputError, match=r"1 answers match no TSV index"):
        conv.build_upload(tsv, extra)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(answers.read_text() + lines[0] + "\n")
    with pytest.raises(InputError, match=r"dup.jsonl:8: duplicate question_id 0"):
        conv.build_upload(tsv, dup)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": "0", "text": "A"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: question_id must be an integer"):
        conv.load_predictions(bad)


def test_bad_tables(tiny, tmp_path):
    tsv, answers = tiny
    df = conv.build_upload(tsv, answers)
    with pytest.raises(InputError, match=r"index 1000001: answer must be one of A-D"):
        mmb.evaluate(df.assign(answer=["B", "A", "D", "C", "A", "E", "B"]), "x.xlsx")
    with pytest.raises(InputError, match=r"copies of index 1 but no row"):
        mmb.evaluate(df[df["index"] != 1], "x.xlsx")
    with pytest.raises(InputError, match=r"no 'answer' column"):
        mmb.evaluate(df.drop(columns="answer"), "x.xlsx")
    with pytest.raises(InputError, match=r"no 'index' column"):
        conv.check_index(df.drop(columns="index"), "x.tsv")
    with pytest.raises(InputError, match=r"nope.xlsx: file not found"):
        mmb.read_upload(tmp_path / "nope.xlsx")
    with pytest.raises(InputError, match=r"cannot read as xlsx"):
        mmb.read_upload(answers)
    with pytest.raises(SystemExit):
        mmb.main(["--annotation-file", str(tsv)])


# --- LLaVA-1.5-13B reference files ----------------------------------------------------

def test_reference_upload_scores(shared_dir):
    res = mmb.evaluate(mmb.read_upload(shared_dir / UPLOAD), UPLOAD)
    assert (res["questions"], res["rows"]) == (1176, 4377)
    assert (res["circular_hits"], res["single_pass_hits"]) == (796, 887)
    assert round(res["circular"], 2) == 67.69 and round(res["single_pass"], 2) == 75.43


def test_reference_converter_round_trip(shared_dir, tmp_path):
    """A TSV rebuilt from the upload file + LLaVA's answers reproduces LLaVA's upload file."""
    ref = mmb.read_upload(shared_dir / UPLOAD)
    tsv = ref.drop(columns="prediction").assign(
        hint=None, category="c", image=IMAGE, source="s", **{"l2-category": "l2"}, comment=None)
    tsv[TSV_COLUMNS].to_csv(tmp_path / "dev.tsv", sep="\t", index=False)
    conv.main(["--annotation-file", str(tmp_path / "dev.tsv"), "--result-file", str(shared_dir / ANSWERS),
               "--upload-file", str(tmp_path / "out.xlsx")])
    ours = mmb.read_upload(tmp_path / "out.xlsx")
    assert list(ours.columns) == UPLOAD_HEADER
    pd.testing.assert_frame_equal(ours, ref)


def test_control_characters_in_predictions_do_not_break_the_xlsx(tmp_path):
    """Random or broken models emit control characters; openpyxl refuses them in cells."""
    import pandas as pd

    from llava.eval.convert_mmbench_for_submission import build_upload, write_upload

    tsv = tmp_path / "q.tsv"
    pd.DataFrame([{"index": 0, "question": "Q?", "hint": None, "A": "x", "B": "y", "answer": "A", "category": "c",
                   "image": "", "split": "dev"}]).to_csv(tsv, sep="\t", index=False)
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": 0, "round_id": 0, "text": "A\\u0001\\u0018"}\n')
    df = build_upload(tsv, answers)
    write_upload(df, tmp_path / "u.xlsx")
    assert pd.read_excel(tmp_path / "u.xlsx")["prediction"].tolist() == ["A"]


# --- safe outputs, partial runs, provenance, errors ------------------------------------

FORMULAS = ['=HYPERLINK("http://example.com/x","click")', "=1+1", "#DIV/0!", "=cmd|' /C calc'!A0", "#N/A"]
# pandas reads a "#N/A" TSV cell as missing, so the options carry another formula there.
OPTIONS = FORMULAS[:-1] + ["=2*3"]


def test_formula_like_texts_stay_text_cells(tmp_path):
    """openpyxl stores '=...' as a formula and '#N/A' as an error cell; the upload keeps them as plain text."""
    rows = [{"index": i, "question": "Which?", "hint": None, "A": text, "B": "plain", "C": None, "D": None,
             "answer": "A", "category": "c", "image": IMAGE, "source": "s", "l2-category": "l2", "comment": None,
             "split": "dev"} for i, text in enumerate(OPTIONS)]
    tsv = tmp_path / "dev.tsv"
    pd.DataFrame(rows, columns=TSV_COLUMNS).to_csv(tsv, sep="\t", index=False)
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in enumerate(FORMULAS)))
    upload = tmp_path / "upload.xlsx"
    conv.main(["--annotation-file", str(tsv), "--result-file", str(answers), "--upload-file", str(upload)])
    sheet = openpyxl.load_workbook(upload).active
    header = [c.value for c in sheet[1]]
    for n, (option, prediction) in enumerate(zip(OPTIONS, FORMULAS), 2):
        for column, text in (("A", option), ("prediction", prediction)):
            cell = sheet.cell(row=n, column=header.index(column) + 1)
            assert (cell.data_type, cell.value) == ("s", text), (column, text)
    df = pd.read_excel(upload, dtype=str, keep_default_na=False)
    assert df["prediction"].tolist() == FORMULAS and df["A"].tolist() == OPTIONS
    # The first four predictions are their option A's text (the text rule finds A); pandas reads "#N/A" as missing.
    assert mmb.evaluate(mmb.read_upload(upload), str(upload))["circular_hits"] == 4


@pytest.mark.parametrize("values, message", [
    (["0", "1", "abc"], r"dev\.tsv: line 4: index 'abc' is not an integer"),
    (["0", "", "2"], r"dev\.tsv: line 3: index nan is not an integer"),
    (["0", "1.5", "2"], r"dev\.tsv: line 3: index 1\.5 is not an integer"),
    (["0", "1", "1"], r"dev\.tsv: line 4: duplicate index 1 \(first at line 3\)"),
])
def test_bad_index_names_the_line(tmp_path, values, message):
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("index\tquestion\tA\tB\tanswer\n" + "".join(f"{v}\tQ?\tx\ty\tA\n" for v in values))
    with pytest.raises(InputError, match=message):
        conv.read_tsv(tsv)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    """A TSV saved by Excel or Notepad starts with a UTF-8 BOM: the first column must still be ``index``."""
    tsv = tmp_path / "dev.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfindex\tquestion\tA\tB\tanswer\n0\tQ?\tx\ty\tA\n")
    df = conv.read_tsv(tsv)
    assert list(df.columns)[0] == "index" and df["index"].tolist() == [0]


def test_bad_upload_index_names_the_sheet_row(tiny, tmp_path):
    tsv, answers = tiny
    df = conv.build_upload(tsv, answers).astype({"index": object})
    df.loc[2, "index"] = "abc"
    conv.write_upload(df, tmp_path / "u.xlsx")
    with pytest.raises(InputError, match=r"u\.xlsx: row 4: index 'abc' is not an integer"):
        mmb.read_upload(tmp_path / "u.xlsx")


def test_partial_answers(tiny, tmp_path, capsys):
    tsv, answers = tiny
    short = tmp_path / "short.jsonl"
    short.write_text("".join(line + "\n" for line in answers.read_text().splitlines()
                             if '"question_id": 1000001' not in line))
    upload = tmp_path / "upload.xlsx"
    args = ["--annotation-file", str(tsv), "--result-file", str(short)]
    conv.main(args + ["--upload-file", str(upload), "--allow-partial"])
    out = capsys.readouterr().out
    assert "PARTIAL upload: 1 of 7 rows have no prediction" in out
    assert pd.isna(mmb.read_upload(upload).set_index("index").loc[1_000_001, "prediction"])
    with pytest.raises(InputError, match=r"short\.jsonl: 1 of 7 TSV rows have no answer"):
        mmb.main(args)
    score_file = tmp_path / "score.json"
    mmb.main(args + ["--allow-partial", "--score-file", str(score_file)])
    assert "PARTIAL score: 1 of 7 TSV rows" in capsys.readouterr().err
    score = read_json(score_file)
    # Question 1 lost a copy and is not scored; of 0 (all right) and 2 (unmatched), one is a hit.
    assert score["partial"] == {"answered": 6, "expected": 7, "missing": 1}
    assert (score["details"]["questions"], score["details"]["circular_hits"]) == (2, 1) and score["score"] == 50.0


def test_manifest_follows_the_upload(tiny, tmp_path):
    tsv, answers = tiny
    manifest = attach_manifest(Path(answers))
    upload, score_file = tmp_path / "upload.xlsx", tmp_path / "score.json"
    conv.main(["--annotation-file", str(tsv), "--result-file", str(answers), "--upload-file", str(upload)])
    mmb.main(["--upload-file", str(upload), "--score-file", str(score_file)])
    score = read_json(score_file)
    assert score["manifest"] == manifest and score["answers_file"] == str(upload) and score["partial"] is None
    mmb.main(["--annotation-file", str(tsv), "--result-file", str(answers), "--score-file", str(score_file)])
    assert read_json(score_file)["manifest"] == manifest
    # Answers without a manifest: the upload must not keep the one of an earlier run.
    (tmp_path / "answers.jsonl.manifest.json").unlink()
    conv.main(["--annotation-file", str(tsv), "--result-file", str(answers), "--upload-file", str(upload)])
    assert not (tmp_path / "upload.xlsx.manifest.json").exists()


@pytest.mark.parametrize("module", ["convert_mmbench_for_submission", "eval_mmbench"])
def test_cli_errors_are_one_line(tiny, tmp_path, module):
    tsv, _ = tiny
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": 0, "text": 5}) + "\n")
    out = ["--upload-file", str(tmp_path / "u.xlsx")] if module.startswith("convert") else []
    stderr = cli_error(f"llava.eval.{module}", "--annotation-file", str(tsv), "--result-file", str(bad), *out)
    assert stderr.startswith(f"error: {bad}:1: text must be a string")


@pytest.mark.parametrize("dropped", [{2_000_000}, {2_000_000, 3_000_000}])  # a copy inside, the last two copies
def test_incomplete_circular_groups_are_refused_or_marked(tiny, tmp_path, capsys, dropped):
    tsv, answers = tiny
    df = pd.read_csv(tsv, sep="\t")
    df[~df["index"].isin(dropped)].to_csv(tsv, sep="\t", index=False)
    rows = [json.loads(l) for l in answers.read_text().splitlines()]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows if r["question_id"] not in dropped))
    args = ["--annotation-file", str(tsv), "--result-file", str(answers)]
    with pytest.raises(InputError, match=r"1 question\(s\) lack circular copies, e.g. index 0"):
        mmb.main(args)
    score_file = tmp_path / "score.json"
    mmb.main(args + ["--allow-partial", "--score-file", str(score_file)])
    assert "1 question(s) lack circular copies" in capsys.readouterr().err
    score = read_json(score_file)
    assert score["partial"]["incomplete_groups"] == 1 and score["details"]["questions"] == 2
