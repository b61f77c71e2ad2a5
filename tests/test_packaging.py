"""Packaging: the systemd unit, daemonset.yaml, the Dockerfile, and RBAC = what the code does.

Each linter is the real tool (systemd-analyze, kubernetes-validate, yamllint, hadolint);
a missing tool skips locally and fails in CI. The RBAC test runs the daemon in-process
against the fake API server, records every request it makes, and compares the set of
(API group, resource, verb) with the ClusterRole.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from proxyd.config import load_file, resolve
from tests.builders import node_obj, pool_obj, svc_obj
from tests.conftest import require
from tests.test_daemon import cluster, eventually, kubernetes_objects, web  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "proxyd.service"


def tool(name: str) -> str:
    """A tool from this Python environment's bin directory, else PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    require(found, f"{name} is not installed (pip install -e '.[test]' / .ci/install)")
    assert found is not None
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


# --- systemd ---------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_verifies_clean(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    proxyd = shutil.which("proxyd")
    require(proxyd, "the proxyd console script is not installed (pip install -e .)")
    # Only the install prefix differs on this machine: /usr/local/bin/proxyd → where pip put it.
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/proxyd run " in text
    unit = tmp_path / "proxyd.service"
    unit.write_text(text.replace("/usr/local/bin/proxyd", str(proxyd)))
    done = run(analyze, "verify", str(unit))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_unit_has_notify_watchdog_least_privilege_and_netlink() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["WatchdogSec"] and s["Restart"] == ["always"]
    assert set(s["CapabilityBoundingSet"][0].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(s["AmbientCapabilities"][0].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert "AF_NETLINK" in s["RestrictAddressFamilies"][0].split()
    assert s["KillMode"] == ["mixed"]  # SIGTERM to proxyd only: a restore in flight finishes
    # "-": a node where nothing created the lock yet must not fail the mount namespace
    assert s["ReadWritePaths"] == ["-/run/xtables.lock"]
    assert "User" not in s  # uid 0 bounded by capabilities: docs/deploy.md "Why uid 0"


def test_systemd_env_example_names_the_config_the_unit_reads() -> None:
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "systemd" / "proxyd.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert env["PROXYD_CONFIG"] == "/etc/proxyd/config.yaml"
    assert "PROXYD_ARGS" in env


# --- daemonset.yaml -------------------------------------------------------------------------


def documents() -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "daemonset.yaml").read_text()) if d]


def by_kind(kind: str) -> dict:
    [doc] = [d for d in documents() if d["kind"] == kind]
    return doc


def test_daemonset_yaml_passes_yamllint() -> None:
    tool("yamllint")
    done = run(sys.executable, "-m", "yamllint", "--strict", str(ROOT / "daemonset.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("version", ["1.30.0", "1.31.0"])
def test_daemonset_yaml_validates_against_kubernetes(version: str) -> None:
    tool("kubernetes-validate")
    done = run(sys.executable, "-m", "kubernetes_validate", "-k", version, "--strict",
               str(ROOT / "daemonset.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(documents())


def test_daemonset_runs_everywhere_with_least_privilege() -> None:
    pod = by_kind("DaemonSet")["spec"]["template"]
    spec = pod["spec"]
    [container] = spec["containers"]
    sc = container["securityContext"]
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert {"name": "NODE_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container["env"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/lib/modules"]["readOnly"] is True
    assert "/run/xtables.lock" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/run/xtables.lock"]["name"]]["hostPath"] == {
        "path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 10256}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 10256}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "10249"
    assert spec["serviceAccountName"] == by_kind("ServiceAccount")["metadata"]["name"]


def test_configmap_config_is_accepted_by_proxyd(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(by_kind("ConfigMap")["data"]["config.yaml"])
    values, notes = load_file(str(path))
    cfg = resolve(values, {}, env={"NODE_NAME": "n1"})
    assert notes == []
    assert cfg.metrics_bind_address == "0.0.0.0:10249"  # scrapeable, as annotated


def test_example_config_names_every_field_proxyd_reads() -> None:
    """docs/deploy.md calls systemd/config.yaml the example with every field."""
    from proxyd import config

    values, notes = load_file(str(ROOT / "systemd" / "config.yaml"))
    every = set()
    for table in (config._TOP, config._IPTABLES, config._IPVS, config._CLIENT_CONNECTION,
                  config._CONNTRACK):
        every |= set(table.values())
    assert notes == []
    assert every - set(values) == {"node_name"}  # hostnameOverride: shown commented out


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    done = run(tool("hadolint"), str(ROOT / "Dockerfile"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_pins_base_and_packages_and_enters_proxyd_run() -> None:
    text = (ROOT / "Dockerfile").read_text()
    bases = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert all("slim" in b and b.count(":") == 1 and not b.endswith(":latest") for b in bases)
    for package in ("iptables=", "ipset=", "conntrack="):
        assert package in text
    assert 'ENTRYPOINT ["proxyd", "run"]' in text
    users = [line for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] != "USER 0" and "root" not in users[-1]


# --- RBAC -------------------------------------------------------------------------------

_GROUP = {
    "services": "",
    "nodes": "",
    "events": "",
    "endpointslices": "discovery.k8s.io",
    "nodepools": "apps.openyurt.io",
}
_VERB = {"page": "list", "put": "update"}  # fake API labels → RBAC verbs


def cluster_role_grants() -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in by_kind("ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.fixture
def recorded(cluster) -> Iterator[set[tuple[str, str, str]]]:  # noqa: F811
    """(group, resource, verb) of every request a daemon made in a short life that
    touched every code path talking to the API: informers, relists, events."""
    warned = svc_obj("web", topologyKeys=["*", "kubernetes.io/hostname"])
    run = cluster(node_obj("n1", pool="p"), pool_obj("p", ["n1"]), *kubernetes_objects(),
                  warned, web(1)[1])
    eventually(lambda: run.api.objects("Event"), what="an event posted")
    run.api.compact()
    run.api.drop_watches()  # resume → 410 → relist: the list path again
    eventually(lambda: run.api.counts("services").get("list", 0) >= 2, what="relisted")
    yield {
        (_GROUP[plural], plural, _VERB.get(verb, verb))
        for plural in _GROUP
        for verb, n in run.api.counts(plural).items()
        if n
    }


def test_cluster_role_is_exactly_what_the_daemon_requests(recorded) -> None:
    assert recorded == cluster_role_grants()
