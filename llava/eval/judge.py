"""OpenAI-compatible judging engine shared by the GPT-graded scorers (video QA, MM-Vet).

One policy owns every retry: the openai client's own retries are off; transient failures (429, 5xx,
timeouts, dropped connections, a 200 whose body is not a chat completion) back off exponentially with
jitter; a reply that fails the caller's parser is re-asked a bounded number of times. Whatever goes wrong
with one item ends as a recorded failure of that item, never an aborted run; only errors that would hit
every item alike (bad key, unknown model) stop it.

``timeout`` bounds each request as a whole, from connecting to the last byte: the client's own timeout
bounds each socket read only, so a server trickling bytes could hold a request for ever.

The API key (``--api-key`` and ``$OPENAI_API_KEY``) is redacted from every reply and error message before
anything parses, prints or writes it, so a server that echoes the key cannot leak it into results or logs.

Each finished item is cached as one JSON file named from its id and the run's context (judge model, prompt
version), so a rerun only judges what is missing or changed; failures are reported (and listed in the cache
folder's ``failures.json``), never cached. A run whose score would cover only part of the items writes no
score unless ``--allow-partial`` (:class:`Tally`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn, Sequence, TypeVar

import openai
from tqdm import tqdm

from llava.eval.utils import InputError, check_coverage, read_json, write_json

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
# Retried with back-off (plus every 5xx): the same request may succeed later.
RETRYABLE_STATUS = frozenset({408, 409, 429})
# A bad key, missing access or an unknown model would fail every item alike: stop the run.
FATAL_STATUS = frozenset({401, 403, 404})
REDACTED = "<api-key>"
# Shorter "keys" (a local server's "EMPTY") guard nothing, and replacing them would corrupt replies.
MIN_SECRET_LENGTH = 8
FAILURES_FILE = "failures.json"
SHOWN_FAILURES = 10

P = TypeVar("P")
T = TypeVar("T")


class MalformedReply(ValueError):
    """Raised by a reply parser: the judge answered, but not in the required form."""


class JudgeError(RuntimeError):
    """One item could not be judged within the retry budget; it is recorded as a failure."""


class FatalJudgeError(InputError):
    """An error that would hit every item alike (bad key, unknown model); it stops the run as a user error."""


class _NotACompletion(ValueError):
    """A 200 reply whose body is not a chat completion with text content (an HTML page, ``null``, ...)."""


class _Overdue(Exception):
    """A request did not finish within its deadline."""


def make_client(base_url: str | None = None, api_key: str | None = None,
                timeout: float = 60.0) -> openai.OpenAI:
    """An ``openai.OpenAI`` client with its own retries disabled (ours are the only policy)."""
    key = api_key or os.environ.get(API_KEY_ENV)
    key_source = "--api-key" if api_key else f"${API_KEY_ENV}"
    if not key:
        raise InputError(f"no API key: pass --api-key or set {API_KEY_ENV}")
    if key != key.strip() or any(c.isspace() for c in key):
        # The key itself is never printed: only where the whitespace sits.
        where = "ends with" if key[-1].isspace() else "starts with" if key[0].isspace() else "contains"
        raise InputError(f"the API key from {key_source} {where} whitespace (e.g. a '\\r' from a file saved on "
                         "Windows); remove it")
    url = base_url or os.environ.get(BASE_URL_ENV) or None
    if url is not None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            source = "--base-url" if base_url else f"${BASE_URL_ENV}"
            raise InputError(f"{source} {url!r}: expected an http(s) URL with a host, e.g. https://api.openai.com/v1")
    return openai.OpenAI(api_key=key, base_url=url, timeout=timeout, max_retries=0)


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: retry ``k`` (from 0) waits uniform(d/2, d), d = min(cap, base·2^k)."""

    retries: int = 6
    base_s: float = 1.0
    cap_s: float = 60.0
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.retries < 0 or self.base_s < 0 or self.cap_s < 0:
            raise InputError(f"back-off settings must be >= 0, got {self}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt``; a server's Retry-After is honoured up to the cap."""
        d = min(self.cap_s, self.base_s * 2 ** attempt)
        # Jitter keeps concurrent workers that failed together from retrying in lockstep.
        d = random.uniform(d / 2, d)
        if retry_after is not None:
            d = max(d, min(retry_after, self.cap_s))
        return d


@dataclass(frozen=True)
class Reply:
    """A judge reply: its text and the model name the server reports (dated, unlike aliases)."""

    content: str
    model: str


def _retry_after(response: Any) -> float | None:
    try:
        return float(response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def _within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``, or :class:`_Overdue` once ``seconds`` have passed without it returning.

    A blocked socket read cannot be interrupted from outside, so an overdue call is abandoned: it runs in a
    daemon thread, which never holds up the exit, and ends on its own (reply dropped) when the server
    finishes, stops or stalls for one read timeout.
    """
    done = threading.Event()
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # handed to the waiting thread, which re-raises it
            outcome.append((False, e))
        finally:
            done.set()

    threading.Thread(target=run, name="judge-request", daemon=True).start()
    if not done.wait(seconds):
        raise _Overdue(f"no complete reply within {seconds:g} s")
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def _completion(body: str) -> tuple[str, Any]:
    """The first choice's text and the reported model of a chat-completion body; a null content is ``""``."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise _NotACompletion(f"reply body is not JSON: {body[:200]!r}") from None
    choices = doc.get("choices") if isinstance(doc, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), (str, type(None))):
        raise _NotACompletion(f"reply body is not a chat completion with text content: {body[:200]!r}")
    return message.get("content") or "", doc.get("model")


class Judge:
    """Sends chat completions to one model under the retry policy; safe to share across threads."""

    def __init__(self, model: str, *, client: openai.OpenAI | None = None, base_url: str | None = None,
                 api_key: str | None = None, timeout: float = 60.0, backoff: Backoff = Backoff(),
                 parse_attempts: int = 3) -> None:
        if parse_attempts < 1:
            raise InputError(f"parse_attempts must be >= 1, got {parse_attempts}")
        if not timeout > 0:
            raise InputError(f"timeout must be > 0 seconds, got {timeout}")
        self.model = model
        self.timeout = timeout
        self.backoff = backoff
        self.parse_attempts = parse_attempts
        self._client = client
        self._client_args = (base_url, api_key, timeout)
        self._lock = threading.Lock()
        # Every key this process might send, longest first so that a key containing another goes whole.
        secrets = {api_key, os.environ.get(API_KEY_ENV), client.api_key if client is not None else None}
        self._secrets = sorted((s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH), key=len, reverse=True)

    @property
    def client(self) -> openai.OpenAI:
        """The client, made on first use so that a fully cached rerun needs no key."""
        with self._lock:
            if self._client is None:
                self._client = make_client(*self._client_args)
            return self._client

    def redact(self, text: str) -> str:
        """``text`` with every API key replaced by :data:`REDACTED`."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def chat(self, messages: list[dict], **params: Any) -> Reply:
        """One completion; transient errors are retried with back-off, then raise :class:`JudgeError`."""
        completions = self.client.chat.completions

        def request() -> str:
            # The raw body, parsed here: the client's own parsing accepts any JSON (or none) as a completion.
            raw = completions.with_raw_response.create(model=self.model, messages=messages, **params)
            return raw.http_response.text

        for attempt in range(self.backoff.retries + 1):
            retry_after = None
            try:
                # Redacted before parsing, and before any message quotes (and cuts) the body.
                content, model = _completion(self.redact(_within(self.timeout, request)))
            except openai.APIStatusError as e:
                error = self.redact(f"{type(e).__name__}: {e}")
                if e.status_code in FATAL_STATUS:
                    raise FatalJudgeError(error) from None
                if e.status_code not in RETRYABLE_STATUS and e.status_code < 500:
                    raise JudgeError(error) from None
                retry_after = _retry_after(e.response)
            except openai.APIConnectionError as e:  # includes APITimeoutError
                error = self.redact(f"{type(e).__name__}: {e}")
            except openai.APIError as e:
                raise JudgeError(self.redact(f"{type(e).__name__}: {e}")) from None
            except (_Overdue, _NotACompletion) as e:  # a proxy's error page or a stalled server may recover
                error = str(e)
            else:
                # Redacted again: a key written with JSON escapes only shows once decoded.
                reported = self.redact(model) if isinstance(model, str) and model else self.model
                return Reply(self.redact(content), reported)
            if attempt < self.backoff.retries:
                self.backoff.sleep(self.backoff.delay(attempt, retry_after))
        raise JudgeError(f"gave up after {self.backoff.retries + 1} attempts; last error: {error}")

    def ask(self, messages: list[dict], parse: Callable[[str], T], **params: Any) -> tuple[T, Reply]:
        """Ask until ``parse`` accepts the reply, at most ``parse_attempts`` times."""
        for _ in range(self.parse_attempts):
            reply = self.chat(messages, **params)
            try:
                return parse(reply.content), reply
            except MalformedReply as e:
                last = e
        raise JudgeError(f"reply still malformed after {self.parse_attempts} attempts: {last}")


def prompt_sha256(*parts: Any) -> str:
    """A version of a judge prompt: the sha256 of its texts (and settings), so that any edit shows."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=True).encode()).hexdigest()


def cache_path(cache_dir: str | os.PathLike, item_id: str, context: Mapping[str, Any]) -> Path:
    """``<cache_dir>/<prefix>-<hash>.json``, the cache file of ``item_id`` judged under ``context``.

    The prefix, the id's first 40 characters with any but ``A-Za-z0-9._-`` made ``_``, is for people reading
    the folder; the hash (16 hex digits of the sha256 of id and context) makes names unique, even on
    case-insensitive file systems. So any id (long, with slashes, non-ASCII) names a short valid file, and
    another judge model or prompt version gets files of its own.
    """
    key = json.dumps([item_id, context], sort_keys=True, ensure_ascii=True)
    prefix = re.sub(r"[^A-Za-z0-9._-]", "_", item_id[:40]).lstrip(".")
    return Path(cache_dir) / f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparing with a cache file."""
    return json.loads(json.dumps(obj))


@dataclass
class RunReport:
    """Outcome of :func:`judge_many`: results in input order, failures by id with their reason."""

    results: dict[str, Any]
    failures: dict[str, str]
    cached: int
    judged: int


def judge_many(items: Mapping[str, P], judge_one: Callable[[P], Any], cache_dir: str | os.PathLike, *,
               context: Mapping[str, Any], is_valid: Callable[[Any], bool] | None = None, workers: int = 8,
               desc: str = "judging") -> RunReport:
    """Judge every item not already cached, ``workers`` at a time.

    ``judge_one(payload)`` returns a JSON-serialisable result or raises :class:`JudgeError` (recorded as a
    failure, not cached). A cache file is reused only if it was written for the same id, ``context`` and
    payload (so a changed prediction is judged again) and ``is_valid`` accepts its result. All file names are
    fixed before the first request. The failures of the run are written to ``<cache_dir>/failures.json``
    (removed by a run without any). Any other exception stops the run.
    """
    context = _plain(context)
    paths = {item_id: cache_path(cache_dir, item_id, context) for item_id in items}
    results: dict[str, Any] = {}
    todo = []
    for item_id, payload in items.items():
        if paths[item_id].is_file():
            entry = read_json(paths[item_id])
            if (isinstance(entry, dict) and entry.get("id") == item_id and entry.get("context") == context
                    and entry.get("payload") == _plain(payload) and "result" in entry
                    and (is_valid is None or is_valid(entry["result"]))):
                results[item_id] = entry["result"]
                continue
        todo.append(item_id)
    n_cached = len(results)
    failures: dict[str, str] = {}
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    if todo:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(judge_one, items[i]): i for i in todo}
            try:
                for fut in tqdm(as_completed(futures), total=len(futures), desc=desc):
                    item_id = futures[fut]
                    try:
                        result = fut.result()
                    except JudgeError as e:
                        failures[item_id] = str(e)
                        continue
                    # Written as each item finishes, so an interrupted run keeps its progress.
                    write_json(paths[item_id], {"id": item_id, "context": context, "payload": items[item_id],
                                                "result": result})
                    results[item_id] = result
            except BaseException:
                # A fatal error (or Ctrl-C) must not leave queued items calling the API.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    failures_file = Path(cache_dir) / FAILURES_FILE
    if failures:
        write_json(failures_file, {i: failures[i] for i in items if i in failures}, indent=1)
    else:
        failures_file.unlink(missing_ok=True)
    ordered = {i: results[i] for i in items if i in results}
    return RunReport(ordered, {i: failures[i] for i in items if i in failures}, n_cached, len(todo) - len(failures))


@dataclass
class Tally:
    """What a judge run covered: of the ``expected`` ids, ``judged`` have a result and ``failures`` failed
    (id -> reason); the rest had no prediction to judge."""

    expected: Sequence[str]
    judged: Sequence[str]
    failures: Mapping[str, str]

    @property
    def skipped(self) -> list[str]:
        done = set(self.judged) | set(self.failures)
        return [i for i in self.expected if i not in done]

    @property
    def complete(self) -> bool:
        return not self.failures and not self.skipped

    def line(self) -> str:
        """The last line of every judge run."""
        return f"judged {len(self.judged)}, failed {len(self.failures)}, skipped {len(self.skipped)} (no prediction)"

    def partial(self, source: str) -> dict | None:
        """The ``write_score(partial=...)`` record (printing a PARTIAL warning), or None when complete."""
        return check_coverage(self.expected, self.judged, source, allow_partial=True)

    def refuse(self, failure_files: Sequence[Path]) -> NoReturn:
        """Explain why no score was written and how to finish, print :meth:`line`, exit with status 1."""
        if self.failures:
            print(f"{len(self.failures)} item(s) failed (not cached):", file=sys.stderr)
            for item_id, reason in list(self.failures.items())[:SHOWN_FAILURES]:
                print(f"  {item_id}: {reason}", file=sys.stderr)
            if len(self.failures) > SHOWN_FAILURES:
                print(f"  ... and {len(self.failures) - SHOWN_FAILURES} more", file=sys.stderr)
            print(f"  all reasons: {', '.join(map(str, failure_files))}", file=sys.stderr)
        if self.skipped:
            head = ", ".join(map(repr, self.skipped[:3]))
            print(f"{len(self.skipped)} item(s) have no prediction, e.g. {head}", file=sys.stderr)
        print("PARTIAL: no score file written (--allow-partial writes one, marked partial). Rerunning the same "
              "command asks only the failed items again (and any whose prediction appeared since); the "
              f"{len(self.judged)} judged item(s) are cached and not re-asked.", file=sys.stderr)
        sys.stderr.flush()
        print(self.line())
        sys.exit(1)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_judge_args(parser: argparse.ArgumentParser, default_model: str) -> None:
    """The flags every judged scorer shares."""
    parser.add_argument("--judge-model", default=default_model,
                        help=f"judge model; prefer a dated snapshot over an alias (default {default_model})")
    parser.add_argument("--base-url", default=None,
                        help=f"OpenAI-compatible API base URL (default: ${BASE_URL_ENV} or api.openai.com)")
    parser.add_argument("--api-key", default=None,
                        help=f"API key (default: ${API_KEY_ENV}; the variable keeps it out of the process list)")
    parser.add_argument("--workers", type=positive_int, default=8, help="concurrent requests (default 8)")
    parser.add_argument("--max-retries", type=int, default=6,
                        help="retries per request on 429/5xx/timeouts/connection errors/unusable replies (default 6)")
    parser.add_argument("--timeout", type=positive_float, default=60.0,
                        help="seconds one request may take in all, connecting to last byte (default 60)")


def judge_from_args(args: argparse.Namespace, parse_attempts: int = 3) -> Judge:
    """A :class:`Judge` configured from :func:`add_judge_args` flags."""
    return Judge(args.judge_model, base_url=args.base_url, api_key=args.api_key, timeout=args.timeout,
                 backoff=Backoff(retries=args.max_retries), parse_attempts=parse_attempts)
