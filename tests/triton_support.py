"""A real Triton Inference Server for the tests, from the ``nvidia-pytriton`` wheel.

That wheel ships ``tritonserver`` (it runs on a CPU) with the python backend only, and
it needs numpy < 2, which the project's environment cannot have; so the server runs
from an environment of its own, made by ``make triton-env`` (``.venv-triton``, or the
folder named by FACESTREAM_TRITON_ENV), which holds nvidia-pytriton, numpy and
onnxruntime (constraints-triton.txt).

The repository is the one ``facestream models triton-repo`` writes, with its config's
``platform: "onnxruntime_onnx"`` swapped for the python backend running the same
``model.onnx`` through ONNX Runtime (tests/triton_python_model.py): names, dims,
max_batch_size, dynamic batching and parameters are facestream's, parsed by Triton.

Two quirks of the wheel, handled here as pytriton itself does: the python stub for the
interpreter's version is copied into the backend folder, and the stub must find the
environment's ``python`` first on PATH (its site-packages) and the interpreter's own
libpython (a pyenv build's, not the system's of the same minor version, whose older
stdlib breaks multiprocessing) on LD_LIBRARY_PATH.

Not a test module (pytest collects only ``test_*.py``); the test files import it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from e2e_support import free_port

TRITON_ENV = "FACESTREAM_TRITON_ENV"
PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
START_TIMEOUT_S = 90.0


def triton_env(repo_root: Path) -> Path | None:
    """The environment holding nvidia-pytriton, or None."""
    named = os.environ.get(TRITON_ENV)
    env = Path(named) if named else repo_root / ".venv-triton"
    return env if (env / "bin" / "python").exists() else None


def to_python_backend(model_dir: Path) -> None:
    """Serve a model folder written by ``write_triton_repo`` through the python
    backend (ONNX Runtime inside Triton's python stub) instead of onnxruntime's."""
    config = model_dir / "config.pbtxt"
    text = config.read_text()
    assert 'platform: "onnxruntime_onnx"\n' in text, text
    config.write_text(text.replace('platform: "onnxruntime_onnx"\n', 'backend: "python"\n'))
    shutil.copy(PYTHON_MODEL, model_dir / "1" / "model.py")


@dataclass
class TritonServer:
    process: subprocess.Popen[bytes]
    grpc_url: str
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_triton(
    env: Path, repository: Path, workdir: Path, models: tuple[str, ...]
) -> TritonServer:
    """Start tritonserver from ``env`` on ``repository`` and wait until ``models`` are
    ready; raises RuntimeError with the server's log when it does not get there."""
    import tritonclient.grpc as grpcclient

    python = env / "bin" / "python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, sysconfig, pytriton; from pathlib import Path; "
            "print(Path(pytriton.__file__).parent); print(sysconfig.get_config_var('LIBDIR')); "
            "print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    package, libdir, version = probe.stdout.split()
    dist = Path(package) / "tritonserver"
    server = workdir / "tritonserver"
    shutil.copytree(dist, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(
        dist / "python_backend_stubs" / version / "triton_python_backend_stub",
        server / "backends" / "python",
    )
    wheel_libs = Path(package).parent / "nvidia_pytriton.libs"
    environ = {
        **os.environ,
        "PATH": f"{env / 'bin'}:{os.environ.get('PATH', '')}",
        "LD_LIBRARY_PATH": f"{libdir}:{wheel_libs}",
    }
    environ.pop("PYTHONPATH", None)  # the stub imports the Triton environment's packages
    port = free_port()
    log = workdir / "tritonserver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(server / "bin" / "tritonserver"),
                f"--model-repository={repository}",
                f"--backend-directory={server / 'backends'}",
                f"--cache-directory={server / 'caches'}",
                f"--grpc-port={port}",
                "--allow-http=false",
                "--allow-metrics=false",
                # a prefix of its own: other servers on the machine use /dev/shm too
                f"--backend-config=python,shm-region-prefix-name=fs{uuid.uuid4().hex[:12]}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    triton = TritonServer(process, f"127.0.0.1:{port}", log)
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {process.returncode}")
            try:
                if all(client.is_model_ready(name) for name in models):
                    return triton
            except Exception:  # tritonclient's errors while the port is not open yet
                pass
            time.sleep(0.25)
        raise RuntimeError(f"tritonserver: {models} not ready in {START_TIMEOUT_S:.0f} s")
    except RuntimeError as exc:
        triton.stop()
        raise RuntimeError(f"{exc}; its log ends:\n{triton.log_tail()}") from None
    finally:
        client.close()
