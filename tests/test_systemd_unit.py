"""``systemd/proxyd.service`` under a real systemd, not only ``systemd-analyze verify``.

``systemd-nspawn -b`` boots this machine's own root as a container: a read-only bind of
``/`` (made in a private mount namespace, so nspawn sees no submounts) under a tmpfs
overlay (``--volatile=overlay``: nothing the container writes reaches the disk), with
``--private-network`` (every rule proxyd writes lands in the container's own network
namespace) and booted only to ``basic.target`` (none of the machine's enabled services
start). Bound in read-only: the unit file exactly as shipped, the shipped ``config.yaml``,
``proxyd.env`` plus ``NODE_NAME``, this checkout and this Python at
``/opt/proxyd/{src,python}`` (``ProtectHome=yes`` hides ``/root``, where pyenv lives), and
a ``/usr/local/bin/proxyd`` that runs them — where the unit expects the console script.
The fake API server runs inside the container as a transient unit, serving
``examples/edge-cluster`` on 127.0.0.1:6443.

The tests share one container and run in file order: start (READY=1 after the first sync),
rules, sandbox, SIGKILL → restart, stop, the legacy backend. Everything is driven with
``nsenter`` into the container's PID 1 (no ``machinectl``/``-M``: the host need not run
systemd). Nothing outside the container changes; the fixture removes the cgroups nspawn
makes under this process's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxyd.sandbox.fakeapi import write_kubeconfig
from tests.conftest import require
from tests.test_daemon import eventually

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parent.parent
SRC, PYTHON = "/opt/proxyd/src", "/opt/proxyd/python"
NODE = "kind-worker"  # a node of examples/edge-cluster
API, HEALTHZ = "http://127.0.0.1:6443", "http://127.0.0.1:10256/healthz"
UNIT = "proxyd.service"
PROCESS_EXIT = "98e322203f7a4ed290d09fe03c09fe15"  # sd-messages.h: a unit's process exited
READY_WITHIN = 10.0  # seconds from exec to READY=1 (one small full sync)
NET_ADMIN_RAW = 1 << 12 | 1 << 13  # CapBnd of CAP_NET_ADMIN + CAP_NET_RAW
CALL_TIMEOUT = 90.0  # one systemctl/iptables call; the unit's own TimeoutStartSec is 5 min


@dataclass
class Container:
    nspawn: subprocess.Popen[bytes]
    leader: int  # the container's systemd, as a host PID
    console: Path
    etc: Path  # bound at /etc/proxyd (read-only in there, live from here)

    def run(self, *argv: str, timeout: float = CALL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the container: its mount, PID, network … namespaces."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": "", "LANG": "C.UTF-8"}
        return subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def show(self, *props: str, unit: str = UNIT) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str = UNIT) -> str:
        return self.run("journalctl", "--no-pager", "-o", "short-monotonic", "-u", unit,
                        timeout=20).stdout

    def main_exits(self) -> list[tuple[str, str]]:
        """(EXIT_CODE, EXIT_STATUS) of each exit of proxyd's main process, oldest first,
        as systemd recorded them (``killed``/``9``, ``exited``/``0`` …)."""
        out = self.run("journalctl", "--no-pager", "-o", "json", "-u", UNIT, timeout=20).stdout
        records = [json.loads(line) for line in out.splitlines()]
        return [(r["EXIT_CODE"], r["EXIT_STATUS"]) for r in records
                if r.get("MESSAGE_ID") == PROCESS_EXIT and "Main process" in r["MESSAGE"]]

    def rules(self, save: str = "iptables-save") -> str:
        return self.run(save, "-t", "nat").stdout

    def healthz(self) -> str:
        """HTTP status of /healthz from inside the container ("000": nothing answers)."""
        return self.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5",
                        HEALTHZ, timeout=10).stdout


def python_binds() -> tuple[list[str], str]:
    """nspawn binds that make this interpreter and its packages visible outside ``/root``
    and ``/home``, and the PYTHONPATH the container needs (this checkout, a venv's
    site-packages)."""
    binds = [f"--bind-ro={sys.base_prefix}:{PYTHON}"]
    path = [SRC]
    if sys.prefix != sys.base_prefix:
        binds.append(f"--bind-ro={sys.prefix}:{PYTHON}-venv")
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        path.append(f"{PYTHON}-venv/lib/{version}/site-packages")
    return binds, ":".join(path)


def nspawn_cgroups() -> list[Path]:
    """Where nspawn (``--keep-unit``) puts itself and the container: ``supervisor`` and
    ``payload`` under this process's cgroup, in systemd's v1 hierarchy and in cgroup2.
    Nothing removes them when no systemd runs on the host, so the fixture does."""
    unified = Path("/sys/fs/cgroup/unified")
    dirs = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if controllers == "name=systemd":
            dirs.append(Path("/sys/fs/cgroup/systemd") / path.lstrip("/"))
        elif number == "0":
            dirs.append((unified if unified.is_dir() else unified.parent) / path.lstrip("/"))
    return [d / sub for d in dirs for sub in ("supervisor", "payload")]


def leader_of(nspawn: int) -> int:
    """The container's PID 1: the child of nspawn running systemd."""
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
        except (OSError, ValueError):
            continue
        if f"\nPPid:\t{nspawn}\n" in status and status.startswith("Name:\tsystemd\n"):
            return int(entry.name)
    return 0


