import collections
import os
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))  # tiny data, models and job scripts
from tiny_training import reset_accelerate  # noqa: E402

from lt_plugin.store import PAUSE_AFTER, PAUSED  # noqa: E402


def _kill_when(command, path=None, env=None, timeout=600):
    """Run `command` until it pauses, then SIGKILL it and every process it started (a launcher's ranks run in
    sessions of their own) there. `path`: the run pauses right after writing that file (LT_PLUGIN_PAUSE_AFTER, see
    lt_plugin.store); without it the command pauses by itself, saying so on stderr as lt_plugin does. The run
    cannot go past the pause, so the kill lands at that point on a machine of any speed."""
    environment = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    if path is not None:
        environment[PAUSE_AFTER] = str(path)
    proc = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stopped, paused, tail = threading.Event(), [], collections.deque(maxlen=30)

    def watch():  # until the pause line, or the end of the output (the command ended without pausing)
        for line in proc.stderr:
            tail.append(line)
            if PAUSED in line:  # a progress bar may share its line
                paused.append(line)
                stopped.set()
        stopped.set()

    threading.Thread(target=watch, daemon=True).start()
    stopped.wait(timeout)
    try:
        assert paused and proc.poll() is None, \
            f"{' '.join(map(str, command))} never paused{f' after writing {path}' if path else ''}:\n{''.join(tail)}"
    finally:
        try:
            run = [psutil.Process(proc.pid)]
            run += run[0].children(recursive=True)
        except psutil.NoSuchProcess:
            run = []
        for process in run:
            process.kill()
        psutil.wait_procs(run)
        proc.wait()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; a test using this builds its Accelerator from scratch."""
    reset_accelerate()
    yield
    reset_accelerate()


@pytest.fixture
def kill_when():
    """kill_when(command, path): run a command and kill -9 it right after it writes `path`."""
    return _kill_when


@pytest.fixture
def two_processes():
    """(command prefix, environment) that run `lt-plugin` as 2 CPU processes under `accelerate launch`."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "lt_plugin.cli"]
    return launcher, {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
