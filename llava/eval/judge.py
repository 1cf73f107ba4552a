"""OpenAI-compatible judging engine shared by the GPT-graded scorers (video QA, MM-Vet).

One policy owns every retry: the openai client's own retries are off, transient transport
errors (429, 5xx, timeouts, dropped connections) back off exponentially with jitter, and a
reply that fails the caller's parser is re-asked a bounded number of times. Each finished
item is cached as one JSON file, so a rerun only judges what is missing; items that still
fail are reported, never cached.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import openai
from tqdm import tqdm

from llava.eval.utils import InputError, read_json, write_json

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
# Retried with back-off (plus every 5xx): the same request may succeed later.
RETRYABLE_STATUS = frozenset({408, 409, 429})
# A bad key, missing access or an unknown model would fail every item alike: stop the run.
FATAL_STATUS = frozenset({401, 403, 404})

P = TypeVar("P")
T = TypeVar("T")


class MalformedReply(ValueError):
    """Raised by a reply parser: the judge answered, but not in the required form."""


class JudgeError(RuntimeError):
    """One item could not be judged within the retry budget; it is recorded as a failure."""


class FatalJudgeError(RuntimeError):
    """An error that would hit every item alike (bad key, unknown model); it stops the run."""


def make_client(base_url: str | None = None, api_key: str | None = None,
                timeout: float = 60.0) -> openai.OpenAI:
    """An ``openai.OpenAI`` client with its own retries disabled (ours are the only policy)."""
    key = api_key or os.environ.get(API_KEY_ENV)
    if not key:
        raise InputError(f"no API key: pass --api-key or set {API_KEY_ENV}")
    return openai.OpenAI(api_key=key, base_url=base_url or os.environ.get(BASE_URL_ENV) or None,
                         timeout=timeout, max_retries=0)


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


class Judge:
    """Sends chat completions to one model under the retry policy; safe to share across threads."""

    def __init__(self, model: str, *, client: openai.OpenAI | None = None, base_url: str | None = None,
                 api_key: str | None = None, timeout: float = 60.0, backoff: Backoff = Backoff(),
                 parse_attempts: int = 3) -> None:
        if parse_attempts < 1:
            raise InputError(f"parse_attempts must be >= 1, got {parse_attempts}")
        self.model = model
        self.backoff = backoff
        self.parse_attempts = parse_attempts
        self._client = client
        self._client_args = (base_url, api_key, timeout)
        self._lock = threading.Lock()

    @property
    def client(self) -> openai.OpenAI:
        """The client, made on first use so that a fully cached rerun needs no key."""
        with self._lock:
            if self._client is None:
                self._client = make_client(*self._client_args)
            return self._client

    def _redact(self, text: str) -> str:
        # Servers may echo the key in error bodies; failure messages get printed.
        key = self._client.api_key if self._client is not None else None
        return text.replace(key, "<api-key>") if key else text

    def chat(self, messages: list[dict], **params: Any) -> Reply:
        """One completion; transient errors are retried with back-off, then raise :class:`JudgeError`."""
        for attempt in range(self.backoff.retries + 1):
            try:
                resp = self.client.chat.completions.create(model=self.model, messages=messages, **params)
            except openai.APIStatusError as e:
                msg = self._redact(f"{type(e).__name__}: {e}")
                if e.status_code in FATAL_STATUS:
                    raise FatalJudgeError(msg) from None
                if e.status_code not in RETRYABLE_STATUS and e.status_code < 500:
                    raise JudgeError(msg) from None
                error, retry_after = msg, _retry_after(e.response)
            except openai.APIConnectionError as e:  # includes APITimeoutError
                error, retry_after = self._redact(f"{type(e).__name__}: {e}"), None
            except openai.APIError as e:  # e.g. a 200 whose body is not a completion
                raise JudgeError(self._redact(f"{type(e).__name__}: {e}")) from None
            else:
                content = resp.choices[0].message.content if resp.choices else None
                return Reply(content or "", resp.model or self.model)
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


@dataclass
class RunReport:
    """Outcome of :func:`judge_many`: results in input order, failures by id with their reason."""

    results: dict[str, Any]
    failures: dict[str, str]
    cached: int
    judged: int


def cache_path(cache_dir: str | os.PathLike, item_id: str) -> Path:
    """``<cache_dir>/<item_id>.json``; an id that cannot be a plain file name is an input error."""
    if not item_id or item_id in (".", "..") or any(c in item_id for c in "/\\\0"):
        raise InputError(f"item id {item_id!r} cannot name a cache file")
    return Path(cache_dir) / f"{item_id}.json"


def judge_many(items: Mapping[str, P], judge_one: Callable[[P], Any], cache_dir: str | os.PathLike, *,
               workers: int = 8, is_fresh: Callable[[P, Any], bool] | None = None,
               desc: str = "judging") -> RunReport:
    """Judge every item not already cached, ``workers`` at a time.

    ``judge_one(payload)`` returns a JSON-serialisable result or raises :class:`JudgeError`
    (recorded as a failure, not cached). A cached result for which ``is_fresh(payload, cached)``
    is false (e.g. the prediction changed) is judged again. Any other exception stops the run.
    """
    results: dict[str, Any] = {}
    todo = []
    for item_id, payload in items.items():
        path = cache_path(cache_dir, item_id)
        if path.is_file():
            cached = read_json(path)
            if is_fresh is None or is_fresh(payload, cached):
                results[item_id] = cached
                continue
        todo.append(item_id)
    n_cached = len(results)
    failures: dict[str, str] = {}
    if todo:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
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
                    write_json(cache_path(cache_dir, item_id), result)
                    results[item_id] = result
            except BaseException:
                # A fatal error (or Ctrl-C) must not leave queued items calling the API.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    if failures:
        print(f"{len(failures)} item(s) failed and were not cached; rerun to retry only them:", file=sys.stderr)
        for item_id, reason in list(failures.items())[:10]:
            print(f"  {item_id}: {reason}", file=sys.stderr)
        if len(failures) > 10:
            print(f"  ... and {len(failures) - 10} more", file=sys.stderr)
    ordered = {i: results[i] for i in items if i in results}
    return RunReport(ordered, failures, n_cached, len(todo) - len(failures))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
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
                        help="retries per request on 429/5xx/timeouts/connection errors (default 6)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")


def judge_from_args(args: argparse.Namespace, parse_attempts: int = 3) -> Judge:
    """A :class:`Judge` configured from :func:`add_judge_args` flags."""
    return Judge(args.judge_model, base_url=args.base_url, api_key=args.api_key, timeout=args.timeout,
                 backoff=Backoff(retries=args.max_retries), parse_attempts=parse_attempts)
