"""Progress bars never hold up the work: not after a fork, not after a process dies drawing one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Both cases hung with tqdm's default lock: a thread lock that a fork copies as held, and a
# semaphore that forked processes share, left held by a process killed while it drew a bar (the
# store's torture run found the second: two forked workers waited on it for a minute).
SCRIPT = textwrap.dedent(
    """
    import os, signal, threading, time
    from polyemb.progress import ProgressBar, progress_bar

    def one_bar(desc):
        with progress_bar(desc=desc, unit="x", total=1, show=False) as bar:
            bar.update(1)

    # 1. A fork taken while another thread holds the bars' lock: the child draws a bar.
    held, done = threading.Event(), threading.Event()
    def hold():
        with ProgressBar.get_lock():
            held.set()
            done.wait()
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        one_bar("child")
        os._exit(0)
    done.set()
    holder.join()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

    # 2. A forked child killed while it holds the lock: the parent draws a bar.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        ProgressBar.get_lock().acquire()
        os.write(write, b"x")
        time.sleep(120)
        os._exit(0)
    os.read(read, 1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    one_bar("parent")
    print("both bars drawn")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork does not exist on Windows")
def test_bars_after_a_fork_and_after_a_killed_process() -> None:
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a progress bar waited on a lock that a fork or a killed process left held")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "both bars drawn"


def test_show_and_quiet_below() -> None:
    from polyemb.progress import progress_bar

    with progress_bar(desc="d", unit="x", total=5, show=False) as bar:
        assert bar.disable
    with progress_bar(desc="d", unit="x", total=5, show=True, quiet_below=10) as bar:
        assert not bar.disable
    # Left to tqdm's choice (a terminal or not) only from quiet_below on.
    with progress_bar(desc="d", unit="x", total=5, quiet_below=10) as bar:
        assert bar.disable
    with progress_bar(desc="d", unit="x", total=50, quiet_below=10) as bar:
        assert bar.disable == (not sys.stderr.isatty())
