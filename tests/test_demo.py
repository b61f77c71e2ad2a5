"""``proxyd demo``: scenario data, checks, tables and orchestration (pure), then the real
sandbox in network namespaces (root + netns): every row passes, a demo with topology
switched off fails rows, and nothing is left behind."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from proxyd.commands.demo import missing_prerequisites
from proxyd.errors import ProxydError
from proxyd.model import TrafficPolicy
from proxyd.plan import build_plan
from proxyd.runner import ManualClock, SystemClock
from proxyd.sandbox import demo
from proxyd.sandbox.demo import (
    DEFAULT_SCENARIO,
    Check,
    DemoPod,
    Layout,
    Observation,
    Probe,
    Scenario,
    Via,
)
from proxyd.sources import manifests
from proxyd.store import ClusterState
from tests.conftest import require

SCENARIO = DEFAULT_SCENARIO
REPO = Path(__file__).resolve().parents[1]


def layout(scenario: Scenario = SCENARIO) -> Layout:
    return Layout("t0", scenario)


def observed(*pods: str, **failures: int) -> Observation:
    return Observation(tuple((p, 10) for p in sorted(pods)), tuple(sorted(failures.items())))


def expectations_after_steps(scenario: Scenario) -> dict[Probe, frozenset[str]]:
    expect = dict(scenario.expect)
    for step in scenario.steps:
        expect.update(step.expect)
    return expect


def pods_after_steps(scenario: Scenario) -> tuple[DemoPod, ...]:
    pods = scenario.pods
    for step in scenario.steps:
        pods = demo.apply_step(pods, step)
    return pods


def without_topology(scenario: Scenario) -> Scenario:
    """The same cluster with every topology setting removed, expectations unchanged:
    what a proxy that ignores topology (mode ``none``) would be served."""
    plain = tuple(
        dataclasses.replace(
            svc,
            annotations=(),
            topology_keys=(),
            zone_hints=False,
            external_traffic_policy=TrafficPolicy.CLUSTER,
        )
        for svc in scenario.services
    )
    return dataclasses.replace(scenario, services=plain)


# ─────────────────────────── scenario data ───────────────────────────


def test_every_row_has_a_hand_written_expectation_and_nothing_else() -> None:
    rows = set(demo.probes_for(SCENARIO, SCENARIO.services))
    assert set(SCENARIO.expect) == rows
    for step in SCENARIO.steps:
        assert set(step.expect) <= rows


@pytest.mark.parametrize(
    "expect",
    [
        pytest.param(SCENARIO.expect, id="initial"),
        pytest.param(expectations_after_steps(SCENARIO), id="after-steps"),
    ],
)
def test_expected_pods_exist_and_belong_to_the_service(
    expect: Mapping[Probe, frozenset[str]],
) -> None:
    app_of = {pod.name: pod.app for pod in SCENARIO.all_pods()}
    for probe, pods in expect.items():
        assert {app_of[p] for p in pods} <= {SCENARIO.service(probe.service).app}, probe


def test_scenario_has_three_pools_two_zones_and_every_mode() -> None:
    assert {p.name for p in SCENARIO.pools} == {"beijing", "hangzhou", "shanghai"}
    assert len({n.zone for n in SCENARIO.nodes}) == 2
    svcs = SCENARIO.services
    assert {v for s in svcs for k, v in s.annotations if k == "openyurt.io/topologyKeys"} == {
        "openyurt.io/nodepool",
        "kubernetes.io/hostname",
    }
    assert any(s.zone_hints for s in svcs)
    assert any(s.topology_keys and s.topology_keys[-1] == "*" for s in svcs)
    assert any(s.external_traffic_policy is TrafficPolicy.LOCAL for s in svcs)
    assert any(s.protocol == "UDP" for s in svcs)


def test_layout_names_are_unique_short_and_addresses_sit_in_their_node_cidr() -> None:
    lay = Layout("ab12", SCENARIO)
    names = [lay.underlay_netns, lay.outside_netns]
    names += [lay.node_netns(n.name) for n in SCENARIO.nodes]
    names += [lay.client_netns(n.name) for n in SCENARIO.nodes]
    names += [lay.pod_netns(p.name) for p in SCENARIO.all_pods()]
    assert len(set(names)) == len(names)
    assert all(n.startswith("pxd-ab12-") and len(n) <= 15 for n in names)
    ips = [lay.pod_ip(p.name) for p in SCENARIO.all_pods()]
    assert len(set(ips)) == len(ips)
    for pod in SCENARIO.all_pods():
        assert ip_address(lay.pod_ip(pod.name)) in ip_network(lay.pod_cidr(pod.node))
    assert all(len(lay.pod_veth(p.name)) <= 15 for p in SCENARIO.all_pods())


def test_layout_refuses_namespace_names_over_15_characters() -> None:
    long = dataclasses.replace(
        SCENARIO, nodes=(dataclasses.replace(SCENARIO.nodes[0], name="a-very-long-node"),)
    )
    with pytest.raises(ValueError, match="longer than 15"):
        Layout("ab12", long)


def _plans_by_pod(
    scenario: Scenario, pods: Sequence[DemoPod], tmp_path: Path
) -> dict[Probe, frozenset[str]]:
    """What proxyd's own planner decides for the demo's objects, in pod names."""
    lay = layout(scenario)
    path = tmp_path / "objects.json"
    path.write_text(json.dumps({"kind": "List", "items": demo.api_objects(lay, pods)}))
    state = ClusterState()
    manifests.load([str(path)], state)
    snapshot = state.snapshot()
    name_of = {lay.pod_ip(p.name): p.name for p in scenario.all_pods()}
    seen = {}
    for node in scenario.nodes:
        for sp in build_plan(snapshot, node.name).services:
            name = sp.key.service.name
            seen[Probe(name, node.name)] = frozenset(name_of[e.ip] for e in sp.internal)
            if sp.port.node_port is not None:
                seen[Probe(name, node.name, Via.NODE_PORT)] = frozenset(
                    name_of[e.ip] for e in sp.external
                )
    return seen


def test_proxyd_plan_agrees_with_the_hand_written_expectations(tmp_path: Path) -> None:
    """Fast, no kernel: the objects the demo serves are valid and proxyd's planner picks
    the endpoints the tables expect (the demo then checks the same on packets)."""
    assert _plans_by_pod(SCENARIO, SCENARIO.pods, tmp_path) == SCENARIO.expect
    after = _plans_by_pod(SCENARIO, pods_after_steps(SCENARIO), tmp_path)
    assert after == expectations_after_steps(SCENARIO)


def test_without_topology_the_planner_disagrees_with_the_expectations(tmp_path: Path) -> None:
    broken = without_topology(SCENARIO)
    seen = _plans_by_pod(broken, broken.pods, tmp_path)
    wrong = {p for p, pods in seen.items() if pods != SCENARIO.expect[p]}
    assert Probe("svc-ud1", "bj-1") in wrong
    assert Probe("svc-web", "hz-1", Via.NODE_PORT) in wrong


def test_step_rewrites_slices_of_the_touched_services_only() -> None:
    step = SCENARIO.steps[0]
    assert {s.name for s in demo.touched_services(SCENARIO, step)} == {"svc-ud1", "svc-local"}
    pods = demo.apply_step(SCENARIO.pods, step)
    assert "local-hz1" not in {p.name for p in pods}
    assert "ud1-bj-a" in {p.name for p in pods}


def test_zone_hints_and_topology_keys_reach_the_objects() -> None:
    lay = layout()
    hints = demo.endpoint_slice_object(SCENARIO.service("svc-hints"), SCENARIO.pods, lay)
    assert {e["hints"]["forZones"][0]["name"] for e in hints["endpoints"]} == {
        "cn-north",
        "cn-east",
    }
    objs = {(o["kind"], o["metadata"]["name"]): o for o in demo.api_objects(lay, SCENARIO.pods)}
    assert objs["Service", "svc-keys"]["spec"]["topologyKeys"] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "*",
    ]
    assert objs["NodePool", "hangzhou"]["status"]["nodes"] == ["hz-1", "hz-2"]


# ─────────────────────────── checks and settle ───────────────────────────

ROW = Probe("svc-ud1", "hz-1")


@pytest.mark.parametrize(
    ("expected", "seen", "passed"),
    [
        pytest.param({"a", "b"}, observed("a", "b"), True, id="exact-set-passes"),
        pytest.param({"a", "b"}, observed("a"), False, id="missing-pod-fails"),
        pytest.param({"a"}, observed("a", "b"), False, id="extra-pod-fails"),
        pytest.param({"a"}, observed("a", timeout=1), False, id="lost-request-fails"),
        pytest.param(set(), observed(refused=40), True, id="rejected-as-expected"),
        pytest.param(set(), observed(timeout=40), True, id="dropped-as-expected"),
        pytest.param(set(), observed("a"), False, id="answer-where-none-expected"),
    ],
)
def test_check_passes_only_on_exactly_the_expected_pods(
    expected: set[str], seen: Observation, passed: bool
) -> None:
    assert Check(ROW, frozenset(expected), seen).passed is passed


def test_settle_reprobes_only_failing_rows_until_they_pass() -> None:
    other = Probe("svc-ud1", "hz-2")
    rounds: list[set[Probe]] = []

    def probe(rows: Sequence[Probe]) -> dict[Probe, Observation]:
        rounds.append(set(rows))
        late = len(rounds) < 3
        return {r: observed("b") if late and r == ROW else observed("a") for r in rows}

    expect = {ROW: frozenset({"a"}), other: frozenset({"a"})}
    checks = demo.settle([ROW, other], expect, probe, ManualClock(), within=10)
    assert all(c.passed for c in checks)
    assert rounds == [{ROW, other}, {ROW}, {ROW}]


def test_settle_gives_up_at_the_deadline_with_the_last_observation() -> None:
    clock = ManualClock()
    checks = demo.settle(
        [ROW], {ROW: frozenset({"a"})}, lambda rows: {r: observed("b") for r in rows}, clock,
        within=2, interval=0.5,
    )  # fmt: skip
    assert [c.passed for c in checks] == [False]
    assert checks[0].observed.answered == {"b"}
    assert 2 <= clock.monotonic() - 1000.0 <= 2.5


# ─────────────────────────── tables ───────────────────────────


def recording_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None), out


def render(table: object) -> str:
    console, out = recording_console()
    console.print(table)
    return out.getvalue()


def test_table_shows_answers_expectations_and_marks() -> None:
    checks = [
        Check(Probe("svc-ud1", "hz-1"), frozenset({"ud1-hz-a"}), observed("ud1-hz-a")),
        Check(Probe("svc-ud1", "bj-1"), frozenset(), observed("ud1-sh-a")),
        Check(Probe("svc-web", "hz-1", Via.NODE_PORT), frozenset(), observed(timeout=40)),
    ]
    text = render(demo.render_checks(SCENARIO, "title", checks))
    row = {
        key: next(line for line in text.splitlines() if key in line)
        for key in ("hz-1 hangzhou/cn-east", "bj-1 beijing/cn-north", "outside → hz-1:30080")
    }
    assert "ud1-hz-a 10" in row["hz-1 hangzhou/cn-east"]
    assert row["hz-1 hangzhou/cn-east"].rstrip().endswith("✔")
    assert "ud1-sh-a 10" in row["bj-1 beijing/cn-north"]
    assert "none: rejected" in row["bj-1 beijing/cn-north"]
    assert row["bj-1 beijing/cn-north"].rstrip().endswith("✘")
    assert "timeout 40" in row["outside → hz-1:30080"]
    assert "none: dropped" in row["outside → hz-1:30080"]
    assert "openyurt: nodepool" in text
    assert "2/3 rows as expected, 1 failed" in text


def test_table_flags_rows_whose_expectation_the_step_changed() -> None:
    row = Probe("svc-ud1", "bj-1")
    checks = [Check(row, frozenset({"ud1-bj-a"}), observed("ud1-bj-a"))]
    text = render(demo.render_checks(SCENARIO, "t", checks, before=SCENARIO.expect))
    assert "changed" in text
    assert "changed" not in render(demo.render_checks(SCENARIO, "t", checks))


# ─────────────────────────── orchestration with a fake cluster ───────────────────────────


class FakeCluster:
    """Answers every probe at once with the expected pods that run (``answer="everything"``:
    every running pod of the service, as a proxy ignoring topology would); records calls."""

    def __init__(
        self, answer: str = "expected", fail_in: str = "", error: BaseException | None = None
    ) -> None:
        self.running: set[DemoPod] = set()
        self.calls: list[str] = []
        self.published: list[dict[str, Any]] = []
        self.fail_in = fail_in
        self.error = error or ProxydError(f"{fail_in} broke")
        self.expect = dict(SCENARIO.expect)
        self.answer = answer

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_in:
            raise self.error

    def build(self, pods: Sequence[DemoPod], objects: Sequence[dict[str, Any]]) -> None:
        self._call("build")
        self.running |= set(pods)
        self.published += objects

    def start_pods(self, pods: Sequence[DemoPod]) -> None:
        self._call("start_pods")
        self.running |= set(pods)

    def stop_pods(self, names: Sequence[str]) -> None:
        self._call("stop_pods")
        self.running = {p for p in self.running if p.name not in names}

    def publish(self, objects: Sequence[dict[str, Any]]) -> None:
        self._call("publish")
        self.published += objects
        self.expect = expectations_after_steps(SCENARIO)  # the data path follows at once

    def probe(self, probes: Sequence[Probe]) -> dict[Probe, Observation]:
        self._call("probe")
        names = {p.name for p in self.running}
        if self.answer == "everything":  # a proxy without topology
            app = {s.name: s.app for s in SCENARIO.services}
            return {p: observed(*(r.name for r in self.running if r.app == app[p.service]))
                    for p in probes}  # fmt: skip
        return {p: observed(*(self.expect[p] & names)) or observed(refused=1) for p in probes}

    def hints(self) -> list[tuple[str, str]]:
        return [("rules", "ip netns exec pxd-t0-hz1 iptables-save")]

    def close(self) -> None:
        self.calls.append("close")


def run_fake(
    cluster: FakeCluster, *, keep: bool = False, settle_within: float = 20.0
) -> tuple[demo.DemoReport, str]:
    console, out = recording_console()
    report = demo.run_demo(
        SCENARIO, layout(), cluster, console, ManualClock(), keep=keep, settle_within=settle_within
    )
    return report, out.getvalue()


def test_run_builds_checks_applies_the_step_and_removes_the_sandbox() -> None:
    cluster = FakeCluster()
    report, out = run_fake(cluster)
    assert report.passed
    assert "every node" in report.phases[0].title
    assert len(report.phases[0].checks) == len(SCENARIO.expect)
    assert {c.probe.service for c in report.phases[1].checks} == {"svc-ud1", "svc-local"}
    assert cluster.calls[0] == "build" and cluster.calls[-1] == "close"
    assert {"start_pods", "stop_pods", "publish"} <= set(cluster.calls)
    slices = [o for o in cluster.published[-2:] if o["kind"] == "EndpointSlice"]
    ips = {e["targetRef"]["name"] for s in slices for e in s["endpoints"]}
    assert "ud1-bj-a" in ips and "local-hz1" not in ips
    assert "all rows pass" in out


def test_run_reports_failed_rows_when_the_data_path_ignores_topology() -> None:
    report, out = run_fake(FakeCluster(answer="everything"), settle_within=1)
    assert not report.passed
    failed = {c.probe for c in report.phases[0].failed}
    assert Probe("svc-ud1", "bj-1") in failed
    assert Probe("svc-plain", "bj-1") not in failed
    assert "rows failed" in out


@pytest.mark.parametrize(
    ("where", "error"),
    [
        pytest.param("build", ProxydError("no netns"), id="build-fails"),
        pytest.param("publish", ProxydError("api down"), id="live-change-fails"),
        pytest.param("probe", KeyboardInterrupt(), id="ctrl-c-while-probing"),
        pytest.param("start_pods", KeyboardInterrupt(), id="ctrl-c-while-changing"),
    ],
)
def test_run_removes_the_sandbox_whatever_stops_it(where: str, error: BaseException) -> None:
    cluster = FakeCluster(fail_in=where, error=error)
    with pytest.raises(type(error)):
        run_fake(cluster)
    assert cluster.calls[-1] == "close"


def test_keep_leaves_the_sandbox_and_prints_how_to_explore_it() -> None:
    cluster = FakeCluster()
    _, out = run_fake(cluster, keep=True)
    assert "close" not in cluster.calls
    assert "ip netns exec pxd-t0-hz1 iptables-save" in out


def test_teardown_finishes_before_a_ctrl_c_that_arrives_during_it() -> None:
    finished = []
    with pytest.raises(KeyboardInterrupt), demo._signals_deferred():
        signal.raise_signal(signal.SIGINT)
        finished.append("teardown")
    assert finished == ["teardown"]


# ─────────────────────────── prerequisites ───────────────────────────


def test_prerequisites_name_root_and_each_missing_tool() -> None:
    assert missing_prerequisites(0, lambda tool: f"/usr/sbin/{tool}") == []
    problems = missing_prerequisites(
        1000, lambda tool: None if tool in ("conntrack", "iptables-restore") else tool
    )
    assert len(problems) == 2
    assert "needs root" in problems[0]
    assert "iptables-restore, conntrack" in problems[1]


@pytest.mark.root
def test_demo_as_non_root_explains_and_exits_3() -> None:
    require(os.geteuid() == 0, "needs root to switch to an unprivileged user")
    require(shutil.which("setpriv"), "setpriv (util-linux) not installed")
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "proxyd", "demo"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "proxyd demo needs root" in done.stderr
    assert "Traceback" not in done.stderr


# ─────────────────────────── the real sandbox (root + netns) ───────────────────────────


def require_kernel_sandbox() -> None:
    require(os.geteuid() == 0, "needs root (network namespaces)")
    missing = missing_prerequisites(0, shutil.which)
    require(not missing, "; ".join(missing))


def run_real(
    scenario: Scenario, tmpdir: Path, *, keep: bool = False, settle_within: float = 20.0
) -> tuple[demo.DemoReport, demo.NetnsCluster, Layout, str]:
    """The demo as ``proxyd demo`` runs it, its sandbox files under ``tmpdir``."""
    console, out = recording_console()
    clock = SystemClock()
    lay = Layout(demo.new_run_id(), scenario)
    cluster = demo.NetnsCluster(lay, console, clock, tmpdir / f"proxyd-demo-{lay.run_id}")
    try:
        report = demo.run_demo(
            scenario, lay, cluster, console, clock, keep=keep, settle_within=settle_within
        )
    finally:
        print(out.getvalue())  # pytest shows it when the test fails
    return report, cluster, lay, out.getvalue()


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue  # exited meanwhile
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, killed but not yet reaped by this test process, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def assert_nothing_left(lay: Layout, cluster: demo.NetnsCluster, tmpdir: Path) -> None:
    assert namespaces(lay.prefix) == []
    assert [pid for pid in cluster.pids if alive(pid)] == []
    assert processes_mentioning(f"proxyd-demo-{lay.run_id}") == []
    assert not (tmpdir / f"proxyd-demo-{lay.run_id}").exists()


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.slow
def test_demo_passes_every_row_in_time_and_leaves_nothing_behind(tmp_path: Path) -> None:
    require_kernel_sandbox()
    started = time.monotonic()
    report, cluster, lay, out = run_real(SCENARIO, tmp_path)
    seconds = time.monotonic() - started
    failed = [c for phase in report.phases for c in phase.failed]
    assert failed == [], out
    assert [len(p.checks) for p in report.phases] == [len(SCENARIO.expect), 10]
    assert seconds < 60, f"demo took {seconds:.1f} s"
    assert "all rows pass" in out
    assert_nothing_left(lay, cluster, tmp_path)


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.slow
def test_demo_without_topology_fails_rows_and_keep_then_cleanup(tmp_path: Path) -> None:
    """The checks are real: the same cluster served without topology settings (what a
    proxy ignoring topology would do) fails exactly the topology rows. The sandbox is
    kept, still serves, and ``cleanup_sandboxes`` removes it."""
    require_kernel_sandbox()
    broken = dataclasses.replace(without_topology(SCENARIO), steps=())
    tmpdir = Path(tempfile.gettempdir())
    report, cluster, lay, out = run_real(broken, tmpdir, settle_within=2.0, keep=True)
    try:
        failed = {c.probe: c for c in report.phases[0].failed}
        ud1 = failed[Probe("svc-ud1", "bj-1")].observed.answered
        assert ud1 == {"ud1-hz-a", "ud1-hz-b", "ud1-sh-a", "ud1-sh-b"}
        assert failed[Probe("svc-web", "hz-1", Via.NODE_PORT)].observed.answered
        assert Probe("svc-local", "hz-2") in failed
        assert Probe("svc-hints", "bj-1") in failed
        assert Probe("svc-keys", "hz-1") in failed
        assert Probe("svc-dns", "bj-1") in failed
        assert not any(p.service == "svc-plain" for p in failed), "control rows must pass"
        assert "rows failed" in out
        # kept: namespaces, processes and the hints are there, and it still answers
        assert len(namespaces(lay.prefix)) > len(SCENARIO.nodes)
        assert all(alive(pid) for pid in cluster.pids)
        assert f"ip netns exec {lay.node_netns('hz-1')} iptables-save" in out
        again = cluster.probe([Probe("svc-plain", "sh-2")])[Probe("svc-plain", "sh-2")]
        assert again.answered == {"plain-bj", "plain-hz", "plain-sh"}
    finally:
        removed = demo.cleanup_sandboxes(tmpdir, lay.run_id)
        try:
            assert lay.underlay_netns in removed
            assert_nothing_left(lay, cluster, tmpdir)
        finally:
            cluster.close()  # reaps the killed children of this test process


@pytest.mark.root
@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_demo_removes_its_sandbox(sig: signal.Signals) -> None:
    """Interrupted while its proxyd daemons are starting: they and the namespaces go."""
    require_kernel_sandbox()
    before = set(namespaces("pxd-"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxyd", "demo"], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        run_id, daemons = "", []
        while len(daemons) < len(SCENARIO.nodes) and time.monotonic() < deadline:
            assert proc.poll() is None, "the demo ended before it was interrupted"
            time.sleep(0.05)
            mine = set(namespaces("pxd-")) - before
            run_id = next(iter(mine)).split("-")[1] if mine else ""
            started = f"proxyd-demo-{run_id}/kubeconfig\0--node-name"  # proxyd run's argv
            daemons = processes_mentioning(started) if run_id else []
        assert len(daemons) >= len(SCENARIO.nodes), "the demo never started its daemons"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert namespaces(f"pxd-{run_id}-") == []
    assert processes_mentioning(f"proxyd-demo-{run_id}") == []
    assert not (Path(tempfile.gettempdir()) / f"proxyd-demo-{run_id}").exists()
