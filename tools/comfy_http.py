"""A small client for ComfyUI's HTTP/WebSocket API (standard library + optional websocket-client).

Used by the tests, the demo and the command-line client (tools/client.py). It speaks only the
public API a user's script would use: POST /prompt, GET /history, GET /view, POST /upload/image,
POST /interrupt, GET /object_info and the /ws message stream.
"""
from __future__ import annotations

import http.client
import json
import mimetypes
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DONE_TYPES = ("execution_success", "execution_error", "execution_interrupted")


class ComfyError(RuntimeError):
    """The server could not be reached or answered with an error."""


class ProtocolError(ComfyError):
    """The server answered, but not as ComfyUI does (not JSON, a missing field, a connection closed mid-answer,
    a /ws that is not a websocket): a proxy in the way, or not a ComfyUI."""


class PromptRejected(ComfyError):
    """The server refused the graph at validation: POST /prompt answered 400, or 200 with
    ``node_errors`` (some outputs failed validation; the prompt was taken off the queue again).
    ``body`` is the server's JSON; the message lists the server's per-node messages."""

    def __init__(self, status: int, body):
        self.status = status
        self.body = body
        super().__init__(f"prompt rejected at validation: {describe_rejection(body)}")


class UploadRejected(ComfyError):
    """POST /upload/image answered with a client error (413: larger than the server's
    --max-upload-size; 400: a name or folder it refuses)."""

    def __init__(self, status: int, filename: str, size: int, text: str):
        self.status, self.filename, self.size = status, filename, size
        if status == 413:
            why = (f"{filename} ({size / 1e6:.1f} MB) is larger than the server accepts: start ComfyUI with a "
                   f"larger --max-upload-size (in MB; default 100), or make the file smaller")
        else:
            why = f"the server refused {filename}"
        super().__init__(f"upload refused (HTTP {status}): {why}" + (f" [{text.strip()}]" if text.strip() else ""))


def normalize_url(url: str) -> str:
    """``host:port`` (no scheme) means ``http://host:port``; the trailing slash is dropped."""
    url = url.strip()
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        url = "http://" + url
    return url.rstrip("/")