def stop_container(c: subprocess.Popen[bytes], leader: int) -> None:
    """SIGTERM makes nspawn power the container off; a PID 1 that does not go in 20 s
    takes its whole PID namespace with it when killed."""
    if c.poll() is None:
        c.send_signal(signal.SIGTERM)
        try:
            c.wait(20)
        except subprocess.TimeoutExpired:
            if leader:
                os.kill(leader, signal.SIGKILL)
            try:
                c.wait(10)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait(10)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    require(os.geteuid() == 0, "needs root to boot a container")
    for tool in ("systemd-nspawn", "nsenter", "unshare", "iptables-save",
                 "iptables-legacy-save", "curl"):
        require(shutil.which(tool), f"{tool} not installed (.ci/install: systemd-container …)")
    require(Path("/usr/lib/systemd/systemd").exists(), "systemd is not installed")
    tmp = tmp_path_factory.mktemp("nspawn")
    etc = tmp / "etc-proxyd"
    etc.mkdir()
    shutil.copy(REPO / "systemd" / "config.yaml", etc / "config.yaml")
    env = (REPO / "systemd" / "proxyd.env").read_text()
    (etc / "proxyd.env").write_text(f"{env}NODE_NAME={NODE}\n")
    write_kubeconfig(etc / "kubeconfig", API)  # the path config.yaml names
    binds, pythonpath = python_binds()
    wrapper = tmp / "proxyd"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"export PYTHONPATH={pythonpath} LD_LIBRARY_PATH={PYTHON}/lib\n"
        f'exec {PYTHON}/bin/python3 -m proxyd "$@"\n'
    )
    wrapper.chmod(0o755)
    root = tmp / "root"
    root.mkdir()
    console = tmp / "console.log"
    # Private mount namespace: a non-recursive read-only bind of / (nspawn refuses / itself
    # and a root with /dev, /proc mounted), and a tmpfs /run for nspawn's own state.
    # (-n: no /run/mount/utab on the host either.)
    setup = ('mount -n --bind / "$0" && mount -n -o remount,bind,ro "$0" && '
             'mount -n -t tmpfs -o mode=0755 tmpfs /run && exec "$@"')
    argv = [
        "unshare", "--mount", "--propagation", "private", "sh", "-c", setup, str(root),
        "systemd-nspawn", "--quiet", "-D", str(root), "--volatile=overlay",
        "--private-network", "--register=no", "--keep-unit", "--link-journal=no",
        f"--machine=pxsd-{os.getpid()}",
        f"--bind-ro={REPO / 'systemd' / 'proxyd.service'}:/etc/systemd/system/{UNIT}",
        f"--bind-ro={etc}:/etc/proxyd", f"--bind-ro={wrapper}:/usr/local/bin/proxyd",
        f"--bind-ro={REPO}:{SRC}", *binds,
        "--boot", "--", "systemd.unit=basic.target",
    ]
    created = [d for d in nspawn_cgroups() if not d.exists()]
    with console.open("wb") as out:
        nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    leader = 0
    try:
        def booted() -> int:
            assert nspawn.poll() is None, f"nspawn exited:\n{console.read_text()[-3000:]}"
            return leader_of(nspawn.pid)

        leader = eventually(booted, 20, "the container's systemd started")
        box = Container(nspawn, leader, console, etc)

        def running() -> bool:
            state = box.run("systemctl", "is-system-running", timeout=10).stdout.strip()
            assert state not in ("degraded", "maintenance", "stopping"), (
                f"{state}: {box.run('systemctl', '--failed', '--no-pager').stdout}")
            return state == "running"

        eventually(running, 30, "the container reached basic.target")
        api = box.run("systemd-run", "--unit=fakeapi", "--property=Type=exec",
                      f"--setenv=PYTHONPATH={pythonpath}", f"--setenv=LD_LIBRARY_PATH={PYTHON}/lib",
                      f"{PYTHON}/bin/python3", "-m", "proxyd.sandbox.fakeapi", "--port", "6443",
                      "--objects", f"{SRC}/examples/edge-cluster")
        assert api.returncode == 0, api.stderr
        eventually(lambda: box.run("curl", "-sf", "-m", "2", f"{API}/version").returncode == 0,
                   20, f"the fake API server answered:\n{box.journal('fakeapi.service')}")
        yield box
    finally:
        stop_container(nspawn, leader)
        for top in created:
            for path, _, _ in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):  # a cgroup still holding a process stays
                    os.rmdir(path)


