"""The GPT judging engine and the judged scorers (video QA, MM-Vet), driven through the real
``openai`` client against a scriptable fake server on 127.0.0.1."""
from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest

from llava.eval import eval_mmvet
from llava.eval.judge import (Backoff, FatalJudgeError, Judge, JudgeError, MalformedReply, cache_path,
                              judge_many, make_client)
from llava.eval.utils import InputError
from llava.eval.video import eval_video_qa as vqa

KEY = "sk-test-SECRET-7f3a9c"
GOOD = "{'pred': 'yes', 'score': 4}"
Action = tuple[int, str, float]  # (HTTP status, assistant text or error message, delay in seconds)


def ok(text: str = GOOD, delay: float = 0.0) -> Action:
    return 200, text, delay


def fail(status: int, message: str = "scripted failure") -> Action:
    return status, message, 0.0


class FakeOpenAI:
    """``POST /v1/chat/completions``: scripted actions are served first, then ``respond(body)``."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self.paths: list[str] = []
        self.queue: deque[Action] = deque()
        self.respond: Callable[[dict], Action] = lambda body: ok()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.bodies.append(body)
                    fake.auth.append(self.headers.get("Authorization", ""))
                    fake.paths.append(self.path)
                    action = fake.queue.popleft() if fake.queue else None
                status, text, delay = action or fake.respond(body)
                if self.path != "/v1/chat/completions":
                    status, text = 404, f"no route {self.path}"
                time.sleep(delay)
                if status == 200:
                    payload = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"] + "-dated",
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                else:
                    payload = {"error": {"message": text, "type": "test", "param": None, "code": None}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def fake(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    server = FakeOpenAI()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def make_judge(fake: FakeOpenAI, sleeps: list | None = None, retries: int = 3, timeout: float = 5.0,
               parse_attempts: int = 3) -> Judge:
    sleep = sleeps.append if sleeps is not None else (lambda s: None)
    return Judge("judge-model", base_url=fake.base_url, api_key=KEY, timeout=timeout,
                 backoff=Backoff(retries=retries, base_s=1.0, cap_s=8.0, sleep=sleep), parse_attempts=parse_attempts)


MESSAGES = [{"role": "user", "content": "grade this"}]


# --- engine ---------------------------------------------------------------------------------


def test_make_client_needs_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        make_client()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    client = make_client(base_url="http://127.0.0.1:9/v1")
    assert client.max_retries == 0 and client.api_key == KEY


def test_backoff_delay_is_exponential_jittered_and_capped():
    b = Backoff(base_s=1.0, cap_s=8.0)
    random.seed(0)
    for attempt, (lo, hi) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (4, 8), (4, 8)]):
        delays = [b.delay(attempt) for _ in range(50)]
        assert all(lo <= d <= hi for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert b.delay(0, retry_after=5.0) == 5.0  # the server's Retry-After wins over a shorter back-off
    assert b.delay(0, retry_after=100.0) == 8.0  # ... but not over the cap
    with pytest.raises(InputError):
        Backoff(retries=-1)


def test_rate_limit_and_server_error_are_retried(fake):
    fake.queue.extend([fail(429), fail(500), fail(503), ok()])
    sleeps: list[float] = []
    parsed, reply = make_judge(fake, sleeps).ask(MESSAGES, vqa.parse_reply)
    assert parsed == {"pred": "yes", "score": 4}
    assert reply.model == "judge-model-dated"
    assert len(fake.bodies) == 4 and set(fake.paths) == {"/v1/chat/completions"}
    assert fake.auth == [f"Bearer {KEY}"] * 4
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1 and 1 <= sleeps[1] <= 2 and 2 <= sleeps[2] <= 4


def test_transport_retries_are_bounded(fake):
    fake.respond = lambda body: fail(502)
    sleeps: list[float] = []
    with pytest.raises(JudgeError, match="gave up after 4 attempts.*502"):
        make_judge(fake, sleeps, retries=3).chat(MESSAGES)
    assert len(fake.bodies) == 4 and len(sleeps) == 3


def test_client_error_is_not_retried(fake):
    fake.queue.append(fail(400, "context too long"))
    with pytest.raises(JudgeError, match="context too long"):
        make_judge(fake).chat(MESSAGES)
    assert len(fake.bodies) == 1


def test_timeout_is_retried(fake):
    fake.queue.extend([ok(delay=1.0), ok()])
    parsed, _ = make_judge(fake, timeout=0.3).ask(MESSAGES, vqa.parse_reply)
    assert parsed["pred"] == "yes" and len(fake.bodies) == 2


def test_connection_error_is_retried_then_fails():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    judge = Judge("m", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY,
                  backoff=Backoff(retries=2, sleep=sleeps.append))
    with pytest.raises(JudgeError, match="APIConnectionError"):
        judge.chat(MESSAGES)
    assert len(sleeps) == 2


def test_malformed_then_good(fake):
    fake.queue.extend([ok("Sure! The answer is correct."), ok("{'pred': 'no'}"), ok("{'pred': 'no', 'score': 1}")])
    parsed, _ = make_judge(fake).ask(MESSAGES, vqa.parse_reply)
    assert parsed == {"pred": "no", "score": 1} and len(fake.bodies) == 3


def test_always_malformed_is_a_bounded_uncached_failure(fake, tmp_path, capsys):
    fake.respond = lambda body: ok("I think yes.")
    items = {"a": {"q": "q", "a": "x", "pred": "x"}}
    judge = make_judge(fake, parse_attempts=3)
    report = judge_many(items, lambda qa: vqa.judge_item(judge, qa), tmp_path, workers=2)
    assert list(report.failures) == ["a"] and "malformed after 3 attempts" in report.failures["a"]
    assert report.results == {} and report.judged == 0
    assert len(fake.bodies) == 3
    assert not cache_path(tmp_path, "a").exists()
    assert "1 item(s) failed" in capsys.readouterr().err
    # The failure was not cached as a success: a later run judges it again.
    fake.respond = lambda body: ok()
    report = judge_many(items, lambda qa: vqa.judge_item(judge, qa), tmp_path)
    assert report.failures == {} and report.judged == 1 and len(fake.bodies) == 4


def test_cache_makes_rerun_free_and_refreshes_stale_items(fake, tmp_path):
    items = {f"v_{i}": {"q": f"q{i}", "a": "a", "pred": "p"} for i in range(5)}
    judge = make_judge(fake)
    report = judge_many(items, lambda qa: vqa.judge_item(judge, qa), tmp_path, workers=3, is_fresh=vqa.is_fresh)
    assert report.judged == 5 and len(fake.bodies) == 5
    assert list(report.results) == list(items)  # input order, whatever the completion order
    assert json.loads(cache_path(tmp_path, "v_3").read_text()) == [{"pred": "yes", "score": 4}, items["v_3"]]
    report = judge_many(items, lambda qa: vqa.judge_item(make_judge(fake), qa), tmp_path, is_fresh=vqa.is_fresh)
    assert report.cached == 5 and report.judged == 0 and len(fake.bodies) == 5
    items["v_1"] = {"q": "q1", "a": "a", "pred": "changed"}
    report = judge_many(items, lambda qa: vqa.judge_item(judge, qa), tmp_path, is_fresh=vqa.is_fresh)
    assert report.cached == 4 and report.judged == 1 and len(fake.bodies) == 6


def test_bad_cache_id_and_file_are_named(tmp_path):
    with pytest.raises(InputError, match="cannot name a cache file"):
        cache_path(tmp_path, "../escape")
    (tmp_path / "x.json").write_text("{broken")
    with pytest.raises(InputError, match="x.json"):
        judge_many({"x": 1}, lambda p: p, tmp_path)


def test_fatal_error_stops_the_run_and_key_is_redacted(fake, tmp_path):
    fake.respond = lambda body: fail(401, f"Incorrect API key provided: {KEY}")
    judge = make_judge(fake)
    items = {str(i): {"q": "q", "a": "a", "pred": "p"} for i in range(20)}
    with pytest.raises(FatalJudgeError) as info:
        judge_many(items, lambda qa: vqa.judge_item(judge, qa), tmp_path, workers=1)
    assert "AuthenticationError" in str(info.value) and KEY not in str(info.value)
    assert len(fake.bodies) < 20  # queued items were cancelled


# --- video QA -------------------------------------------------------------------------------


def test_video_prompts_are_upstream_exact():
    system, user = vqa.build_messages("Q?", "A", "P")
    # sha256 of the texts in Video-LLaVA videollava/eval/video/eval_video_qa.py (= Video-ChatGPT's).
    assert system["role"] == "system" and user["role"] == "user"
    assert hashlib.sha256(system["content"].encode()).hexdigest() == \
        "12b9e42d120081bf1e7f1999bb09db2db250add544abd3c183d61a2f938c6510"
    assert hashlib.sha256(user["content"].encode()).hexdigest() == \
        "ec5a0f50ff445373a56f95dd2cb06c2808bba07e634b57940960e5075abadb15"
    assert "task:------##INSTRUCTIONS: - Focus" in system["content"]
    assert "is  a string" in user["content"] and "STRING.DO NOT" in user["content"]


@pytest.mark.parametrize("text", ["yes", "{'pred': 'yes'}", "{'score': 3}", "{'pred': 1, 'score': 3}",
                                  "{'pred': 'yes', 'score': 3} thanks", "[1, 2]", "{'pred': 'yes', 'score': {1}}",
                                  "{'pred': 'yes', 'score': true}", ""])
def test_parse_reply_rejects(text):
    with pytest.raises(MalformedReply):
        vqa.parse_reply(text)


def test_parse_reply_accepts_python_and_json_dicts():
    assert vqa.parse_reply("{'pred': 'no', 'score': 4.8}") == {"pred": "no", "score": 4.8}
    assert vqa.parse_reply('{"pred": "yes", "score": "3"}') == {"pred": "yes", "score": "3"}


def test_aggregate_matches_hand_computation():
    items = [
        [{"pred": "yes", "score": 5}, {}],
        [{"pred": "Yes", "score": 4.8}, {}],      # int(4.8) = 4
        [{"pred": "no", "score": 1}, {}],
        [{"pred": "I don't know", "score": 2}, {}],  # "know" contains "no"
        [{"pred": "maybe", "score": 3}, {}],     # neither: counts for score only
        [{"pred": "yes", "score": "4.8"}, {}],   # int("4.8") raises: score 0, not in accuracy
        [{"pred": "yes", "score": "3"}, {}],     # int("3") = 3
        [{"pred": "yes, nothing wrong", "score": 2}, {}],  # "yes" wins over "no"
    ]
    out = vqa.aggregate(items)
    assert (out["yes"], out["no"], out["unscorable"], out["count"]) == (4, 2, 1, 8)
    assert out["accuracy"] == pytest.approx(400 / 6)
    assert out["score"] == pytest.approx((5 + 4 + 1 + 2 + 3 + 0 + 3 + 2) / 8)
    with pytest.raises(ValueError):
        vqa.aggregate([])


def test_average_pct_reproduces_table10(shared_dir):
    with open(shared_dir / "paper" / "table10_video_llava.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    base = rows[0]
    assert base["reduction"] == "0"
    for row in rows:
        acc = vqa.average_pct({d: float(row[f"{d}_acc"]) for d in vqa.DATASETS},
                              {d: float(base[f"{d}_acc"]) for d in vqa.DATASETS})
        assert round(acc, 2) == pytest.approx(float(row["avg_acc_pct"]), abs=1e-9), row
        # The paper averaged unrounded scores, so ratios of the 2-decimal scores drift slightly.
        score = vqa.average_pct({d: float(row[f"{d}_score"]) for d in vqa.DATASETS},
                                {d: float(base[f"{d}_score"]) for d in vqa.DATASETS})
        assert score == pytest.approx(float(row["avg_score_pct"]), abs=0.1), row
    with pytest.raises(ValueError, match="anet"):
        vqa.average_pct({"tgif": 1, "msvd": 1, "msrvtt": 1}, {d: 1 for d in vqa.DATASETS})


def _exact_match_judge(body: dict) -> Action:
    """Reply 'yes'/5 when the prediction equals the correct answer the judge was shown, else 'no'/1."""
    user = body["messages"][1]["content"]
    answer = re.search(r"^Correct Answer: (.*)$", user, re.M).group(1)
    pred = re.search(r"^Predicted Answer: (.*)$", user, re.M).group(1)
    return ok("{'pred': 'yes', 'score': 5}" if answer == pred else "{'pred': 'no', 'score': 1}")


def test_eval_video_qa_end_to_end(fake, shared_dir, tmp_path, capfd):
    folder = shared_dir / "video-qa-1k" / "MSVD_Zero_Shot_QA"
    questions = json.loads((folder / "test_q_1k.json").read_text())[:8]
    answers = {a["question_id"]: a["answer"] for a in json.loads((folder / "test_a_1k.json").read_text())}
    lines = []
    for i, q in enumerate(questions):
        gt = answers[q["question_id"]]
        # Half the predictions are right; every line carries a misaligned answer that the GT join must replace.
        lines.append({"id": q["question_id"], "question": q["question"], "answer": "WRONG",
                      "pred": gt if i % 2 == 0 else "zebra"})
    random.Random(1).shuffle(lines)
    pred_path = tmp_path / "merge.jsonl"
    pred_path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    fake.respond = _exact_match_judge
    argv = ["--pred-path", str(pred_path), "--output-dir", str(tmp_path / "gpt"), "--output-json",
            str(tmp_path / "results.json"), "--judge-model", "gpt-3.5-turbo-0125", "--base-url", fake.base_url,
            "--api-key", KEY, "--workers", "4", "--gt-file-answers", str(folder / "test_a_1k.json"),
            "--benchmark", "msvd", "--score-file", str(tmp_path / "score.json")]
    summary = vqa.main(argv)
    assert (summary["yes"], summary["no"], summary["count"]) == (4, 4, 8)
    assert summary["accuracy"] == 50.0 and summary["score"] == 3.0
    assert len(fake.bodies) == 8 and {b["model"] for b in fake.bodies} == {"gpt-3.5-turbo-0125"}
    assert all("temperature" not in b for b in fake.bodies)  # upstream sends none
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == [x["id"] for x in lines]
    for q in questions:
        reply, qa = results[q["question_id"]]
        assert qa == {"q": q["question"], "a": answers[q["question_id"]], "pred": qa["pred"]}
        assert json.loads((tmp_path / "gpt" / f"{q['question_id']}.json").read_text()) == [reply, qa]
    score = json.loads((tmp_path / "score.json").read_text())
    assert score["benchmark"] == "msvd" and score["score"] == 50.0 and score["details"]["score"] == 3.0
    out, err = capfd.readouterr()
    assert "Accuracy: 50.00" in out and "Average score: 3.00" in out and "Failures: 0" in out
    assert "8 prediction line(s) carry an answer that differs" in err
    assert KEY not in out + err
    # A stale file in the output folder is not aggregated; the rerun sends no request.
    (tmp_path / "gpt" / "stale.json").write_text(json.dumps([{"pred": "no", "score": 0}, {}]))
    assert vqa.main(argv) == summary and len(fake.bodies) == 8


def test_eval_video_qa_failures_exit_nonzero_without_score(fake, tmp_path, capfd):
    pred_path = tmp_path / "merge.jsonl"
    pred_path.write_text("".join(json.dumps({"id": f"v_{i}", "question": "q", "answer": "a", "pred": "a"}) + "\n"
                                 for i in range(3)))
    fake.respond = lambda body: ok()
    fake.queue.extend([fail(400, f"bad request for {KEY}")])
    with pytest.raises(SystemExit, match="1 item"):
        vqa.main(["--pred-path", str(pred_path), "--output-dir", str(tmp_path / "gpt"), "--output-json",
                  str(tmp_path / "r.json"), "--base-url", fake.base_url, "--api-key", KEY, "--workers", "1",
                  "--benchmark", "tgif", "--score-file", str(tmp_path / "s.json")])
    out, err = capfd.readouterr()
    assert "Failures: 1" in out and "PARTIAL" in out and KEY not in out + err and "<api-key>" in err
    assert not (tmp_path / "s.json").exists() and len(json.loads((tmp_path / "r.json").read_text())) == 2


def test_eval_video_qa_without_key_names_the_variable(fake, tmp_path):
    pred_path = tmp_path / "merge.jsonl"
    pred_path.write_text(json.dumps({"id": "v_0", "question": "q", "answer": "a", "pred": "a"}) + "\n")
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        vqa.main(["--pred-path", str(pred_path), "--output-dir", str(tmp_path / "gpt"),
                  "--output-json", str(tmp_path / "r.json"), "--base-url", fake.base_url])
    assert fake.bodies == []


def test_eval_video_qa_input_errors(tmp_path):
    gt = tmp_path / "a.json"
    gt.write_text(json.dumps([{"answer": "x", "type": 3, "question_id": "v_a_0"}]))
    pred = tmp_path / "p.jsonl"
    pred.write_text(json.dumps({"id": "v_a_0", "question": "q", "pred": "x"}) + "\n"
                    + json.dumps({"id": "v_b_0", "question": "q", "pred": "x"}) + "\n")
    with pytest.raises(InputError, match=r"p\.jsonl:2: prediction id 'v_b_0' is not in"):
        vqa.load_predictions(pred, vqa.load_gt_answers(gt))
    with pytest.raises(InputError, match=r"p\.jsonl:1: missing key\(s\) answer"):
        vqa.load_predictions(pred)
    pred.write_text(json.dumps({"id": "v_a_0", "question": "q", "pred": "x"}) + "\n" * 2
                    + json.dumps({"id": "v_a_0", "question": "q", "pred": "y"}) + "\n")
    with pytest.raises(InputError, match=r"p\.jsonl:3: duplicate id 'v_a_0'"):
        vqa.load_predictions(pred, vqa.load_gt_answers(gt))
    gt.write_text(json.dumps([{"answer": "x", "question_id": "q"}, {"answer": "y", "question_id": "q"}]))
    with pytest.raises(InputError, match=r"a\.json\[1\]: duplicate question_id"):
        vqa.load_gt_answers(gt)


# --- MM-Vet ---------------------------------------------------------------------------------


def test_mmvet_prompt_is_upstream_exact():
    # sha256 of the few-shot prompt in yuweihao/MM-Vet mm-vet_evaluator.py.
    assert hashlib.sha256(eval_mmvet.FEW_SHOT_PROMPT.encode()).hexdigest() == \
        "d1b3e0a5b4e72c888b77164489d705bba4dd149934fff564dfba6443d81afe3f"
    query = eval_mmvet.build_query("What is x?", "-1<AND>-5", "x = 3")
    assert query == eval_mmvet.FEW_SHOT_PROMPT + "\nWhat is x? | -1 <AND> -5 | x = 3 | "


def test_mmvet_reask_escalates_temperature_and_is_bounded(fake):
    judge = make_judge(fake)
    fake.queue.extend([ok("Hmm"), ok("x"), ok("2.0"), ok("nan"), ok(" 0.5"), ok("0.9 never parsed")])
    grade = eval_mmvet.grade(judge, "Q")
    assert grade == {"model": "judge-model-dated", "content": "0.9 never parsed", "score": 0.0}
    assert [b["temperature"] for b in fake.bodies] == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert all(b["max_tokens"] == 3 for b in fake.bodies)
    assert fake.bodies[0]["messages"] == [{"role": "user", "content": "Q"}]
    assert all(b["messages"][0]["content"] == "Q" + eval_mmvet.REASK_SUFFIX for b in fake.bodies[1:])
    fake.queue.extend([ok("1.5"), ok("0.7 is my grade")])
    assert eval_mmvet.grade(judge, "Q") == {"model": "judge-model-dated", "content": "0.7", "score": 0.7}
    assert len(fake.bodies) == 8


def test_mmvet_total_from_stored_grades(shared_dir):
    results = shared_dir / "llava-eval" / "mm-vet" / "results"
    grades = json.loads((results / "llava-v1.5-13b_gpt-4-grade-1runs.json").read_text())
    assert len(grades) == 218 and all(set(g) == {"model", "content", "score"} for g in grades.values())
    # The grade file holds no capabilities; the total does not depend on them.
    cap_row, combo_row = eval_mmvet.aggregate({k: g["score"] for k, g in grades.items()}, {k: ["rec"] for k in grades})
    assert (cap_row["total"], cap_row["std"], cap_row["runs"]) == (36.1, 0.0, "[36.1]")
    with open(results / "llava-v1.5-13b_gpt-4-cap-score-1runs.csv", newline="") as f:
        header, stored = list(csv.reader(f))
    assert dict(zip(header[1:], stored[1:]))["total"] == str(cap_row["total"])
    assert combo_row["total"] == 36.1


def test_mmvet_csv_layout_matches_stored(shared_dir, tmp_path):
    results = shared_dir / "llava-eval" / "mm-vet" / "results"
    for name in ("llava-v1.5-13b_gpt-4-cap-score-1runs.csv", "llava-v1.5-13b_gpt-4-cap-int-score-1runs.csv"):
        text = (results / name).read_text()
        header, row = list(csv.reader(text.splitlines()))
        values = {h: (v if h == "runs" else float(v)) for h, v in zip(header[1:], row[1:])}
        eval_mmvet.write_row_csv(tmp_path / name, row[0], values)
        assert (tmp_path / name).read_text() == text


def test_mmvet_aggregate_by_capability_by_hand():
    caps = {"a": ["rec"], "b": ["rec", "ocr"], "c": ["ocr", "rec"], "d": ["know", "gen", "rec"]}
    scores = {"a": [1.0, 0.5], "b": [0.0, 0.5], "c": [0.5, 0.5], "d": [1.0, 1.0]}
    cap_row, combo_row = eval_mmvet.aggregate(scores, caps)
    assert list(cap_row) == ["rec", "ocr", "know", "gen", "total", "std", "runs"]
    # run totals: (1+0+.5+1)/4 = 62.5 and (.5+.5+.5+1)/4 = 62.5
    assert cap_row["rec"] == 62.5 and cap_row["ocr"] == 37.5 and cap_row["know"] == 100.0
    assert (cap_row["total"], cap_row["std"], cap_row["runs"]) == (62.5, 0.0, "[62.5, 62.5]")
    assert list(combo_row) == ["rec_ocr", "rec", "rec_know_gen", "total", "std", "runs"]
    assert combo_row["rec_ocr"] == 37.5 and combo_row["rec"] == 75.0 and combo_row["rec_know_gen"] == 100.0
    cap_row, _ = eval_mmvet.aggregate({"a": [1.0, 0.0], "b": [0.0, 0.0]}, {"a": ["x"], "b": ["y"]})
    assert (cap_row["total"], cap_row["std"], cap_row["runs"]) == (25.0, 25.0, "[50.0, 0.0]")
    with pytest.raises(ValueError, match="same"):
        eval_mmvet.aggregate({"a": [1.0], "b": [0.0, 1.0]}, {"a": ["x"], "b": ["y"]})


def test_eval_mmvet_end_to_end(fake, tmp_path, capfd):
    data = {f"v1_{i}": {"imagename": f"v1_{i}.png", "capability": caps, "question": f"Q{i}?", "answer": ans}
            for i, (caps, ans) in enumerate([(["rec"], "cat"), (["ocr", "rec"], "1<OR>one"), (["ocr"], "dog")])}
    (tmp_path / "mm-vet.json").write_text(json.dumps(data))
    (tmp_path / "mymodel.json").write_text(json.dumps({"v1_0": "a cat", "v1_1": "one", "v1_2": "a cow"}))
    grades = {"a cat": "1.0", "one": "0.5", "a cow": "zero"}  # "zero" never parses: re-asked, then 0.0
    fake.respond = lambda body: ok(grades[body["messages"][0]["content"].split(" | ")[-2]])
    argv = ["--mmvet-data", str(tmp_path / "mm-vet.json"), "--result-file", str(tmp_path / "mymodel.json"),
            "--output-dir", str(tmp_path / "out"), "--judge-model", "gpt-4-0613", "--base-url", fake.base_url,
            "--api-key", KEY, "--num-run", "2", "--score-file", str(tmp_path / "score.json")]
    cap_row = eval_mmvet.main(argv)
    assert len(fake.bodies) == 2 * (1 + 1 + 6)
    assert cap_row["total"] == 50.0 and cap_row["rec"] == 75.0 and cap_row["ocr"] == 25.0
    grade_file = json.loads((tmp_path / "out" / "mymodel_gpt-4-0613-grade-2runs.json").read_text())
    assert grade_file["v1_1"] == {"model": ["gpt-4-0613-dated"] * 2, "content": ["0.5"] * 2, "score": [0.5, 0.5]}
    assert grade_file["v1_2"]["score"] == [0.0, 0.0] and grade_file["v1_2"]["content"] == ["zero", "zero"]
    assert (tmp_path / "out" / "mymodel_gpt-4-0613-cap-score-2runs.csv").read_text().splitlines() == \
        [",rec,ocr,total,std,runs", "mymodel,75.0,25.0,50.0,0.0,\"[50.0, 50.0]\""]
    assert json.loads((tmp_path / "score.json").read_text())["score"] == 50.0
    assert eval_mmvet.main(argv) == cap_row and len(fake.bodies) == 16  # all cached
    assert KEY not in "".join(capfd.readouterr())
    (tmp_path / "mymodel.json").write_text(json.dumps({"v1_0": "a cat"}))
    with pytest.raises(InputError, match=r"mymodel\.json: no answer for 2 question\(s\), e\.g\. v1_1, v1_2"):
        eval_mmvet.main(argv)
