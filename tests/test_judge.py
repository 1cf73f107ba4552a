"""The GPT judging engine and the judged scorers (video QA, MM-Vet), driven through the real
``openai`` client against a scriptable fake server on 127.0.0.1."""
from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest

from llava.eval import eval_mmvet
from llava.eval.judge import (Backoff, FatalJudgeError, Judge, JudgeError, MalformedReply, cache_path, judge_many,
                              make_client)
from llava.eval.provenance import fingerprint
from llava.eval.utils import InputError, cli
from llava.eval.video import eval_video_qa as vqa

KEY = "sk-test-SECRET-7f3a9c"
GOOD = "{'pred': 'yes', 'score': 4}"


@dataclass(frozen=True)
class Action:
    """One scripted response: a completion whose content is ``text`` (status 200) or an error with message ``text``.

    ``body`` replaces the whole JSON payload (a broken completion); ``trickle_s`` sends the whole response, status
    line included, one byte at a time with that pause between bytes (until the server stops).
    """

    status: int = 200
    text: str = GOOD
    delay: float = 0.0
    body: bytes | None = None
    content_type: str = "application/json"
    trickle_s: float = 0.0


def ok(text: str = GOOD, delay: float = 0.0) -> Action:
    return Action(200, text, delay)


def fail(status: int, message: str = "scripted failure") -> Action:
    return Action(status, message)


def raw(body: bytes | str, content_type: str = "application/json") -> Action:
    return Action(body=body.encode() if isinstance(body, str) else body, content_type=content_type)


def completion(message, model: str = "judge-model-dated") -> str:
    """A chat-completion body whose first choice carries ``message`` as given (any JSON value)."""
    return json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                       "choices": [{"index": 0, "finish_reason": "stop", "message": message}]})


class FakeOpenAI:
    """``POST /v1/chat/completions``: scripted actions are served first, then ``respond(body)``."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self.paths: list[str] = []
        self.queue: deque[Action] = deque()
        self.respond: Callable[[dict], Action] = lambda body: ok()
        self.stopping = threading.Event()
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
                action = action or fake.respond(body)
                status, text = action.status, action.text
                if self.path != "/v1/chat/completions":
                    status, text = 404, f"no route {self.path}"
                fake.stopping.wait(action.delay)
                if action.body is not None and status == 200:
                    data = action.body
                elif status == 200:
                    data = completion({"role": "assistant", "content": text}, body["model"] + "-dated").encode()
                else:
                    data = json.dumps({"error": {"message": text, "type": "test", "param": None,
                                                 "code": None}}).encode()
                # HTTP/1.0, one request per connection (as BaseHTTPRequestHandler speaks by default).
                head = (f"HTTP/1.0 {status} Scripted\r\nContent-Type: {action.content_type}\r\n"
                        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
                try:
                    if not action.trickle_s:
                        self.wfile.write(head + data)
                        return
                    for byte in head + data:
                        if fake.stopping.wait(action.trickle_s):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first
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
    server.stopping.set()
    server.httpd.shutdown()
    server.httpd.server_close()


def make_judge(fake: FakeOpenAI, sleeps: list | None = None, retries: int = 3, timeout: float = 5.0,
               parse_attempts: int = 3) -> Judge:
    sleep = sleeps.append if sleeps is not None else (lambda s: None)
    return Judge("judge-model", base_url=fake.base_url, api_key=KEY, timeout=timeout,
                 backoff=Backoff(retries=retries, base_s=1.0, cap_s=8.0, sleep=sleep), parse_attempts=parse_attempts)


MESSAGES = [{"role": "user", "content": "grade this"}]
CONTEXT = {"judge_model": "judge-model", "prompt_sha256": "p1"}


def judge_video(fake: FakeOpenAI, items: dict, cache_dir, **kwargs):
    """``judge_many`` over video QA items with the CLI's judge function and cache rules."""
    judge = make_judge(fake, **kwargs)
    return judge_many(items, lambda qa: vqa.judge_item(judge, qa), cache_dir, context=CONTEXT,
                      is_valid=vqa.is_valid_result, workers=2)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# --- engine ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, env, message", [
    ({"base_url": "api.openai.com/v1", "api_key": "sk-test"}, {}, r"--base-url 'api.openai.com/v1': expected an http"),
    ({"api_key": "sk-test"}, {"OPENAI_BASE_URL": "localhost:8000"}, r"\$OPENAI_BASE_URL 'localhost:8000'"),
    ({"api_key": "sk-test\r"}, {}, r"API key from --api-key ends with whitespace"),
    ({}, {"OPENAI_API_KEY": " sk-test"}, r"API key from \$OPENAI_API_KEY starts with whitespace"),
])
def test_bad_url_or_key_is_named_before_any_request(monkeypatch, kwargs, env, message):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=message) as err:
        make_client(**kwargs)
    assert "sk-test" not in str(err.value)


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


