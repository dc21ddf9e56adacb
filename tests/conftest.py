import os
import signal
import subprocess
import time

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
def kill_when():
    """kill_when(command, reached, what): run a command and kill -9 it at the moment `reached()` holds."""
    return _kill_when
