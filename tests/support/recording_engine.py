"""A recording engine double: a tiny real HTTP server that speaks the subset of vLLM's
OpenAI server the router uses, and records every request it gets.

It is NOT vLLM and computes nothing: it exists so router tests can assert the exact bodies
the router sends to its prefill and decode engines (kv_transfer_params included), relay of
streams byte for byte, and what happens when an engine fails, stalls or disappears.
Tests with real vLLM engines (engines/dualpath_vllm) are separate.

Speaks: POST /v1/completions and /v1/chat/completions (JSON or SSE when `stream`), POST
/tokenize (a deterministic word -> id map), GET /metrics (vLLM's gauge names), GET
/v1/models. Knobs: `fail_next(status, body)`, `chunk_delay_s`, `running`/`waiting`/
`kv_usage`/`num_gpu_blocks` for /metrics. `stop()` closes the port (connections refused).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BLOCK_SIZE = 64


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float
    # The bytes the engine answered (the whole SSE stream for a streamed answer).
    sent: bytes = b""
    # True when the client hung up before the answer was fully written.
    aborted: bool = False


@dataclass
class EngineKnobs:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    num_gpu_blocks: int = 1000
    # Delay before each SSE chunk (and before a JSON answer).
    chunk_delay_s: float = 0.0
    # (status, JSON body) answered to the next completions call(s), then cleared.
    failures: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def word_ids(text: str) -> list[int]:
    """The double's tokenizer: one id per whitespace-separated word (stable crc32)."""
    return [zlib.crc32(word.encode()) % 50_000 for word in text.split()]


def answer_tokens(body: dict[str, Any]) -> int:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return int(limit) if isinstance(limit, int) else 4


class RecordingEngine:
    def __init__(self, engine_id: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.engine_id = engine_id
        self.knobs = EngineKnobs()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def setup(self) -> None:
                super().setup()
                with engine._lock:
                    engine._connections.add(self.connection)

            def finish(self) -> None:
                with engine._lock:
                    engine._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, engine.metrics_text().encode(), "text/plain; version=0.0.4")
                elif self.path == "/v1/models":
                    models = {"object": "list", "data": [{"id": "tiny", "object": "model"}]}
                    self._send(200, json.dumps(models).encode(), "application/json")
                else:
                    self._send(404, b'{"error": {"message": "not found"}}', "application/json")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, b'{"error": {"message": "bad json"}}', "application/json")
                    return
                record = Recorded(
                    self.path, body, {k.lower(): v for k, v in self.headers.items()}, time.time()
                )
                with engine._lock:
                    engine.requests.append(record)
                if self.path == "/tokenize":
                    self._tokenize(body, record)
                elif self.path in ("/v1/completions", "/v1/chat/completions"):
                    self._complete(body, record)
                else:
                    self._send(404, b'{"error": {"message": "not found"}}', "application/json")

            def _tokenize(self, body: dict[str, Any], record: Recorded) -> None:
                if "messages" in body:
                    text = " ".join(
                        f"<{m.get('role')}> {m.get('content') or ''}" for m in body["messages"]
                    )
                    if body.get("add_generation_prompt", True):
                        text += " <assistant>"
                else:
                    text = str(body.get("prompt", ""))
                tokens = word_ids(text)
                answer = {"count": len(tokens), "max_model_len": 4096, "tokens": tokens}
                record.sent = json.dumps(answer).encode()
                self._send(200, record.sent, "application/json")

            def _complete(self, body: dict[str, Any], record: Recorded) -> None:
                with engine._lock:
                    failure = engine.knobs.failures.pop(0) if engine.knobs.failures else None
                if failure is not None:
                    status, error = failure
                    record.sent = json.dumps(error).encode()
                    self._send(status, record.sent, "application/json")
                    return
                chat = self.path.endswith("chat/completions")
                n = answer_tokens(body)
                with engine._lock:
                    engine.knobs.running += 1
                try:
                    if body.get("stream"):
                        self._stream(chat, n, record)
                    else:
                        time.sleep(engine.knobs.chunk_delay_s)
                        words = " ".join(f"{engine.engine_id}-t{i}" for i in range(n))
                        record.sent = json.dumps(engine.answer(chat, words, n)).encode()
                        self._send(200, record.sent, "application/json")
                finally:
                    with engine._lock:
                        engine.knobs.running -= 1

            def _stream(self, chat: bool, n: int, record: Recorded) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                events = [
                    engine.stream_event(chat, f" {engine.engine_id}-t{i}", i) for i in range(n)
                ]
                events.append(b"data: [DONE]\n\n")
                try:
                    for event in events:
                        time.sleep(engine.knobs.chunk_delay_s)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                        self.wfile.flush()
                        record.sent += event
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:  # the router hung up (its client did)
                    record.aborted = True
                    self.close_connection = True

            def _send(self, status: int, data: bytes, ctype: str) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"engine-{engine_id}", daemon=True
        )
        self._thread.start()
        self.stopped = False

    # ----- what tests look at ---------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def completions(self) -> list[Recorded]:
        return [r for r in self.calls() if r.path.startswith("/v1/")]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def fail_next(self, status: int, error: dict[str, Any], times: int = 1) -> None:
        with self._lock:
            self.knobs.failures.extend([(status, error)] * times)

    # ----- answers ----------------------------------------------------------------------------
    def answer(self, chat: bool, text: str, n: int) -> dict[str, Any]:
        usage = {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length"}
            kind = "text_completion"
        return {
            "id": f"{self.engine_id}-answer",
            "object": kind,
            "model": "tiny",
            "choices": [choice],
            "usage": usage,
            "kv_transfer_params": None,
        }

    def stream_event(self, chat: bool, text: str, i: int) -> bytes:
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text}
            kind = "text_completion"
        event = {"id": f"{self.engine_id}-answer", "object": kind, "choices": [choice], "n": i}
        return f"data: {json.dumps(event)}\n\n".encode()

    def metrics_text(self) -> str:
        k = self.knobs
        labels = 'engine="0",model_name="tiny"'
        return (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {k.running}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {k.waiting}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} {k.kv_usage}\n"
            "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
            "# TYPE vllm:cache_config_info gauge\n"
            f'vllm:cache_config_info{{block_size="{BLOCK_SIZE}",engine="0",'
            f'num_gpu_blocks="{k.num_gpu_blocks}",enable_prefix_caching="True"}} 1.0\n'
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{{{labels}}} 0.0\n"
        )

    # ----- lifetime ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Close the port: connections to it are refused from now on."""
        if not self.stopped:
            self.stopped = True
            self._httpd.shutdown()
            self._httpd.server_close()
            with self._lock:  # kept-alive connections too: the engine is gone
                for conn in self._connections:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
            self._thread.join(timeout=5)

    def __enter__(self) -> RecordingEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
