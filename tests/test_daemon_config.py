"""``proxyd run`` configuration: file + flags + environment → Config."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from proxyd.cli import build_parser
from proxyd.commands.run import config_from_args
from proxyd.config import (
    Config,
    IptablesBackendChoice,
    LogFormat,
    ProxyMode,
    interface_name,
    load_file,
    parse_bind_address,
    parse_duration,
    resolve,
)
from proxyd.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("1m", 60.0, id="minutes"),
        pytest.param("1m30s", 90.0, id="compound"),
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("1.5h", 5400.0, id="fractional-hours"),
        pytest.param("0s", 0.0, id="zero"),
        pytest.param("2", 2.0, id="bare-number-is-seconds"),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1m 30s", "-1s", "-5", "inf", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(InputError) as err:
        parse_duration(text, where="syncPeriod")
    assert err.value.reason == "bad_duration"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:10249", ("127.0.0.1", 10249)),
        ("[::1]:10256", ("::1", 10256)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("", None),
    ],
)
def test_parse_bind_address(text: str, want) -> None:
    assert parse_bind_address(text, where="x") == want


@pytest.mark.parametrize("text", ["10249", "localhost:10249", "1.2.3.4:99999", "1.2.3.4:"])
def test_parse_bind_address_rejects(text: str) -> None:
    with pytest.raises(InputError):
        parse_bind_address(text, where="metricsBindAddress")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


KUBE_PROXY_FILE = """\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig
  qps: 5
clusterCIDR: 10.244.0.0/16
mode: ipvs
conntrack:
  maxPerCore: 32768
iptables:
  masqueradeAll: true
  masqueradeBit: 15
  syncPeriod: 1m
  minSyncPeriod: 2s
ipvs:
  scheduler: wlc
  syncPeriod: 45s
  minSyncPeriod: 500ms
  strictARP: true
