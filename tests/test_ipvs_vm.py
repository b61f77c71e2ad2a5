"""Runs the IPVS suite (tests/vm/guest) inside a qemu VM whose kernel has IPVS.

One boot for every IPVS test: tests/vm/run.sh fetches Debian's current kernel package
into tests/vm/.cache, boots it under TCG with this machine's root file system shared
read-only, and runs pytest on tests/vm/guest inside the guest; its exit code is the
guest's. The host kernel has no IPVS, so this is the only place IPVS is exercised for real.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

HARNESS = Path(__file__).parent / "vm" / "run.sh"


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ipvs_suite_passes_inside_a_vm() -> None:
    for tool in ("qemu-system-x86_64", "busybox", "cpio", "depmod", "apt-get"):
        require(shutil.which(tool), f"{tool} is missing (run .ci/install)")
    run = subprocess.run([str(HARNESS)], capture_output=True, text=True, timeout=840, check=False)
    output = run.stdout + run.stderr
    tail = "\n".join(output.splitlines()[-120:])
    assert run.returncode == 0, f"guest suite failed (exit {run.returncode}):\n{tail}"
    assert " passed" in output and " failed" not in output, tail