def test_always_malformed_is_a_bounded_uncached_failure(fake, tmp_path):
    fake.respond = lambda body: ok("I think yes.")
    items = {"a": {"q": "q", "a": "x", "pred": "x"}}
    report = judge_video(fake, items, tmp_path, parse_attempts=3)
    assert list(report.failures) == ["a"] and "malformed after 3 attempts" in report.failures["a"]
    assert report.results == {} and report.judged == 0
    assert len(fake.bodies) == 3
    assert not cache_path(tmp_path, "a", CONTEXT).exists()
    assert json.loads((tmp_path / "failures.json").read_text()) == report.failures
    # The failure was not cached as a success: a later run judges it again.
    fake.respond = lambda body: ok()
    report = judge_video(fake, items, tmp_path)
    assert report.failures == {} and report.judged == 1 and len(fake.bodies) == 4
    assert not (tmp_path / "failures.json").exists()


UNUSABLE_BODIES = {
    "not JSON": raw("upstream connect error", "text/plain"),
    "HTML page": raw("<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"),
    "JSON that is no completion": raw("[1, 2]"),
    "null message": raw(completion(None)),
    "numeric content": raw(completion({"role": "assistant", "content": 5})),
    "no choices": raw(json.dumps({"id": "c1", "choices": []})),
}


@pytest.mark.parametrize("kind", UNUSABLE_BODIES)
def test_unusable_200_body_is_a_bounded_item_failure(fake, tmp_path, kind):
    fake.respond = lambda body: UNUSABLE_BODIES[kind]
    items = {f"v_{i}": {"q": f"q{i}", "a": "a", "pred": "a"} for i in range(3)}
    sleeps: list[float] = []
    report = judge_video(fake, items, tmp_path, sleeps=sleeps, retries=2)
    assert report.results == {} and list(report.failures) == list(items)
    assert all(re.search(r"gave up after 3 attempts.*(not JSON|not a chat completion)", r)
               for r in report.failures.values()), report.failures
    assert len(fake.bodies) == 3 * 3 and len(sleeps) == 3 * 2  # re-asked with back-off, then given up
    # The next good reply is taken.
    fake.queue.append(UNUSABLE_BODIES[kind])
    fake.respond = lambda body: ok()
    parsed, _ = make_judge(fake).ask(MESSAGES, vqa.parse_reply)
    assert parsed == {"pred": "yes", "score": 4} and len(fake.bodies) == 9 + 2


def test_null_content_is_an_empty_reply(fake):
    fake.queue.extend([raw(completion({"role": "assistant", "content": None})), ok()])
    parsed, _ = make_judge(fake).ask(MESSAGES, vqa.parse_reply)  # "" does not parse: re-asked
    assert parsed == {"pred": "yes", "score": 4} and len(fake.bodies) == 2


def test_timeout_bounds_the_whole_request(fake):
    # One byte every 50 ms: each read is quick, but the ~300-byte response would take ~15 s.
    fake.respond = lambda body: Action(trickle_s=0.05)
    judge = make_judge(fake, retries=0, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"no complete reply within 0\.5 s"):
        judge.chat(MESSAGES)
    assert time.monotonic() - start < 1.5
    # An overdue request is retried like any timeout; the retry's deadline is its own.
    fake.queue.append(Action(trickle_s=0.05))
    fake.respond = lambda body: ok()
    start = time.monotonic()
    parsed, _ = make_judge(fake, retries=1, timeout=0.5).ask(MESSAGES, vqa.parse_reply)
    assert parsed["pred"] == "yes" and time.monotonic() - start < 1.5


