"""A real ComfyUI, headless on 127.0.0.1, with this pack installed, for the end-to-end tests.

The server runs from `COMFYUI_DIR` with `COMFYUI_PYTHON` in its own process session, with every
folder (custom_nodes, models, input, output, user) under one temporary base directory, and is
stopped through its process group. Nothing here touches the ComfyUI checkout itself.

`require` decides what a missing prerequisite does: skip on a developer's machine, fail under CI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

READY_TIMEOUT = 300.0  # importing torch and ComfyUI on a busy 2-core machine can take minutes


def require(available: object, what: str, how: str) -> None:
    """Skip the test when an end-to-end prerequisite (`what`) is missing, or fail it when CI is set.

    A developer's quick run stays green without ComfyUI; CI (env CI non-empty) must never pass by skipping.
    """
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and the end-to-end tests need {what}: {how}", pytrace=False)
    pytest.skip(f"needs {what}: {how}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_session(process: subprocess.Popen | None) -> None:
    """Stop a process started with start_new_session=True, and its children, through its process group."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


class ComfyUIServer:
    """`with ComfyUIServer(comfyui_dir, python, base) as server:` — `base` must already hold custom_nodes/ etc."""

    def __init__(self, comfyui_dir: Path, python: str, base: Path, *, extra_model_paths: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.comfyui_dir, self.python, self.base = Path(comfyui_dir), python, Path(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.log_path = self.base / "comfyui.log"
        self.command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                        "--disable-auto-launch", "--base-directory", str(self.base),
                        "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
        if extra_model_paths is not None:
            self.command += ["--extra-model-paths-config", str(extra_model_paths)]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}  # never the real hub; a test may say otherwise
        self.process: subprocess.Popen | None = None

    # -- life cycle -------------------------------------------------------------------------------

    def __enter__(self) -> ComfyUIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=self.comfyui_dir, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode} while starting:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/system_stats", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer /system_stats within {READY_TIMEOUT:g} s:\n{self.log()}")

    def stop(self) -> None:
        stop_session(self.process)

    def log(self, tail: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(lines[-tail:])

    # -- the HTTP API ---------------------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> requests.Response:
        response = requests.get(f"{self.url}{path}", params=params, timeout=30)
        response.raise_for_status()
        return response

    def object_info(self, node_type: str) -> dict[str, Any]:
        return self.get(f"/object_info/{node_type}").json()[node_type]

    def queue(self, prompt: dict[str, Any]) -> dict[str, Any]:
        """POST /prompt; the answer (prompt_id, node_errors) or, when ComfyUI refuses it, its error body."""
        response = requests.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.client_id},
                                 timeout=30)
        answer = response.json()
        if not response.ok:
            raise AssertionError(f"ComfyUI refused the prompt: {json.dumps(answer, indent=1)}")
        return answer

    def running(self) -> list[str]:
        return [entry[1] for entry in self.get("/queue").json()["queue_running"]]

    def interrupt(self, prompt_id: str | None = None) -> None:
        body = {"prompt_id": prompt_id} if prompt_id else {}
        requests.post(f"{self.url}/interrupt", json=body, timeout=30).raise_for_status()

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict[str, Any]:
        """The /history entry of a finished prompt (successful, failed or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}").json()
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log()}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:g} s:\n{self.log()}")

    def run(self, prompt: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        answer = self.queue(prompt)
        assert answer["node_errors"] == {}, answer["node_errors"]
        entry = self.wait(answer["prompt_id"], timeout)
        if entry["status"]["status_str"] != "success":
            raise AssertionError(f"prompt failed: {json.dumps(entry['status'], indent=1)}\n{self.log()}")
        return entry

    def output_images(self, entry: dict[str, Any], node_id: str) -> list[bytes]:
        """The PNG files a SaveImage node wrote, fetched through /view."""
        return [self.get("/view", filename=image["filename"], subfolder=image["subfolder"], type=image["type"]).content
                for image in entry["outputs"][node_id]["images"]]


def combo_options(spec: list) -> list:
    """A dropdown's choices as /object_info serves them: a V1 list, or the V3 schema's ("COMBO", {"options": ...})."""
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


def interrupted_message(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The `execution_interrupted` message of a /history entry, if the prompt was interrupted."""
    for kind, message in entry["status"].get("messages", []):
        if kind == "execution_interrupted":
            return message
    return None


