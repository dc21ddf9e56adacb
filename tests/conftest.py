import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))  # tiny data, models and job scripts
from tiny_training import reset_accelerate  # noqa: E402


def _kill_when(command, reached, what, timeout=300, group=False, env=None):
    """Start `command` (unbuffered, output discarded) and SIGKILL it as soon as `reached()` holds; `group`: the
    command and every process it started (a launcher and its ranks)."""
    proc = subprocess.Popen(command, env={**(env or os.environ), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=group)
    deadline = time.time() + timeout
    while not reached() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert reached(), f"the run never reached {what}"
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; a test using this builds its Accelerator from scratch."""
    reset_accelerate()
    yield
    reset_accelerate()


@pytest.fixture
def kill_when():
    """kill_when(command, reached, what): run a command and kill -9 it at the moment `reached()` holds."""
    return _kill_when


@pytest.fixture
def two_processes():
    """(command prefix, environment) that run `lt-plugin` as 2 CPU processes under `accelerate launch`."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lt_plugin.cli"]
    return launcher, {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