def test_key_in_replies_and_reported_model_is_redacted(fake, monkeypatch):
    env_key = "sk-env-OTHER-5e1d2b4c"
    monkeypatch.setenv("OPENAI_API_KEY", env_key)
    fake.queue.append(raw(completion({"role": "assistant", "content": f"{KEY} and {env_key}"}, model=KEY)))
    judge = make_judge(fake)  # sends KEY; the variable's key is redacted all the same
    reply = judge.chat(MESSAGES)
    assert reply.content == "<api-key> and <api-key>" and reply.model == "<api-key>"
    # Written with JSON escapes, the key only shows once decoded.
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    fake.queue.append(raw('{"model": "m", "choices": [{"message": {"content": "%s"}}]}' % escaped))
    assert judge.chat(MESSAGES).content == "<api-key>"
    # Error bodies quoting the key (cut at 200 characters) show no part of it.
    fake.queue.append(raw("x" * 190 + KEY, "text/html"))
    with pytest.raises(JudgeError) as info:
        make_judge(fake, retries=0).chat(MESSAGES)
    assert KEY[:5] not in str(info.value) and "<api-key>" in str(info.value)


def test_cache_makes_rerun_free_and_refreshes_stale_items(fake, tmp_path):
    items = {f"v_{i}": {"q": f"q{i}", "a": "a", "pred": "p"} for i in range(5)}
    report = judge_video(fake, items, tmp_path)
    assert report.judged == 5 and len(fake.bodies) == 5
    assert list(report.results) == list(items)  # input order, whatever the completion order
    entry = json.loads(cache_path(tmp_path, "v_3", CONTEXT).read_text())
    assert entry == {"id": "v_3", "context": CONTEXT, "payload": items["v_3"],
                     "result": {"reply": {"pred": "yes", "score": 4}, "model": "judge-model-dated"}}
    report = judge_video(fake, items, tmp_path)
    assert report.cached == 5 and report.judged == 0 and len(fake.bodies) == 5
    items["v_1"] = {"q": "q1", "a": "a", "pred": "changed"}
    report = judge_video(fake, items, tmp_path)
    assert report.cached == 4 and report.judged == 1 and len(fake.bodies) == 6


def test_cached_result_out_of_range_is_judged_again(fake, tmp_path):
    items = {"v_0": {"q": "q", "a": "a", "pred": "p"}}
    for reply in ({"pred": "yes", "score": 1000}, {"pred": "unknown", "score": 3}, {"pred": "yes", "score": -50}):
        cache_path(tmp_path, "v_0", CONTEXT).write_text(json.dumps(
            {"id": "v_0", "context": CONTEXT, "payload": items["v_0"], "result": {"reply": reply, "model": "m"}}))
        report = judge_video(fake, items, tmp_path)
        assert report.cached == 0 and report.results["v_0"]["reply"] == {"pred": "yes", "score": 4}


def test_any_id_names_a_short_safe_cache_file(fake, tmp_path):
    ids = ["x" * 300, "a/b", "..", "", "é ü/😀", "A", "a", "nul\0byte", "v_1.json"]
    items = {i: {"q": "q", "a": "a", "pred": "p"} for i in ids}
    names = {cache_path(tmp_path, i, CONTEXT).name for i in ids}
    assert len(names) == len(ids)  # distinct, even where only the case differs
    assert all(len(n) <= 64 and re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", n) for n in names), names
    assert cache_path(tmp_path, "x" * 300, CONTEXT).name.startswith("x" * 40 + "-")  # readable prefix
    assert cache_path(tmp_path, "a", {**CONTEXT, "judge_model": "other"}) != cache_path(tmp_path, "a", CONTEXT)
    report = judge_video(fake, items, tmp_path)
    assert report.failures == {} and report.judged == len(ids) and len(fake.bodies) == len(ids)
    assert {p.name for p in tmp_path.iterdir()} == names
    report = judge_video(fake, items, tmp_path)
    assert report.cached == len(ids) and len(fake.bodies) == len(ids)  # nothing is paid twice


def test_broken_cache_file_is_named(tmp_path):
    cache_path(tmp_path, "x", CONTEXT).write_text("{broken")
    with pytest.raises(InputError, match=re.escape(cache_path(tmp_path, "x", CONTEXT).name)):
        judge_many({"x": 1}, lambda p: p, tmp_path, context=CONTEXT)


def test_fatal_error_stops_the_run_and_key_is_redacted(fake, tmp_path):
    fake.respond = lambda body: fail(401, f"Incorrect API key provided: {KEY}")
    items = {str(i): {"q": "q", "a": "a", "pred": "p"} for i in range(20)}
    judge = make_judge(fake)
    with pytest.raises(FatalJudgeError) as info:
        judge_many(items, lambda qa: vqa.judge_item(judge, qa), tmp_path, context=CONTEXT, workers=1)
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
                                  "{'pred': 'yes', 'score': true}", "{'pred': 'yes', 'score': True}", "",
                                  # verdicts other than exactly yes/no (upstream: substring match)
                                  "{'pred': 'correct', 'score': 5}", "{'pred': 'wrong', 'score': 0}",
                                  "{'pred': 'unknown', 'score': 2}", "{'pred': \"I don't know\", 'score': 2}",
                                  "{'pred': 'yes, nothing wrong', 'score': 2}", "{'pred': 'no.', 'score': 1}",
                                  # scores outside 0..5, or no number
                                  "{'pred': 'yes', 'score': 1000}", "{'pred': 'no', 'score': -50}",
                                  "{'pred': 'yes', 'score': 5.5}", "{'pred': 'no', 'score': -0.5}",
                                  "{'pred': 'yes', 'score': 1e999}", "{'pred': 'yes', 'score': '4.8'}",
                                  "{'pred': 'yes', 'score': '1000'}", "{'pred': 'yes', 'score': None}",
                                  "{'pred': 'yes', 'score': 4, 'x': {1}}"])
