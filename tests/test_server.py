"""The test harness's server process (tests/server.py): it never outlives the test run."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.server import REPO_ROOT, is_running, wait_gone


def test_server_dies_with_the_test_process(anvil_binary: str, tmp_path: Path) -> None:
    """A test run killed outright (SIGKILL, a CI timeout) leaves no `jamins serve` (and so
    no embedded anvil) behind to hold ports and CPU."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from tests.server import ServerProcess
        server = ServerProcess(
            data_dir=Path({str(tmp_path / "server")!r}),
            env={{"JAMINS_ANVIL_PATH": {anvil_binary!r}}},
        )
        server.start()
        assert server.process is not None
        print(server.process.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert is_running(server_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    assert wait_gone(server_pid), f"jamins serve (pid {server_pid}) outlived the test process"
