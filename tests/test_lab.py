"""`make lab` works headless and as root: start JupyterLab the way `make lab` does, then run a notebook under the
smoke profile through the server's kernel (REST + websocket, a real client of the server; the kit's kernel)."""

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
KERNEL = "eqvae-kit"
NOTEBOOK = REPO / "notebooks" / "00_design_pilot.ipynb"


def _lab_command(port: int, token: str) -> list[str]:
    out = subprocess.run(["make", "-s", "--no-print-directory", "lab-command"], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60).stdout.strip()
    cmd = shlex.split(out)
    assert cmd[0].endswith("bin/jupyter") and cmd[1] == "lab"
    if os.geteuid() == 0:
        assert "--allow-root" in cmd, "as root, Jupyter stops at once without --allow-root"
    cmd[0] = str(Path(sys.executable).parent / "jupyter")  # the venv running the tests
    return cmd + [f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET", body: dict | None = None):
    req = urllib.request.Request(f"{base}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    return json.loads(text) if text else None


def _execute(ws, code: str, timeout: float = 600) -> list[dict]:
    """Send one execute_request on the shell channel; return the iopub messages it caused (until idle)."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                                   "msg_type": "execute_request", "version": "5.3", "date": ""},
                        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                    "allow_stdin": False, "stop_on_error": True}}))
    out, t0 = [], time.time()
    while time.time() - t0 < timeout:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id or msg.get("channel") != "iopub":
            continue
        out.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out
    raise TimeoutError(f"cell did not finish in {timeout} s: {code[:80]!r}")


@pytest.mark.slow
def test_make_lab_server_runs_a_smoke_notebook_through_its_kernel(tmp_path):
    websocket = pytest.importorskip("websocket")
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        pytest.fail(f"kernel {KERNEL!r} is not registered: run `make venv` (it runs ipykernel install --name {KERNEL})")
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "EQVAE_PROFILE": "smoke", "EQVAE_RUNS": str(tmp_path / "runs"),
           "EQVAE_FIGURES": str(tmp_path / "figures"), "EQVAE_DATA": str(tmp_path / "data"),
           "PYTHONPATH": str(REPO), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "MPLBACKEND": "Agg"}
    server = subprocess.Popen(_lab_command(port, token), cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if server.poll() is not None:
                pytest.fail("jupyter lab exited: " + server.stdout.read()[-3000:])
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not answer within 120 s")
        kernel = _api(base, token, "/api/kernels", "POST", {"name": KERNEL})
        assert kernel["name"] == KERNEL
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{kernel['id']}/channels?token={token}",
                                         timeout=600)
        try:
            where = _execute(ws, "import eqvae_lib, sys; print(eqvae_lib.__file__, sys.executable)")
            text = "".join(m["content"].get("text", "") for m in where if m["msg_type"] == "stream")
            assert str(REPO / "eqvae_lib") in text
            for cell in nbformat.read(NOTEBOOK, as_version=4).cells:
                if cell.cell_type != "code":
                    continue
                msgs = _execute(ws, cell.source)
                errors = [m["content"] for m in msgs if m["msg_type"] == "error"]
                assert not errors, f"cell failed: {errors[0]['ename']}: {errors[0]['evalue']}\n{cell.source[:300]}"
        finally:
            ws.close()
            _api(base, token, f"/api/kernels/{kernel['id']}", "DELETE")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    record = json.loads((tmp_path / "runs" / "smoke" / "records" / "design.json").read_text())
    assert record["profile"] == "smoke" and record["params"]["stages"]["pilot"]["pilot_steps"] >= 1