def test_parse_reply_rejects(text):
    with pytest.raises(MalformedReply):
        vqa.parse_reply(text)


def test_parse_reply_accepts_python_and_json_dicts():
    assert vqa.parse_reply("{'pred': 'no', 'score': 4.8}") == {"pred": "no", "score": 4.8}
    assert vqa.parse_reply('{"pred": "yes", "score": "3"}') == {"pred": "yes", "score": "3"}
    assert vqa.parse_reply("{'pred': ' Yes ', 'score': 0}") == {"pred": " Yes ", "score": 0}
    assert vqa.parse_reply("{'pred': 'NO', 'score': 5, 'reason': 'x'}")["pred"] == "NO"


def test_verdict_outside_yes_no_is_re_asked_then_a_failure(fake, tmp_path):
    fake.queue.extend([ok("{'pred': 'correct', 'score': 5}"), ok("{'pred': 'unknown', 'score': 1}"),
                       ok("{'pred': 'no', 'score': 1000}")])
    items = {"v_0": {"q": "q", "a": "a", "pred": "p"}}
    report = judge_video(fake, items, tmp_path, parse_attempts=3)
    assert report.results == {}
    assert re.search(r"malformed after 3 attempts: 'score' must be a number in 0-5", report.failures["v_0"])
    assert len(fake.bodies) == 3