# The engine run directly, in ComfyUI's interpreter (same torch build), for pixel-exact comparisons.
DIRECT_RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from PIL import Image
from pasd_core.engine.pipeline import PASDPipeline
job = json.loads(sys.argv[2])
pictures = [Image.open(p).convert("RGB") for p in job["inputs"]]
for stage in job["stages"]:
    pipe = PASDPipeline.from_pretrained(stage["base"], stage["pasd"], style_model=stage.get("style_model"),
                                        caption_model=stage.get("caption_model"),
                                        control_type=stage.get("control_type", "realisr"), device="cpu", dtype="fp32")
    pictures = [pipe.upscale(p, {**stage["settings"], "seed": stage["settings"]["seed"] + i})
                for i, p in enumerate(pictures)]
for picture, path in zip(pictures, job["outputs"]):
    picture.save(path)
"""


def run_engine_directly(python: str, repo: Path, job: dict[str, Any]) -> None:
    """Run `job` ({"inputs", "stages": [{"base", "pasd", "style_model", "caption_model", "control_type", "settings"}],
    "outputs"}) on PASDPipeline."""
    done = subprocess.run([python, "-c", DIRECT_RUN, str(repo), json.dumps(job)], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the direct engine run failed:\n{done.stderr[-3000:]}")


class Chromium:
    """Headless Chromium with the DevTools protocol on a loopback port, in its own process session."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.port = free_port()
        self.devtools = f"http://127.0.0.1:{self.port}"
        self.command = [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--remote-debugging-port={self.port}", f"--user-data-dir={profile}",
                        "--window-size=1600,1000", "about:blank"]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Chromium:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.devtools}/json/version", timeout=2).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError("Chromium did not open its DevTools port within 60 s")

    def __exit__(self, *exc: object) -> None:
        stop_session(self.process)


# Drives ComfyUI's own front end through the DevTools protocol (aiohttp's websocket client, which every
# ComfyUI environment has): loads each UI workflow as a user would, then asks the front end for the
# API prompt it would queue. argv: devtools URL, ComfyUI URL, JSON {name: workflow}, screenshot path or "".
FRONTEND_RUN = r"""
import asyncio, base64, itertools, json, sys
import aiohttp

async def main(devtools, comfyui, workflows, screenshot):
    async with aiohttp.ClientSession() as http:
        pages = await (await http.get(devtools + "/json/list")).json()
        page = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        async with http.ws_connect(page, max_msg_size=0) as ws:
            ids = itertools.count(1)
            async def call(method, **params):
                i = next(ids)
                await ws.send_json({"id": i, "method": method, "params": params})
                while True:
                    message = await ws.receive_json()
                    if message.get("id") == i:
                        if "error" in message:
                            raise RuntimeError(message["error"])
                        return message["result"]
            async def js(expression):
                result = await call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
                if "exceptionDetails" in result:
                    raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
                return result["result"].get("value")
            await call("Page.navigate", url=comfyui)
            for _ in range(600):
                await asyncio.sleep(0.5)
                try:
                    if await js("!!(window.app && app.graph && window.LiteGraph"
                                " && LiteGraph.registered_node_types.PASDUpscale)"):
                        break
                except RuntimeError:
                    pass
            else:
                raise SystemExit("the ComfyUI front end did not come up with the PASD nodes registered")
            results = {}
            for name, workflow in workflows.items():
                results[name] = await js(
                    "(async () => { await app.loadGraphData(" + json.dumps(workflow) + ");"
                    " const nodes = app.graph._nodes;"
                    " const missing = nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);"
                    " return {nodes: nodes.length, missing, prompt: (await app.graphToPrompt()).output}; })()")
                if screenshot:
                    await js("document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click());"
                             " app.canvas.ds.scale = 0.62; app.canvas.ds.offset = [20, 20];"
                             " app.graph.setDirtyCanvas(true, true); true")
                    await asyncio.sleep(1.0)
                    shot = (await call("Page.captureScreenshot", format="png"))["data"]
                    with open(screenshot.replace("{name}", name), "wb") as f:
                        f.write(base64.b64decode(shot))
            print(json.dumps(results))

asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]))
"""


def frontend_prompts(python: str, chromium: Chromium, comfyui: ComfyUIServer, workflows: dict[str, Any],
                     screenshot: str = "") -> dict[str, Any]:
    """{name: {"nodes", "missing", "prompt"}}: what ComfyUI's front end makes of each UI workflow."""
    done = subprocess.run([python, "-c", FRONTEND_RUN, chromium.devtools, comfyui.url, json.dumps(workflows),
                           screenshot], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"driving the front end failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