metricsBindAddress: 0.0.0.0:10249
healthzBindAddress: 0.0.0.0:10256
nodePortAddresses: [192.168.0.0/16]
proxyName: proxyd-edge
iptablesBackend: legacy
logFormat: json
"""


def test_kube_proxy_file_maps_and_reports_ignored_fields(tmp_path: Path) -> None:
    values, notes = load_file(write(tmp_path, KUBE_PROXY_FILE))
    cfg = resolve(values, {}, env={"NODE_NAME": "Edge-1"})
    assert cfg == Config(
        node_name="edge-1",
        kubeconfig="/var/lib/kube-proxy/kubeconfig",
        proxy_mode=ProxyMode.IPVS,
        ipvs_scheduler="wlc",
        ipvs_strict_arp=True,
        cluster_cidr="10.244.0.0/16",
        nodeport_addresses=("192.168.0.0/16",),
        masquerade_all=True,
        masquerade_bit=15,
        metrics_bind_address="0.0.0.0:10249",
        healthz_bind_address="0.0.0.0:10256",
        sync_period=45.0,
        min_sync_period=0.5,
        proxy_name="proxyd-edge",
        iptables_backend=IptablesBackendChoice.LEGACY,
        log_format=LogFormat.JSON,
    )
    assert {n.split(": ", 1)[1] for n in notes} == {
        "clientConnection.qps is not implemented by proxyd; ignored",
    }


def test_iptables_mode_takes_the_iptables_periods(tmp_path: Path) -> None:
    values, _ = load_file(write(tmp_path, KUBE_PROXY_FILE.replace("mode: ipvs", "mode: ''")))
    cfg = resolve(values, {}, env={"NODE_NAME": "n"})
    assert (cfg.proxy_mode, cfg.sync_period, cfg.min_sync_period) == (
        ProxyMode.IPTABLES, 60.0, 2.0)


def test_flags_override_file(tmp_path: Path) -> None:
    values, _ = load_file(write(tmp_path, KUBE_PROXY_FILE))
    cfg = resolve(values, {"proxy_mode": "iptables", "sync_period": "10s",
                           "masquerade_all": False, "node_name": "flag-node",
                           "nodeport_addresses": "10.0.0.0/8,172.16.0.0/12",
                           "log_format": None},
                  env={"NODE_NAME": "env-node"})
    assert cfg.proxy_mode is ProxyMode.IPTABLES
    assert cfg.sync_period == 10.0
    assert cfg.min_sync_period == 2.0  # the file's iptables value still applies
    assert cfg.masquerade_all is False
    assert cfg.node_name == "flag-node"
    assert cfg.nodeport_addresses == ("10.0.0.0/8", "172.16.0.0/12")
    assert cfg.log_format is LogFormat.JSON  # None flag = not given


@pytest.mark.parametrize(
    ("flag", "file_value", "env", "want"),
    [
        pytest.param("f", "c", "e", "f", id="flag-first"),
        pytest.param(None, "c", "e", "c", id="then-file"),
        pytest.param(None, None, "e", "e", id="then-NODE_NAME"),
        pytest.param(None, None, None, "host-1", id="then-hostname"),
    ],
)
def test_node_name_precedence(flag, file_value, env, want) -> None:
    cfg = resolve({"node_name": file_value} if file_value else {}, {"node_name": flag},
                  env={"NODE_NAME": env} if env else {}, hostname="Host-1")
    assert cfg.node_name == want


def test_defaults_match_kube_proxy() -> None:
    cfg = resolve({}, {}, env={"NODE_NAME": "n"})
    assert (cfg.metrics_bind_address, cfg.healthz_bind_address) == (
        "127.0.0.1:10249", "0.0.0.0:10256")
    assert (cfg.sync_period, cfg.min_sync_period, cfg.masquerade_bit) == (30.0, 1.0, 14)
    assert (cfg.proxy_mode, cfg.ipvs_scheduler, cfg.proxy_name) == (
        ProxyMode.IPTABLES, "rr", "proxyd")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param("clusterCidr: 10.0.0.0/8\n", "clusterCidr", id="typo-top"),
        pytest.param("iptables:\n  syncperiod: 1s\n", "iptables.syncperiod", id="typo-nested"),
        pytest.param("iptables: [1]\n", "iptables", id="section-not-mapping"),
        pytest.param("- a\n", "-", id="document-not-mapping"),
        pytest.param("a: [\n", "-", id="not-yaml"),
    ],
)
def test_bad_file_is_an_input_error_naming_the_field(tmp_path: Path, text, field) -> None:
    with pytest.raises(InputError) as err:
        load_file(write(tmp_path, text))
    assert err.value.field == field
    assert str(tmp_path) in err.value.where


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        pytest.param({"proxy_mode": "nftables"}, "mode", id="mode"),
        pytest.param({"sync_period": "0s"}, "syncPeriod", id="zero-period"),
        pytest.param({"sync_period": "1s", "min_sync_period": "2s"}, "minSyncPeriod",
                     id="min-above-period"),
        pytest.param({"metrics_bind_address": "localhost:1"}, "metricsBindAddress",
                     id="bind-address"),
        pytest.param({"cluster_cidr": "10.0.0.0/33"}, "clusterCIDR/nodePortAddresses",
                     id="cidr"),
        pytest.param({"masquerade_bit": 32}, "masquerade_bit", id="mark-bit"),
        pytest.param({"ipvs_strict_arp": "yes"}, "ipvs_strict_arp", id="strict-arp"),
        pytest.param({"log_level": "trace"}, "logLevel", id="log-level"),
        pytest.param({"iptables_backend": "xtables"}, "iptables_backend", id="backend"),
        pytest.param({"ipvs_interface": "a-name-too-long0"}, "ipvs.interface", id="interface"),
    ],
)
def test_bad_values_are_refused(flags, field) -> None:
    with pytest.raises(InputError) as err:
        resolve({}, flags, env={"NODE_NAME": "n"})
    assert err.value.field == field


def test_dual_stack_cluster_cidr_is_accepted() -> None:
    cfg = resolve({}, {"cluster_cidr": "10.244.0.0/16,fd00::/48"}, env={"NODE_NAME": "n"})
    assert cfg.cluster_cidr == "10.244.0.0/16,fd00::/48"


def test_shipped_example_config_loads() -> None:
    values, notes = load_file(str(ROOT / "systemd" / "config.yaml"))
    cfg = resolve(values, {}, env={"NODE_NAME": "n"})
    assert cfg.proxy_mode is ProxyMode.IPTABLES
    assert notes == []


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    values, notes = load_file(write(tmp_path, ""))
    assert (values, notes) == ({}, [])


# --- the command line -------------------------------------------------------------------


def run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_every_run_flag_is_a_config_field() -> None:
    dests = {a.dest for a in run_parser()._actions if a.option_strings} - {"help", "config"}
    assert dests <= {f.name for f in dataclasses.fields(Config)}
    assert len(dests) == 25


def test_flags_parse_and_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, KUBE_PROXY_FILE)
    args = build_parser().parse_args([
        "run", "--config", path, "--hostname-override", "n7", "--proxy-mode", "iptables",
        "--sync-period", "1m", "--no-masquerade-all", "--nodeport-addresses", "10.0.0.0/8",
        "--log-level", "debug",
    ])
    cfg, notes = config_from_args(args, {"NODE_NAME": "ignored"})
    assert (cfg.node_name, cfg.proxy_mode, cfg.sync_period, cfg.masquerade_all) == (
        "n7", ProxyMode.IPTABLES, 60.0, False)
    assert cfg.nodeport_addresses == ("10.0.0.0/8",)
    assert cfg.ipvs_scheduler == "wlc"  # from the file: not given as a flag
    assert cfg.log_level == "debug"
    assert len(notes) == 1


def test_ipvs_interface_comes_from_the_ipvs_section_and_the_flag_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "mode: ipvs\nipvs:\n  interface: kube-ipvs0\n")
    values, notes = load_file(path)
    assert resolve(values, {}, env={"NODE_NAME": "n"}).ipvs_interface == "kube-ipvs0"
    assert notes == []
    args = build_parser().parse_args(["run", "--config", path, "--ipvs-interface", "lb0"])
    assert config_from_args(args, {"NODE_NAME": "n"})[0].ipvs_interface == "lb0"
    assert resolve({}, {}, env={"NODE_NAME": "n"}).ipvs_interface == "proxyd-ipvs0"


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a:b", "a b", ".", ".."])
def test_interface_names_the_kernel_refuses_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="network device name"):
        interface_name(name)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--ipvs-interface", name])


@pytest.mark.parametrize(
    ("text", "argv", "want"),
    [
        pytest.param("", [], False, id="default-off"),
        pytest.param("ipvs:\n  strictARP: true\n", [], True, id="file"),
        pytest.param("ipvs:\n  strictARP: false\n", ["--ipvs-strict-arp"], True, id="flag-on"),
        pytest.param("ipvs:\n  strictARP: true\n", ["--no-ipvs-strict-arp"], False,
                     id="flag-off-wins"),
    ],
)
def test_strict_arp_comes_from_the_ipvs_section_and_the_flag_wins(
    tmp_path: Path, text: str, argv: list[str], want: bool
) -> None:
    path = write(tmp_path, "mode: ipvs\n" + text)
    assert load_file(path)[1] == []  # implemented: no "ignored" note
    args = build_parser().parse_args(["run", "--config", path, *argv])
    assert config_from_args(args, {"NODE_NAME": "n"})[0].ipvs_strict_arp is want


@pytest.mark.parametrize(
    ("text", "argv", "want"),
    [
        pytest.param("", [], True, id="default-on-as-kube-proxy"),
        pytest.param("iptables:\n  localhostNodePorts: false\n", [], False, id="file"),
        pytest.param("iptables:\n  localhostNodePorts: false\n",
                     ["--iptables-localhost-nodeports"], True, id="flag-on-wins"),
        pytest.param("iptables:\n  localhostNodePorts: true\n",
                     ["--no-iptables-localhost-nodeports"], False, id="flag-off-wins"),
    ],
)
def test_localhost_nodeports_come_from_the_iptables_section_and_the_flag_wins(
    tmp_path: Path, text: str, argv: list[str], want: bool
) -> None:
    path = write(tmp_path, "mode: iptables\n" + text)
    assert load_file(path)[1] == []  # implemented now: no "ignored" note
    args = build_parser().parse_args(["run", "--config", path, *argv])
    assert config_from_args(args, {"NODE_NAME": "n"})[0].localhost_nodeports is want


def test_localhost_nodeports_must_be_a_boolean(tmp_path: Path) -> None:
    values, _ = load_file(write(tmp_path, "iptables:\n  localhostNodePorts: 'yes'\n"))
    with pytest.raises(InputError, match="not a boolean"):
        resolve(values, {}, env={"NODE_NAME": "n"})


# --- conntrack (kube-proxy's section, applied at start by proxyd.conntrack_tuning) ------------

CONNTRACK_FILE = """\
conntrack:
  max: null
  maxPerCore: 65536
  min: 262144
  tcpEstablishedTimeout: 2h0m0s
  tcpCloseWaitTimeout: 0s
  tcpBeLiberal: true
  udpTimeout: 30s
  udpStreamTimeout: 2m
