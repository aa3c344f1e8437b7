"""Start a real headless ComfyUI (main.py) with this pack loaded, for the tests and the demo.

The server gets its own base directory (models/, input/, output/, user/, custom_nodes/), so it
never touches the user's folders. The pack is linked into <base>/custom_nodes; extra folders of
custom nodes (e.g. the tests' test-only nodes) are added through --extra-model-paths-config with a
``custom_nodes:`` entry, the way ComfyUI's own execution tests do it.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from .comfy_env import PACK_ROOT, cuda_available, default_comfy_dir
from .comfy_http import ComfyClient, ComfyError

PACK_LINK_NAME = "comfyui-refany3d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI process. Use as a context manager, or call start()/stop()."""

    def __init__(self, base_dir: str | Path, comfy_dir: str | Path | None = None,
                 extra_custom_nodes: list[str | Path] = (), port: int | None = None,
                 python: str | None = None, env: dict | None = None, extra_args: list[str] = ()):
        self.comfy_dir = Path(comfy_dir) if comfy_dir else default_comfy_dir()
        self.base_dir = Path(base_dir).resolve()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_custom_nodes = [Path(p).resolve() for p in extra_custom_nodes]
        self.python = python or sys.executable
        self.env = env
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "comfyui.log"
        self.client = ComfyClient(self.url)

    # folders of this server
    models_dir = property(lambda self: self.base_dir / "models")
    input_dir = property(lambda self: self.base_dir / "input")
    output_dir = property(lambda self: self.base_dir / "output")

    def _prepare(self) -> list[str]:
        if not (self.comfy_dir / "main.py").exists():
            raise FileNotFoundError(f"no ComfyUI at {self.comfy_dir}: run `make setup` first")
        for sub in ("custom_nodes", "models", "input/3d", "output", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_LINK_NAME
        if not link.exists():
            link.symlink_to(PACK_ROOT, target_is_directory=True)
        args = [self.python, "-u", str(self.comfy_dir / "main.py"),
                "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base_dir),
                "--disable-auto-launch", "--dont-print-server",
                "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}"]
        if self.extra_custom_nodes:
            cfg = self.base_dir / "extra_model_paths.yaml"
            lines = ["refany3d_extra:", f"  base_path: {self.base_dir}", "  custom_nodes: |"]
            lines += [f"    {p}" for p in self.extra_custom_nodes]
            cfg.write_text("\n".join(lines) + "\n")
            args += ["--extra-model-paths-config", str(cfg)]
        if not cuda_available():
            args.append("--cpu")
        return args + self.extra_args

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        args = self._prepare()
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with code {self.proc.returncode} during start-up:\n{self.log_text()[-5000:]}")
            try:
                self.client.object_info("KSampler")
                return self
            except ComfyError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ComfyError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_text()[-5000:]}")
            time.sleep(0.25)  # polling for start-up, not timing

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output_files(self, result, node_id: str, key: str = "images") -> list[Path]:
        """Paths of the files a SaveImage-like node wrote for ``result``."""
        files = []
        for rec in self.client.output_records(result, node_id, key):
            root = {"output": self.output_dir, "temp": self.base_dir / "temp", "input": self.input_dir}[rec.get("type", "output")]
            files.append(root / rec.get("subfolder", "") / rec["filename"])
        return files

    def __getattr__(self, name):
        # object_info, upload, submit, run, history, interrupt, download… come from the client
        if name.startswith("_") or name == "client":
            raise AttributeError(name)
        return getattr(self.client, name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