def test_aggregate_matches_hand_computation():
    replies = [
        {"pred": "yes", "score": 5},
        {"pred": "Yes", "score": 4.8},      # int(4.8) = 4
        {"pred": "no", "score": 1},
        {"pred": " NO ", "score": 0},
        {"pred": "yes", "score": "3"},     # int("3") = 3
    ]
    out = vqa.aggregate(replies)
    assert (out["yes"], out["no"], out["count"]) == (3, 2, 5)
    assert out["accuracy"] == pytest.approx(60.0)
    assert out["score"] == pytest.approx((5 + 4 + 1 + 0 + 3) / 5)
    with pytest.raises(ValueError):
        vqa.aggregate([])
    for bad in ({"pred": "unknown", "score": 2}, {"pred": "yes", "score": 1000}, {"pred": "maybe", "score": 3}):
        with pytest.raises(ValueError):  # never silently counted (nor left out)
            vqa.aggregate([*replies, bad])


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
    gt_path = tmp_path / "test_a_8.json"
    gt_path.write_text(json.dumps([{"answer": answers[q["question_id"]], "type": 3, "question_id": q["question_id"]}
                                   for q in questions]))
    lines = []
    manifest = {"format": "fastervlm-run/1", "settings": {"visual_token_num": 26}, "environment": {}, "chunk": {},
                "info": {}}
    manifest["fingerprint"] = fingerprint(manifest)
    for i, q in enumerate(questions):
        gt = answers[q["question_id"]]
        # Half the predictions are right; every line carries a misaligned answer that the GT join must replace.
        lines.append({"id": q["question_id"], "question": q["question"], "answer": "WRONG",
                      "pred": gt if i % 2 == 0 else "zebra", "metadata": {"manifest": manifest["fingerprint"]}})
    random.Random(1).shuffle(lines)
    pred_path = tmp_path / "merge.jsonl"
    pred_path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "merge.jsonl.manifest.json").write_text(json.dumps(manifest))
    fake.respond = _exact_match_judge
    argv = ["--pred-path", str(pred_path), "--output-dir", str(tmp_path / "gpt"), "--output-json",
            str(tmp_path / "results.json"), "--judge-model", "gpt-3.5-turbo-0125", "--base-url", fake.base_url,
            "--api-key", KEY, "--workers", "4", "--gt-file-answers", str(gt_path),
            "--benchmark", "msvd", "--score-file", str(tmp_path / "score.json")]
    summary = vqa.main(argv)
    assert (summary["yes"], summary["no"], summary["count"]) == (4, 4, 8)
    assert summary["accuracy"] == 50.0 and summary["score"] == 3.0
    assert len(fake.bodies) == 8 and {b["model"] for b in fake.bodies} == {"gpt-3.5-turbo-0125"}
    assert all("temperature" not in b for b in fake.bodies)  # upstream sends none
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == [x["id"] for x in lines]
    context = vqa.cache_context("gpt-3.5-turbo-0125")
    for q in questions:
        reply, qa = results[q["question_id"]]
        assert qa == {"q": q["question"], "a": answers[q["question_id"]], "pred": qa["pred"]}
        entry = json.loads(cache_path(tmp_path / "gpt", q["question_id"], context).read_text())
        assert entry["result"] == {"reply": reply, "model": "gpt-3.5-turbo-0125-dated"} and entry["payload"] == qa
    score = json.loads((tmp_path / "score.json").read_text())
    assert score["benchmark"] == "msvd" and score["score"] == 50.0 and score["details"]["score"] == 3.0
    assert score["details"]["judge_model"] == "gpt-3.5-turbo-0125"
    assert score["details"]["judge_models_reported"] == ["gpt-3.5-turbo-0125-dated"]
    assert score["partial"] is None and score["manifest"] == manifest and score["answers_file"] == str(pred_path)
    out, err = capfd.readouterr()
    assert "Accuracy: 50.00\n" in out and "Average score: 3.00\n" in out and "PARTIAL" not in out + err
    assert last_line(out) == "judged 8, failed 0, skipped 0 (no prediction)"
    assert "8 prediction line(s) carry an answer that differs" in err
    assert KEY not in out + err
    # A stale file in the output folder is not aggregated; the rerun sends no request.
    (tmp_path / "gpt" / "stale.json").write_text(json.dumps([{"pred": "no", "score": 0}, {}]))
    assert vqa.main(argv) == summary and len(fake.bodies) == 8


def _video_files(tmp_path, n: int, gt_extra: int = 0):
    """A prediction file of ``n`` items (v_0 ...) and a ground truth with ``gt_extra`` more questions."""
    pred_path = tmp_path / "merge.jsonl"
    pred_path.write_text("".join(json.dumps({"id": f"v_{i}", "question": f"q{i}", "pred": "a"}) + "\n"
                                 for i in range(n)))
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps([{"answer": "a", "type": 3, "question_id": f"v_{i}"} for i in range(n + gt_extra)]))
    return pred_path, gt_path


def _video_argv(fake, tmp_path, pred_path, gt_path, *extra: str) -> list[str]:
    return ["--pred-path", str(pred_path), "--gt-file-answers", str(gt_path), "--output-dir", str(tmp_path / "gpt"),
            "--output-json", str(tmp_path / "r.json"), "--base-url", fake.base_url, "--api-key", KEY,
            "--workers", "2", "--max-retries", "0", "--benchmark", "tgif", "--score-file", str(tmp_path / "s.json"),
            *extra]


def test_eval_video_qa_partial_run_refuses_a_score_and_reruns_only_the_failed(fake, tmp_path, capfd):
    pred_path, gt_path = _video_files(tmp_path, 4, gt_extra=1)  # v_4 has no prediction
    broken = {"Question: q1": raw("<html>Bad Gateway</html>", "text/html"),
              "Question: q2": fail(400, f"bad request for {KEY}")}
    fake.respond = lambda body: next((a for q, a in broken.items() if q in body["messages"][1]["content"]), ok())
    argv = _video_argv(fake, tmp_path, pred_path, gt_path)
    with pytest.raises(SystemExit) as info:
        vqa.main(argv)
    assert info.value.code == 1
    out, err = capfd.readouterr()
    assert last_line(out) == "judged 2, failed 2, skipped 1 (no prediction)"
    assert "Accuracy: 100.00 (PARTIAL: 2 of 5 items)" in out
    assert "v_1: gave up after 1 attempts; last error: reply body is not JSON: '<html>" in err
    assert "v_2: BadRequestError" in err and "'v_4'" in err and "not re-asked" in err
    assert KEY not in out + err and "<api-key>" in err
    assert not (tmp_path / "s.json").exists() and list(json.loads((tmp_path / "r.json").read_text())) == ["v_0", "v_3"]
    assert set(json.loads((tmp_path / "gpt" / "failures.json").read_text())) == {"v_1", "v_2"}
    # The server recovers: only the two failures are asked again, and --allow-partial writes a marked score.
    broken.clear()
    assert len(fake.bodies) == 4
    summary = vqa.main(argv + ["--allow-partial"])
    assert len(fake.bodies) == 6 and summary["count"] == 4
    out, err = capfd.readouterr()
    assert last_line(out) == "judged 4, failed 0, skipped 1 (no prediction)"
    assert "WARNING: PARTIAL score: 1 of 5 questions" in err
    score = json.loads((tmp_path / "s.json").read_text())
    assert score["partial"] == {"answered": 4, "expected": 5, "missing": 1} and score["score"] == 100.0


