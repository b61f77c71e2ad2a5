"""``proxyd plan`` through a subprocess, on examples/edge-cluster and on broken inputs.

The expected endpoint sets below are written from the example's design (the comment
header of examples/edge-cluster/services.yaml), not copied from the program's output.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import ep_obj, port_obj, slice_obj, svc_obj

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "edge-cluster"

Key = tuple[str, str, str]  # service, portName, protocol

API = ("default/api", "https", "TCP")
KUBERNETES = ("default/kubernetes", "https", "TCP")
UD1 = ("default/svc-ud1", "", "TCP")
WEB = ("default/web", "http", "TCP")
WEBAPP = ("default/webapp", "http", "TCP")
DNS_UDP = ("kube-system/node-cache", "dns", "UDP")
DNS_TCP = ("kube-system/node-cache", "dns-tcp", "TCP")

# Same on every node: no topology (10.244.1.20 is terminating while others are ready)
# and the API server endpoint without a nodeName.
_EVERYWHERE: dict[Key, set[str]] = {
    API: {"10.244.0.20:8443", "10.244.2.20:8443"},
    KUBERNETES: {"172.18.0.2:6443"},
}

# node → service port → internal endpoints (external is the same: eTP=Cluster everywhere).
EXPECTED: dict[str, dict[Key, set[str]]] = {
    "kind-control-plane": {  # beijing, cn-beijing-a
        **_EVERYWHERE,
        UD1: set(),  # no pod in pool beijing: rejected, never leaves the pool
        WEB: {"10.244.2.10:8080", "10.244.1.10:8080"},  # no hint for cn-beijing-a
        WEBAPP: {"10.244.2.30:8080", "10.244.1.30:8080"},  # falls through to "*"
        DNS_UDP: {"10.244.0.5:53"},
        DNS_TCP: {"10.244.0.5:53"},
    },
    "kind-worker": {  # hangzhou, cn-hangzhou-a
        **_EVERYWHERE,
        UD1: {"10.244.2.2:9376", "10.244.2.3:9376"},
        WEB: {"10.244.2.10:8080"},
        WEBAPP: {"10.244.2.30:8080"},
        DNS_UDP: {"10.244.2.5:53"},
        DNS_TCP: {"10.244.2.5:53"},
    },
    "kind-worker3": {  # hangzhou, cn-hangzhou-a, no pods of its own
        **_EVERYWHERE,
        UD1: {"10.244.2.2:9376", "10.244.2.3:9376"},  # pool membership from the NodePool
        WEB: {"10.244.2.10:8080"},
        WEBAPP: {"10.244.2.30:8080"},  # same zone as kind-worker
        DNS_UDP: set(),  # hostname scope, no local pod: rejected
        DNS_TCP: set(),
    },
    "kind-worker2": {  # shanghai, cn-shanghai-a
        **_EVERYWHERE,
        UD1: {"10.244.1.2:9376", "10.244.1.3:9376"},
        WEB: {"10.244.1.10:8080"},
        WEBAPP: {"10.244.1.30:8080"},
        DNS_UDP: {"10.244.1.5:53"},
        DNS_TCP: {"10.244.1.5:53"},
    },
}

EXPECTED_MODES: dict[str, dict[Key, str]] = {
    "kind-control-plane": {API: "none", UD1: "openyurt:nodepool", WEBAPP: "topologyKeys:*"},
    "kind-worker": {
        UD1: "openyurt:nodepool",
        WEB: "PreferSameZone",
        WEBAPP: "topologyKeys:kubernetes.io/hostname",
    },
    "kind-worker3": {WEB: "PreferSameZone", WEBAPP: "topologyKeys:topology.kubernetes.io/zone"},
    "kind-worker2": {WEB: "PreferSameZone", WEBAPP: "topologyKeys:kubernetes.io/hostname"},
}

SERVICE_KEYS = {
    "service", "portName", "protocol", "port", "clusterIPs", "nodePort", "externalIPs",
    "loadBalancerIPs", "mode", "internalEndpoints", "externalEndpoints",
}


def proxyd(*args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "proxyd", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )


@functools.cache
def plan_json(node: str) -> dict[str, Any]:
    run = proxyd("plan", "--node", node, "--manifests", str(EXAMPLE), "--format", "json")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def _by_key(plan: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {(s["service"], s["portName"], s["protocol"]): s for s in plan["services"]}


@pytest.mark.parametrize("node", sorted(EXPECTED))
def test_json_shape(node: str) -> None:
    plan = plan_json(node)
    assert set(plan) == {"node", "services"}
    assert plan["node"] == node
    for entry in plan["services"]:
        assert set(entry) >= SERVICE_KEYS
        assert isinstance(entry["port"], int)
        assert entry["nodePort"] is None or isinstance(entry["nodePort"], int)
        for key in ("clusterIPs", "externalIPs", "loadBalancerIPs", "internalEndpoints",
                    "externalEndpoints"):
            assert all(isinstance(v, str) for v in entry[key]), key
        assert entry["internalEndpoints"] == sorted(entry["internalEndpoints"])
        assert entry["externalEndpoints"] == sorted(entry["externalEndpoints"])


@pytest.mark.parametrize("node", sorted(EXPECTED))
def test_one_entry_per_service_port_sorted(node: str) -> None:
    keys = [(s["service"].split("/"), s["portName"], s["protocol"])
            for s in plan_json(node)["services"]]
    assert keys == sorted(keys)
    assert set(_by_key(plan_json(node))) == set(EXPECTED[node])


@pytest.mark.parametrize("node", sorted(EXPECTED))
def test_endpoint_sets_per_node(node: str) -> None:
    got = _by_key(plan_json(node))
    assert {k: set(v["internalEndpoints"]) for k, v in got.items()} == EXPECTED[node]
    assert {k: set(v["externalEndpoints"]) for k, v in got.items()} == EXPECTED[node]


@pytest.mark.parametrize(
    ("node", "key", "mode"),
    [(node, key, mode) for node, modes in EXPECTED_MODES.items() for key, mode in modes.items()],
)
def test_modes_say_which_rule_decided(node: str, key: Key, mode: str) -> None:
    assert _by_key(plan_json(node))[key]["mode"] == mode


@pytest.mark.parametrize("node", sorted(EXPECTED))
def test_hostname_scope_is_an_openyurt_mode(node: str) -> None:
    assert _by_key(plan_json(node))[DNS_UDP]["mode"].startswith("openyurt:")


def test_service_addresses_are_reported() -> None:
    got = _by_key(plan_json("kind-worker"))
    assert (got[WEB]["clusterIPs"], got[WEB]["nodePort"], got[WEB]["loadBalancerIPs"]) == (
        ["10.96.0.80"], 30080, ["203.0.113.80"])
    assert (got[API]["externalIPs"], got[API]["nodePort"]) == (["198.51.100.20"], None)
    assert (got[UD1]["port"], got[DNS_UDP]["port"]) == (80, 53)


def test_table_format_shows_every_endpoint_uncut_at_80_columns() -> None:
    run = proxyd("plan", "--node", "kind-worker3", "--manifests", str(EXAMPLE), "--format",
                 "table", columns=80)
    assert run.returncode == 0, run.stderr
    assert max(len(line) for line in run.stdout.splitlines()) <= 80
    endpoints = set().union(*EXPECTED["kind-worker3"].values())
    for text in ["kind-worker3", "default/svc-ud1", "kube-system/node-cache", "PreferSameZone",
                 "reject", *endpoints]:
        assert text in run.stdout, text


def test_table_shows_external_endpoints_when_they_differ(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump_all([
        svc_obj(svc_type="NodePort", externalTrafficPolicy="Local",
                ports=[port_obj(80, nodePort=30080)]),
        slice_obj("web", [ep_obj("10.244.1.2", node="n1"), ep_obj("10.244.2.2", node="n2")]),
    ]))
    run = proxyd("plan", "--node", "n2", "--manifests", str(path), "--format", "table")
    assert run.returncode == 0, run.stderr
    column = [line.split("│")[2].strip() for line in run.stdout.splitlines()
              if line.startswith("│")]
    assert column == ["10.244.1.2:8080", "10.244.2.2:8080", "external:", "10.244.2.2:8080"]


def _both_local(tmp_path: Path) -> Path:
    """n2 has no endpoint of the NodePort service with both traffic policies Local."""
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump_all([
        svc_obj(svc_type="NodePort", externalTrafficPolicy="Local", internalTrafficPolicy="Local",
                ports=[port_obj(80, nodePort=30080)]),
        slice_obj("web", [ep_obj("10.244.1.2", node="n1")]),
        svc_obj("plain", cluster_ip="10.96.0.11"),
    ]))
    return path


def test_json_shows_the_short_circuit_set_only_where_the_plan_has_one(tmp_path: Path) -> None:
    run = proxyd("plan", "--node", "n2", "--manifests", str(_both_local(tmp_path)))
    assert run.returncode == 0, run.stderr
    got = {s["service"]: s for s in json.loads(run.stdout)["services"]}
    web = got["default/web"]
    assert (web["internalEndpoints"], web["externalEndpoints"]) == ([], [])
    assert web["clusterEndpoints"] == ["10.244.1.2:8080"]
    assert "clusterEndpoints" not in got["default/plain"]


def test_table_shows_the_short_circuit_set(tmp_path: Path) -> None:
    path = _both_local(tmp_path)
    run = proxyd("plan", "--node", "n2", "--manifests", str(path), "--format", "table")
    assert run.returncode == 0, run.stderr
    column = [line.split("│")[2].strip() for line in run.stdout.splitlines()
              if line.startswith("│")]
    assert column[column.index("short-circuit:") + 1] == "10.244.1.2:8080"
    assert column.count("short-circuit:") == 1


def test_manifests_may_be_repeated() -> None:
    run = proxyd("plan", "--node", "kind-worker", "--manifests", str(EXAMPLE / "cluster.yaml"),
                 "--manifests", str(EXAMPLE / "services.yaml"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == plan_json("kind-worker")


def test_notes_go_to_stderr(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump_all(
        [svc_obj(), {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]))
    run = proxyd("plan", "--node", "ghost", "--manifests", str(path))
    assert run.returncode == 0, run.stderr
    assert f"{path} document 2: ignoring kind ConfigMap" in run.stderr
    assert "ghost" in run.stderr  # the node is not among the manifests
    assert json.loads(run.stdout)["node"] == "ghost"


def test_proxy_name_selects_services(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    other = svc_obj("other", labels={"service.kubernetes.io/service-proxy-name": "kube-router"})
    path.write_text(yaml.safe_dump_all([svc_obj("mine"), other, slice_obj("other", ["10.0.0.1"]),
                                        slice_obj("mine", ["10.0.0.2"])]))

    def services(*extra: str) -> set[str]:
        run = proxyd("plan", "--node", "n", "--manifests", str(path), *extra)
        assert run.returncode == 0, run.stderr
        return {s["service"] for s in json.loads(run.stdout)["services"]}

    assert services() == {"default/mine"}  # labelled for another proxy: left alone
    assert services("--proxy-name", "kube-router") == {"default/mine", "default/other"}


# --- malformed input ---------------------------------------------------------------------

_GOOD = yaml.safe_dump(svc_obj("ok"))


@pytest.mark.parametrize(
    ("second_doc", "expected"),
    [
        pytest.param("kind: Service\nmetadata: [\n", ["document 2", "line "], id="bad-yaml"),
        pytest.param(yaml.safe_dump(svc_obj("web", ports=[port_obj(80), port_obj("x", name="b")])),
                     ["document 2", "Service default/web", "spec.ports[1].port"],
                     id="port-not-a-number"),
        pytest.param(yaml.safe_dump(svc_obj("web", cluster_ip="10.96.0.999")),
                     ["document 2", "Service default/web", "spec.clusterIP"], id="invalid-ip"),
        pytest.param(yaml.safe_dump({**svc_obj(), "metadata": {"namespace": "default"}}),
                     ["document 2", "Service default/<no name>", "metadata.name"],
                     id="service-without-name"),
        pytest.param(yaml.safe_dump({**slice_obj("web"), "metadata": {"name": "s"}}),
                     ["document 2", "EndpointSlice default/s", "kubernetes.io/service-name"],
                     id="slice-without-service-label"),
    ],
)
def test_malformed_input_is_one_line_exit_2(tmp_path: Path, second_doc: str,
                                            expected: list[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(_GOOD + "---\n" + second_doc)
    run = proxyd("plan", "--node", "n", "--manifests", str(path))
    assert run.returncode == 2
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    for text in [str(path), *expected]:
        assert text in lines[0], text


def test_unreadable_path_is_one_line_exit_2(tmp_path: Path) -> None:
    run = proxyd("plan", "--node", "n", "--manifests", str(tmp_path / "missing.yaml"))
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"proxyd plan: {tmp_path / 'missing.yaml'}: cannot read: "
                                       "No such file or directory"]


def test_manifests_and_kubeconfig_exclude_each_other() -> None:
    run = proxyd("plan", "--node", "n", "--manifests", str(EXAMPLE), "--kubeconfig", "k")
    assert run.returncode == 2
    assert "not allowed with" in run.stderr


def test_kubeconfig_source_gives_the_same_plan_as_the_manifests(tmp_path: Path) -> None:
    from proxyd.sandbox.fakeapi import FakeApiServer
    from proxyd.sources.manifests import read_objects

    with FakeApiServer() as server:
        server.apply_all(dict(obj) for _, obj in read_objects([str(EXAMPLE)]))
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        run = proxyd("plan", "--node", "kind-worker3", "--kubeconfig", kubeconfig)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == plan_json("kind-worker3")


def test_missing_kubeconfig_is_one_line_exit_2(tmp_path: Path) -> None:
    run = proxyd("plan", "--node", "n", "--kubeconfig", str(tmp_path / "nope"))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert str(tmp_path / "nope") in run.stderr
