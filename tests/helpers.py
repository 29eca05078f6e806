"""Test helpers: a logits processor that scripts gpt-oss's output, and a local image server."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor


class ScriptedLogits(LogitsProcessor):
    """Force generation to emit `script`, one token per step, then leave the scores alone.

    The step counter runs across `generate` calls, so a continued generation picks up the script
    where the previous call stopped.
    """

    def __init__(self, script: list[int]):
        self.script = list(script)
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        position = self.step
        self.step += 1
        if position >= len(self.script):
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.script[position]] = 0.0
        return forced


def harmony_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a harmony string, special tokens included."""
    return tokenizer.encode(text, add_special_tokens=False)


class ImageServer:
    """A real HTTP server on 127.0.0.1 that serves files of one folder and a few special routes:
    /status/<code> responds with that HTTP status, /slow/<name> waits before responding, and
    /huge sends more bytes than any sane image limit."""

    def __init__(self, folder: Path, slow_seconds: float = 3.0, huge_bytes: int = 8 * 1024 * 1024):
        self.folder = folder
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - name fixed by BaseHTTPRequestHandler
                server.requests.append(self.path)
                if self.path.startswith("/status/"):
                    self.send_error(int(self.path.rsplit("/", 1)[1]))
                    return
                if self.path == "/huge":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    chunk = b"\x00" * 65536
                    for _ in range(huge_bytes // len(chunk)):
                        try:
                            self.wfile.write(chunk)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                    return
                name = self.path.lstrip("/")
                if name.startswith("slow/"):
                    time.sleep(slow_seconds)
                    name = name.removeprefix("slow/")
                path = server.folder / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