def test_eval_video_qa_unusable_verdicts_are_failures_not_data(fake, tmp_path, capfd):
    pred_path, gt_path = _video_files(tmp_path, 3)
    replies = {"q0": "{'pred': 'yes', 'score': 5}", "q1": "{'pred': 'correct', 'score': 5}",
               "q2": "{'pred': 'no', 'score': -50}"}
    fake.respond = lambda body: ok(replies[re.search(r"Question: (\w+)", body["messages"][1]["content"]).group(1)])
    with pytest.raises(SystemExit):
        vqa.main(_video_argv(fake, tmp_path, pred_path, gt_path, "--max-parse-attempts", "2"))
    out, err = capfd.readouterr()
    assert len(fake.bodies) == 1 + 2 + 2
    assert last_line(out) == "judged 1, failed 2, skipped 0 (no prediction)"
    assert "Accuracy: 100.00 (PARTIAL: 1 of 3 items)" in out and "Average score: 5.00 (PARTIAL" in out
    assert "v_1: reply still malformed after 2 attempts: 'pred' must be 'yes' or 'no', got 'correct'" in err
    assert "v_2: reply still malformed after 2 attempts: 'score' must be a number in 0-5, got -50" in err


def test_eval_video_qa_cache_is_keyed_by_judge_model_and_prompt(fake, tmp_path, monkeypatch):
    pred_path, gt_path = _video_files(tmp_path, 3)
    argv = _video_argv(fake, tmp_path, pred_path, gt_path)
    vqa.main(argv + ["--judge-model", "judge-a"])
    assert len(fake.bodies) == 3
    vqa.main(argv + ["--judge-model", "judge-b"])
    assert len(fake.bodies) == 6 and {b["model"] for b in fake.bodies[3:]} == {"judge-b"}
    details = json.loads((tmp_path / "s.json").read_text())["details"]
    assert details["judge_model"] == "judge-b" and details["judge_models_reported"] == ["judge-b-dated"]
    vqa.main(argv + ["--judge-model", "judge-a"])  # each model keeps its own cache
    assert len(fake.bodies) == 6
    assert json.loads((tmp_path / "s.json").read_text())["details"]["judge_models_reported"] == ["judge-a-dated"]
    monkeypatch.setattr(vqa, "SYSTEM_PROMPT", vqa.SYSTEM_PROMPT + " Be strict.")
    vqa.main(argv + ["--judge-model", "judge-a"])
    assert len(fake.bodies) == 9 and fake.bodies[-1]["messages"][0]["content"].endswith("Be strict.")


def test_eval_video_qa_key_echoed_in_replies_is_written_nowhere(fake, tmp_path, capfd, monkeypatch):
    env_key = "sk-env-OTHER-5e1d2b4c"
    monkeypatch.setenv("OPENAI_API_KEY", env_key)
    pred_path, gt_path = _video_files(tmp_path, 2)
    fake.respond = lambda body: raw(completion(
        {"role": "assistant", "content": f"{{'pred': 'yes', 'score': 4, 'note': '{KEY} {env_key}'}}"}, model=KEY))
    vqa.main(_video_argv(fake, tmp_path, pred_path, gt_path))
    out, err = capfd.readouterr()
    written = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    for text in (out, err, written):
        assert KEY not in text and env_key not in text
    assert json.loads((tmp_path / "r.json").read_text())["v_0"][0]["note"] == "<api-key> <api-key>"