def start(box: Container) -> None:
    """``systemctl start proxyd``: returns once READY=1 arrived (Type=notify)."""
    done = box.run("systemctl", "start", UNIT)
    assert done.returncode == 0, f"{done.stderr}\n{box.journal()[-3000:]}"


def test_start_returns_once_ready_after_the_first_sync(container: Container) -> None:
    start(container)
    state = container.show("Type", "ActiveState", "SubState", "StatusText", "NRestarts")
    assert state == {"Type": "notify", "ActiveState": "active", "SubState": "running",
                     "StatusText": "rules in sync", "NRestarts": "0"}, container.journal()
    # READY=1 came after the first sync: health and rules are there the moment start returns.
    assert container.healthz() == "200"
    assert "-A PROXYD-SERVICES -d 10.96.0.11/32" in container.rules()


def test_ready_comes_right_after_the_first_sync(container: Container) -> None:
    start(container)
    times = container.show("ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    took = (int(times["ActiveEnterTimestampMonotonic"])
            - int(times["ExecMainStartTimestampMonotonic"])) / 1e6
    # The first sync of examples/edge-cluster takes about a second after exec.
    assert took < READY_WITHIN, f"active {took:.1f}s after exec\n{container.journal()}"


def test_rules_land_in_the_containers_network_namespace(container: Container) -> None:
    start(container)
    assert os.readlink(f"/proc/{container.leader}/ns/net") != os.readlink(
        "/proc/self/ns/net")
    rules = container.rules()
    assert {":PROXYD-SERVICES", ":PROXYD-NODEPORTS", ":PROXYD-POSTROUTING"} <= {
        line.split()[0] for line in rules.splitlines() if line.startswith(":")}
    assert "-A PROXYD-SERVICES -d 10.96.0.1/32" in rules  # default/kubernetes


def test_sandbox_is_in_force_and_does_not_break_proxyd(container: Container) -> None:
    start(container)
    pid = container.show("MainPID")["MainPID"]
    status = container.run("cat", f"/proc/{pid}/status").stdout
    fields = dict(re.findall(r"^(\w+):\s+(\S+)", status, re.MULTILINE))
    assert int(fields["CapBnd"], 16) == NET_ADMIN_RAW
    assert int(fields["CapEff"], 16) == NET_ADMIN_RAW
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "2")  # 2: filter mode
    mounts = container.run("cat", f"/proc/{pid}/mountinfo").stdout.splitlines()
    root = next(line.split() for line in mounts if line.split()[4] == "/")
    assert "ro" in root[5].split(","), root  # ProtectSystem=strict
    assert container.healthz() == "200"


def test_sigkill_is_restarted(container: Container) -> None:
    start(container)
    before = container.show("MainPID", "NRestarts")
    killed = container.run("systemctl", "kill", "--signal=SIGKILL", UNIT)
    assert killed.returncode == 0, killed.stderr

    def restarted() -> bool:
        time.sleep(0.25)  # a systemctl in the container per poll: 4 a second is plenty
        now = container.show("MainPID", "NRestarts", "ActiveState", "SubState")
        return (now["NRestarts"] == str(int(before["NRestarts"]) + 1)
                and now["MainPID"] not in ("0", before["MainPID"])
                and (now["ActiveState"], now["SubState"]) == ("active", "running"))

    eventually(restarted, 75, f"proxyd restarted after SIGKILL:\n{container.journal()[-3000:]}")
    assert container.main_exits()[-1] == ("killed", "9")
    assert container.show("StatusText")["StatusText"] == "rules in sync"
    assert container.healthz() == "200"


def test_stop_exits_0_and_keeps_the_rules(container: Container) -> None:
    start(container)
    # systemd logs a clean exit's status at debug level only (and forgets the unit's
    # ExecMain* once it is stopped and unloaded): raise the level for the stop.
    assert container.run("systemctl", "log-level", "debug").returncode == 0
    stopped = container.run("systemctl", "stop", UNIT)
    assert stopped.returncode == 0, stopped.stderr
    assert container.show("ActiveState")["ActiveState"] == "inactive"
    assert container.main_exits()[-1] == ("exited", "0"), container.journal()[-3000:]
    assert "-A PROXYD-SERVICES -d 10.96.0.11/32" in container.rules()


def test_legacy_backend_works_in_the_sandbox(container: Container) -> None:
    """iptables-legacy talks to the kernel over a raw socket (CAP_NET_RAW) and flocks
    /run/xtables.lock, which must exist before the sandbox is set up (ExecStartPre)."""
    env = container.etc / "proxyd.env"
    env.write_text(f'{env.read_text()}PROXYD_ARGS="--iptables-backend legacy"\n')
    restarted = container.run("systemctl", "restart", UNIT)
    assert restarted.returncode == 0, f"{restarted.stderr}\n{container.journal()[-3000:]}"
    assert "-A PROXYD-SERVICES -d 10.96.0.11/32" in container.rules("iptables-legacy-save")