def describe_rejection(body) -> str:
    """The server's own words for a rejected prompt, one line per failing node input."""
    if not isinstance(body, dict):
        return str(body)
    lines = []
    err = body.get("error") or {}
    if isinstance(err, dict) and err:
        lines.append(f"{err.get('message', '')} {err.get('details', '')}".strip())
    elif body.get("node_errors"):  # HTTP 200: the outputs that validated were queued
        lines.append("Prompt outputs failed validation")
    for node_id, node_err in (body.get("node_errors") or {}).items():
        for e in node_err.get("errors", []):
            lines.append(f"node {node_id} ({node_err.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "; ".join(line for line in lines if line) or json.dumps(body)


def progress_text(frame: bytes) -> dict | None:
    """A binary /ws frame of type 3 (PromptServer.send_progress_text: the text the frontend shows on
    a node) as {"type": "progress_text", "data": {"node": id, "text": text}}; None for other frames."""
    if len(frame) < 8 or int.from_bytes(frame[:4], "big") != 3:
        return None
    n = int.from_bytes(frame[4:8], "big")
    node = frame[8:8 + n].decode("utf-8", errors="replace")
    return {"type": "progress_text", "data": {"node": node, "text": frame[8 + n:].decode("utf-8", errors="replace")}}


@dataclass
class RunResult:
    prompt_id: str
    status: str                      # "success" | "error" | "interrupted"
    outputs: dict = field(default_factory=dict)    # /history outputs, by node id
    messages: list = field(default_factory=list)   # every JSON message seen on /ws for this prompt
    error: dict | None = None        # the execution_error payload

    def progress(self) -> list[dict]:
        return [m["data"] for m in self.messages if m.get("type") == "progress"]

    def node_texts(self, node_id: str) -> list[str]:
        """The texts node ``node_id`` showed on itself during the run (progress_text frames)."""
        return [m["data"]["text"] for m in self.messages
                if m.get("type") == "progress_text" and m["data"].get("node") == str(node_id)]

    def error_text(self) -> str:
        if not self.error:
            return ""
        e = self.error
        return f"{e.get('node_type', '?')} (node {e.get('node_id', '?')}): {e.get('exception_type', '')}: {e.get('exception_message', '')}".strip()


class ComfyClient:
    def __init__(self, url: str = "http://127.0.0.1:8188", client_id: str | None = None, timeout: float = 30.0):
        self.url = normalize_url(url)
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout

    # --- plain HTTP -------------------------------------------------------------------------
    def _request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            try:
                return e.code, e.read()
            except (OSError, http.client.HTTPException):
                return e.code, b""
        except http.client.HTTPException as e:  # IncompleteRead, RemoteDisconnected, BadStatusLine...
            raise ProtocolError(f"ComfyUI at {self.url} broke off its answer to {method} {path.split('?')[0]} "
                                f"({type(e).__name__}{': ' + str(e) if str(e) else ''})") from None
        except (urllib.error.URLError, OSError) as e:
            raise ComfyError(f"ComfyUI at {self.url} is unreachable: {getattr(e, 'reason', e)}") from None

    def _json(self, method: str, path: str, payload=None):
        data = None if payload is None else json.dumps(payload).encode()
        status, body = self._request(method, path, data, {"Content-Type": "application/json"})
        try:
            parsed = json.loads(body) if body else None
        except json.JSONDecodeError:
            parsed = body.decode(errors="replace")
        return status, parsed

    def _expect(self, body, kind: type, what: str):
        """``body`` when it is a ``kind`` (a JSON object or list), else ProtocolError."""
        if not isinstance(body, kind):
            shown = (body if isinstance(body, str) else json.dumps(body))[:80]
            raise ProtocolError(f"ComfyUI at {self.url} answered {what} with {shown!r}, not what ComfyUI sends "
                                "(a proxy in the way, or not a ComfyUI server?)")
        return body

    def object_info(self, node_class: str | None = None) -> dict:
        status, body = self._json("GET", "/object_info" + (f"/{node_class}" if node_class else ""))
        if status != 200:
            raise ComfyError(f"GET /object_info answered {status}: {str(body)[:200]}")
        return self._expect(body, dict, "GET /object_info")

    def is_up(self) -> bool:
        try:
            status, _ = self._request("GET", "/system_stats")
            return status == 200
        except ComfyError:
            return False

    def upload(self, path: str | Path, subfolder: str = "3d", kind: str = "input", overwrite: bool = True) -> str:
        """Upload a file through POST /upload/image; returns the name a combo input takes ("3d/x.glb")."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts = []
        for name, value in (("subfolder", subfolder), ("type", kind), ("overwrite", "true" if overwrite else "false")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = self._request("POST", "/upload/image", b"".join(parts),
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if 400 <= status < 500:
            raise UploadRejected(status, path.name, path.stat().st_size, body.decode(errors="replace"))
        if status != 200:
            raise ComfyError(f"upload of {path.name} failed (HTTP {status}): {body.decode(errors='replace')}")
        try:
            info = json.loads(body)
        except ValueError:
            info = body.decode(errors="replace")
        info = self._expect(info, dict, "POST /upload/image")
        if not isinstance(info.get("name"), str) or not isinstance(info.get("subfolder", ""), str):
            raise ProtocolError(f"ComfyUI at {self.url} answered POST /upload/image without the file's name")
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def submit(self, graph: dict) -> str:
        """Queues ``graph``; returns its prompt id. A graph that fails validation raises
        PromptRejected, also when ComfyUI answers 200 and queues only the outputs that validated
        (their errors in ``node_errors``): such a prompt is taken off the queue again, since a
        script wants all of its outputs."""
        status, body = self._json("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})
        if status == 200 and isinstance(body, dict) and body.get("node_errors"):
            if body.get("prompt_id"):
                self.cancel(body["prompt_id"])
            raise PromptRejected(status, body)
        if status == 400:
            raise PromptRejected(status, body)
        if status != 200:
            raise ComfyError(f"POST /prompt answered {status}: {str(body)[:200]}")
        body = self._expect(body, dict, "POST /prompt")
        if not isinstance(body.get("prompt_id"), str):
            raise ProtocolError(f"ComfyUI at {self.url} answered POST /prompt without a prompt id")
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        status, body = self._json("GET", f"/history/{prompt_id}")
        if status != 200:
            raise ComfyError(f"GET /history answered {status}: {str(body)[:200]}")
        entry = self._expect(body or {}, dict, "GET /history").get(prompt_id)
        return None if entry is None else self._expect(entry, dict, "GET /history")

    def interrupt(self) -> None:
        self._json("POST", "/interrupt", {})

    def cancel(self, prompt_id: str) -> None:
        """Stops this prompt only: dropped from the queue, or interrupted if it is the one running."""
        try:
            self._json("POST", "/queue", {"delete": [prompt_id]})
            self._json("POST", "/interrupt", {"prompt_id": prompt_id})
        except ComfyError:
            pass

    def download(self, record: dict) -> bytes:
        """Bytes of one output file record ({"filename", "subfolder", "type"}) via GET /view."""
        query = urllib.parse.urlencode({k: record.get(k, "") for k in ("filename", "subfolder", "type")})
        status, body = self._request("GET", f"/view?{query}")
        if status != 200:
            raise ComfyError(f"GET /view?{query} answered {status}")
        return body

    # --- running a graph ----------------------------------------------------------------------
    def run(self, graph: dict, timeout: float = 600.0,
            on_message: Callable[[dict], None] | None = None,
            on_submitted: Callable[[str], None] | None = None) -> RunResult:
        """Submit ``graph`` and follow it to the end over /ws (or by polling /history without
        websocket-client). Raises PromptRejected on validation failure, TimeoutError on timeout."""
        try:
            import websocket  # websocket-client
        except ImportError:
            websocket = None
        if websocket is None:
            return self._run_polling(graph, timeout, on_submitted)

        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        try:
            ws = websocket.create_connection(ws_url, timeout=timeout)
        except websocket.WebSocketException as e:  # e.g. a proxy that answers /ws with 404
            raise ProtocolError(f"ComfyUI at {self.url} did not open its /ws websocket ({str(e).splitlines()[0]}): "
                                "a proxy in the way that does not pass websockets? Nothing was queued") from None
        except OSError as e:
            raise ComfyError(f"ComfyUI at {self.url} is unreachable: {e}") from None
        try:
            prompt_id = self.submit(graph)
            if on_submitted:
                on_submitted(prompt_id)
            messages: list[dict] = []
            deadline = time.monotonic() + timeout
            status, error = None, None
            while status is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
                ws.settimeout(remaining)
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s") from None
                except (websocket.WebSocketException, OSError) as e:
                    raise ProtocolError(f"ComfyUI at {self.url} closed the /ws stream while prompt {prompt_id} was "
                                        f"queued or running ({type(e).__name__}); it may still run there") from None
                if not isinstance(raw, str):
                    text = progress_text(raw)  # a text a node shows on itself; other frames are previews
                    if text is not None:
                        messages.append(text)
                        if on_message:
                            on_message(text)
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError:
                    msg = raw
                msg = self._expect(msg, dict, "a /ws message")
                data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if data.get("prompt_id") == prompt_id or msg.get("type") == "status":
                    messages.append(msg)
                    if on_message:
                        on_message(msg)
                kind = msg.get("type")
                if data.get("prompt_id") == prompt_id and kind in DONE_TYPES:
                    status = {"execution_success": "success", "execution_error": "error",
                              "execution_interrupted": "interrupted"}[kind]
                    error = data if kind == "execution_error" else None
        finally:
            ws.close()
        hist = self._wait_history(prompt_id, timeout=30)
        return RunResult(prompt_id, status, (hist or {}).get("outputs", {}), messages, error)

    def _wait_history(self, prompt_id: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            hist = self.history(prompt_id)
            if hist and hist.get("status", {}).get("completed") is not None:
                return hist
            if time.monotonic() > deadline:
                return hist
            time.sleep(0.1)  # waiting on the server to write history, not timing

    def _run_polling(self, graph: dict, timeout: float, on_submitted) -> RunResult:
        prompt_id = self.submit(graph)
        if on_submitted:
            on_submitted(prompt_id)
        deadline = time.monotonic() + timeout
        while True:
            hist = self.history(prompt_id)
            if hist and hist.get("status", {}).get("status_str") in ("success", "error"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
            time.sleep(0.5)
        messages = [{"type": m[0], "data": m[1]} for m in hist["status"].get("messages", [])]
        status, error = "success", None
        for m in messages:
            if m["type"] == "execution_error":
                status, error = "error", m["data"]
            elif m["type"] == "execution_interrupted":
                status = "interrupted"
        return RunResult(prompt_id, status, hist.get("outputs", {}), messages, error)

    @staticmethod
    def output_records(result: RunResult, node_id: str, key: str = "images") -> list[dict]:
        return list((result.outputs.get(str(node_id)) or {}).get(key, []))