def test_eval_video_qa_cli_errors_are_one_line(fake, tmp_path, capsys, monkeypatch):
    pred_path, gt_path = _video_files(tmp_path, 2)
    pred_path.write_text(pred_path.read_text() + json.dumps({"id": "v_0", "question": "q", "pred": "b"}) + "\n")
    monkeypatch.setattr(sys, "argv", ["eval_video_qa", *_video_argv(fake, tmp_path, pred_path, gt_path)])
    with pytest.raises(SystemExit) as info:
        cli(vqa.main)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and "merge.jsonl:3: duplicate id 'v_0'" in err
    assert "Traceback" not in err and fake.bodies == []
    # A key the server refuses stops the run the same way.
    pred_path, gt_path = _video_files(tmp_path, 2)
    fake.respond = lambda body: fail(401, f"Incorrect API key provided: {KEY}")
    with pytest.raises(SystemExit) as info:
        cli(vqa.main)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "\nerror: AuthenticationError" in err and "Traceback" not in err
    assert KEY not in err


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


MMVET_CAPS = [(["rec"], "cat"), (["ocr", "rec"], "1<OR>one"), (["ocr"], "dog")]


def _mmvet_files(tmp_path, answers: dict) -> list[str]:
    """The annotation of :data:`MMVET_CAPS`, a submission with ``answers``, and the CLI's file arguments."""
    data = {f"v1_{i}": {"imagename": f"v1_{i}.png", "capability": caps, "question": f"Q{i}?", "answer": ans}
            for i, (caps, ans) in enumerate(MMVET_CAPS)}
    (tmp_path / "mm-vet.json").write_text(json.dumps(data))
    (tmp_path / "mymodel.json").write_text(json.dumps(answers, indent=2))
    return ["--mmvet-data", str(tmp_path / "mm-vet.json"), "--result-file", str(tmp_path / "mymodel.json"),
            "--output-dir", str(tmp_path / "out")]


def test_eval_mmvet_end_to_end(fake, tmp_path, capfd, monkeypatch):
    files = _mmvet_files(tmp_path, {"v1_0": "a cat", "v1_1": "one", "v1_2": "a cow"})
    grades = {"a cat": "1.0", "one": "0.5", "a cow": "zero"}  # "zero" never parses: re-asked, then 0.0
    fake.respond = lambda body: ok(grades[body["messages"][0]["content"].split(" | ")[-2]])
    argv = [*files, "--judge-model", "gpt-4-0613", "--base-url", fake.base_url,
            "--api-key", KEY, "--num-run", "2", "--score-file", str(tmp_path / "score.json")]
    cap_row = eval_mmvet.main(argv)
    assert len(fake.bodies) == 2 * (1 + 1 + 6)
    assert cap_row["total"] == 50.0 and cap_row["rec"] == 75.0 and cap_row["ocr"] == 25.0
    grade_file = json.loads((tmp_path / "out" / "mymodel_gpt-4-0613-grade-2runs.json").read_text())
    assert grade_file["v1_1"] == {"model": ["gpt-4-0613-dated"] * 2, "content": ["0.5"] * 2, "score": [0.5, 0.5]}
    assert grade_file["v1_2"]["score"] == [0.0, 0.0] and grade_file["v1_2"]["content"] == ["zero", "zero"]
    assert (tmp_path / "out" / "mymodel_gpt-4-0613-cap-score-2runs.csv").read_text().splitlines() == \
        [",rec,ocr,total,std,runs", "mymodel,75.0,25.0,50.0,0.0,\"[50.0, 50.0]\""]
    score = json.loads((tmp_path / "score.json").read_text())
    assert score["score"] == 50.0 and score["partial"] is None and score["answers_file"] == files[3]
    assert score["details"]["judge_models_reported"] == ["gpt-4-0613-dated"]
    assert eval_mmvet.main(argv) == cap_row and len(fake.bodies) == 16  # all cached
    out, err = capfd.readouterr()
    assert KEY not in out + err and last_line(out) == "judged 3, failed 0, skipped 0 (no prediction)"
    # Another judge model is graded afresh, as is an edited re-ask prompt.
    eval_mmvet.main([*argv, "--judge-model", "gpt-4-other", "--num-run", "1"])
    assert len(fake.bodies) == 24
    monkeypatch.setattr(eval_mmvet, "REASK_SUFFIX", "\nThe correctness (digit): ")
    eval_mmvet.main([*argv, "--judge-model", "gpt-4-other", "--num-run", "1"])
    assert len(fake.bodies) == 32 and fake.bodies[-1]["messages"][0]["content"].endswith("(digit): ")