"""


def conntrack_of(cfg: Config) -> dict[str, object]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Config)
            if f.name.startswith("conntrack_")}


def test_conntrack_defaults_are_kube_proxys() -> None:
    assert conntrack_of(resolve({}, {}, env={"NODE_NAME": "n"})) == {
        "conntrack_max_per_core": 32768,
        "conntrack_min": 131072,
        "conntrack_tcp_timeout_established": 86400.0,
        "conntrack_tcp_timeout_close_wait": 3600.0,
        "conntrack_tcp_be_liberal": False,
        "conntrack_udp_timeout": 0.0,
        "conntrack_udp_timeout_stream": 0.0,
    }


def test_conntrack_section_maps_and_only_max_is_ignored(tmp_path: Path) -> None:
    values, notes = load_file(write(tmp_path, CONNTRACK_FILE))
    assert [n.split(": ", 1)[1] for n in notes] == [
        "conntrack.max is not implemented by proxyd; ignored"]
    assert conntrack_of(resolve(values, {}, env={"NODE_NAME": "n"})) == {
        "conntrack_max_per_core": 65536,
        "conntrack_min": 262144,
        "conntrack_tcp_timeout_established": 7200.0,
        "conntrack_tcp_timeout_close_wait": 0.0,
        "conntrack_tcp_be_liberal": True,
        "conntrack_udp_timeout": 30.0,
        "conntrack_udp_timeout_stream": 120.0,
    }


def test_conntrack_flags_are_kube_proxys_and_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, CONNTRACK_FILE)
    args = build_parser().parse_args([
        "run", "--config", path, "--conntrack-max-per-core", "0", "--conntrack-min", "1",
        "--conntrack-tcp-timeout-established", "1h30m",
        "--conntrack-tcp-timeout-close-wait", "60s", "--no-conntrack-tcp-be-liberal",
        "--conntrack-udp-timeout", "0", "--conntrack-udp-timeout-stream", "3m",
    ])
    assert conntrack_of(config_from_args(args, {"NODE_NAME": "n"})[0]) == {
        "conntrack_max_per_core": 0,
        "conntrack_min": 1,
        "conntrack_tcp_timeout_established": 5400.0,
        "conntrack_tcp_timeout_close_wait": 60.0,
        "conntrack_tcp_be_liberal": False,
        "conntrack_udp_timeout": 0.0,
        "conntrack_udp_timeout_stream": 180.0,
    }


def test_conntrack_timeouts_drop_fractions_as_kube_proxy() -> None:
    cfg = resolve({}, {"conntrack_tcp_timeout_close_wait": "90.9s"}, env={"NODE_NAME": "n"})
    assert cfg.conntrack_tcp_timeout_close_wait == 90.0


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        pytest.param("conntrack_tcp_timeout_established", "500ms", ">= 1s",
                     id="sub-second-would-write-0"),
        pytest.param("conntrack_udp_timeout", "-1s", "duration", id="negative-timeout"),
        pytest.param("conntrack_max_per_core", -1, "integer >= 0", id="negative-per-core"),
        pytest.param("conntrack_min", "131072", "integer >= 0", id="min-as-string"),
        pytest.param("conntrack_min", True, "integer >= 0", id="min-as-bool"),
        pytest.param("conntrack_tcp_be_liberal", "yes", "not a boolean", id="liberal-not-bool"),
    ],
)
def test_bad_conntrack_values_are_refused(key: str, value: object, match: str) -> None:
    with pytest.raises(InputError, match=match):
        resolve({key: value}, {}, env={"NODE_NAME": "n"})


def test_conntrack_int_flags_must_be_integers() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--conntrack-min", "lots"])