def test_eval_mmvet_partial_runs_refuse_a_score(fake, tmp_path, capfd):
    files = _mmvet_files(tmp_path, {"v1_0": "a cat", "v1_1": "one"})  # v1_2 has no answer
    fake.respond = lambda body: (raw(completion(None)) if "| one |" in body["messages"][0]["content"] else ok("1.0"))
    argv = [*files, "--base-url", fake.base_url, "--api-key", KEY, "--max-retries", "0", "--num-run", "2",
            "--score-file", str(tmp_path / "score.json")]
    with pytest.raises(SystemExit) as info:
        eval_mmvet.main(argv)
    assert info.value.code == 1
    out, err = capfd.readouterr()
    assert last_line(out) == "judged 1, failed 1, skipped 1 (no prediction)"
    assert "PARTIAL (1 of 3 questions graded)" in out and "total: 100.0" in out
    assert "v1_1: run 0: gave up after 1 attempts; last error: reply body is not a chat completion" in err
    assert "'v1_2'" in err and not (tmp_path / "score.json").exists()
    assert not list((tmp_path / "out").glob("*.csv")) and not list((tmp_path / "out").glob("*-grade-*"))
    fake.respond = lambda body: ok("0.5")
    eval_mmvet.main([*argv, "--allow-partial"])
    out, err = capfd.readouterr()
    assert last_line(out) == "judged 2, failed 0, skipped 1 (no prediction)"
    assert len(fake.bodies) == 2 + 2 + 2  # v1_0 and v1_1 in both runs, then only v1_1 in both again
    score = json.loads((tmp_path / "score.json").read_text())
    assert score["partial"] == {"answered": 2, "expected": 3, "missing": 1} and score["score"] == 75.0


def test_eval_mmvet_grades_outside_0_1_are_never_data(fake, tmp_path):
    files = _mmvet_files(tmp_path, {"v1_0": "a cat", "v1_1": "one", "v1_2": "a cow"})
    fake.respond = lambda body: ok("1000")
    argv = [*files, "--base-url", fake.base_url, "--api-key", KEY, "--judge-model", "m"]
    cap_row = eval_mmvet.main(argv)  # re-asked as upstream; six replies that are no grade make a 0.0
    assert cap_row["total"] == 0.0 and len(fake.bodies) == 3 * 6
    # A cached grade outside [0, 1] (an edited or old file) is graded again.
    path = next((tmp_path / "out" / "mymodel_m-cache" / "run0").glob("v1_0-*.json"))
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "result": {**entry["result"], "score": 1000}}))
    fake.respond = lambda body: ok("0.9")
    assert eval_mmvet.main(argv)["total"] == 30.0 and len(fake.bodies) == 3 * 6 + 1
    with pytest.raises(ValueError, match="outside"):
        eval_mmvet.aggregate({"a": [1000.0]}, {"a": ["rec"]})


def test_eval_mmvet_key_echoed_in_replies_is_written_nowhere(fake, tmp_path, capfd):
    files = _mmvet_files(tmp_path, {"v1_0": "a cat", "v1_1": "one", "v1_2": "a cow"})
    fake.respond = lambda body: ok(KEY)  # never a grade: stored as the last reply's content, as upstream
    eval_mmvet.main([*files, "--base-url", fake.base_url, "--api-key", KEY, "--judge-model", "m"])
    written = "".join(p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert KEY not in written + "".join(capfd.readouterr()) and "<api-key>" in written


def test_eval_mmvet_input_errors(tmp_path):
    files = _mmvet_files(tmp_path, {})
    (tmp_path / "mymodel.json").write_text('{\n  "v1_0": "a",\n  "v1_1": "b",\n  "v1_0": "c"\n}\n')
    with pytest.raises(InputError, match=r"mymodel\.json:4: duplicate id 'v1_0'"):
        eval_mmvet.main(files)
    (tmp_path / "mymodel.json").write_text(json.dumps({"v1_0": "a", "v1_9": "b"}))
    with pytest.raises(InputError, match=r"1 answer\(s\) to questions not in the annotation, e\.g\. 'v1_9'"):
        eval_mmvet.main(files)
    (tmp_path / "mymodel.json").write_text(json.dumps({"v1_0": 3}))
    with pytest.raises(InputError, match="v1_0 must be a string"):
        eval_mmvet.main(files)
