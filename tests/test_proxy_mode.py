"""``--proxy-mode``: one vocabulary (config.ProxyMode) for every command, and the daemon's
IPVS backend programs every IP family the kernel has."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

import proxyd.backends.commands_runner as commands_runner
import proxyd.backends.iptables as iptables
import proxyd.backends.ipvs_netlink as ipvs_netlink
import proxyd.commands.apply as apply_command
from proxyd.backends.commands_runner import CompletedRun
from proxyd.backends.ipvs import DEFAULT_INTERFACE, IpvsBackend, KernelDest, Op, OpError
from proxyd.backends.ipvs_plan import SetSpec, VirtualServer, VsKey
from proxyd.cli import build_parser
from proxyd.commands.run import make_backend
from proxyd.config import Config, IptablesBackendChoice, ProxyMode
from proxyd.model import IPFamily
from tests.builders import ep, node_plan, sp


@pytest.mark.parametrize("mode", list(ProxyMode))
def test_every_command_speaks_config_proxy_mode(mode: ProxyMode) -> None:
    parser = build_parser()
    applied = parser.parse_args(
        ["apply", "--manifests", "m", "--node", "n", "--proxy-mode", mode.value]
    )
    ran = parser.parse_args(["run", "--proxy-mode", mode.value])
    assert ProxyMode(applied.proxy_mode) is mode and ProxyMode(ran.proxy_mode) is mode
    assert not hasattr(apply_command, "PROXY_MODES")  # no second definition


class EmptyKernel:
    """An IpvsClient with nothing in it that accepts every change."""

    def prepare(self, interface: str, sets: Sequence[SetSpec], sysctls: Mapping[str, str]) -> None:
        pass

    def services(self) -> dict[VsKey, VirtualServer]:
        return {}

    def dests(self, keys: Iterable[VsKey]) -> dict[VsKey, list[KernelDest]]:
        return {}

    def addresses(self, interface: str) -> set[str]:
        return set()

    def members(self, sets: Iterable[str]) -> dict[str, set[str]]:
        return {}

    def apply(self, ops: Sequence[Op]) -> list[OpError]:
        return []

    def remove(self, interface: str, sets: Iterable[str]) -> None:
        pass


@dataclass
class Recorder:
    """A CommandRunner that succeeds with empty output and records the binaries run."""

    binaries: list[str] = field(default_factory=list)

    def run(self, argv: Sequence[str], stdin: bytes = b"") -> CompletedRun:
        self.binaries.append(argv[0])
        return CompletedRun(0, "", "")


def test_daemon_ipvs_backend_writes_rules_for_ipv6_too(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = Recorder()
    monkeypatch.setattr(commands_runner, "SubprocessRunner", lambda *a, **k: runner)
    monkeypatch.setattr(ipvs_netlink, "NetlinkIpvsClient", EmptyKernel)
    monkeypatch.setattr(iptables, "available_families", lambda: (IPFamily.IPV4, IPFamily.IPV6))
    cfg = Config(
        node_name="n1", proxy_mode=ProxyMode.IPVS, iptables_backend=IptablesBackendChoice.NFT
    )
    backend, _ = make_backend(cfg)
    assert isinstance(backend, IpvsBackend)
    assert backend.sync(node_plan(sp("web", internal=[ep("10.244.1.2")])), full=True).ok
    assert {"iptables-nft-restore", "ip6tables-nft-restore"} <= set(runner.binaries)


class DeviceKernel(EmptyKernel):
    """An empty kernel that records the devices proxyd prepares and removes."""

    prepared: ClassVar[list[str]] = []
    removed: ClassVar[list[str]] = []

    def prepare(self, interface: str, sets: Sequence[SetSpec], sysctls: Mapping[str, str]) -> None:
        self.prepared.append(interface)

    def remove(self, interface: str, sets: Iterable[str]) -> None:
        self.removed.append(interface)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> type[DeviceKernel]:
    """Fake netlink and commands; the links the code asks about exist."""
    monkeypatch.setattr(DeviceKernel, "prepared", [])
    monkeypatch.setattr(DeviceKernel, "removed", [])
    monkeypatch.setattr(commands_runner, "SubprocessRunner", lambda *a, **k: Recorder())
    monkeypatch.setattr(ipvs_netlink, "NetlinkIpvsClient", DeviceKernel)
    monkeypatch.setattr(iptables, "available_families", lambda: (IPFamily.IPV4,))
    return DeviceKernel


def test_apply_and_run_program_the_ipvs_interface_they_are_given(
    kernel: type[DeviceKernel], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(ipvs_netlink, "has_link", lambda name: asked.append(name) or False)
    plan = node_plan(sp("web", internal=[ep("10.244.1.2")]))
    argv = ["apply", "--manifests", "m", "--node", "n", "--proxy-mode", "ipvs"]
    args = build_parser().parse_args([*argv, "--iptables-backend", "nft"])
    assert args.ipvs_interface == DEFAULT_INTERFACE
    args = build_parser().parse_args([*argv, "--ipvs-interface", "kube-ipvs0"])
    applied, _ = apply_command._backend(args)
    cfg = Config(node_name="n", proxy_mode=ProxyMode.IPVS, ipvs_interface="kube-ipvs0",
                 iptables_backend=IptablesBackendChoice.NFT)  # fmt: skip
    ran, cold = make_backend(cfg)
    assert applied.sync(plan, full=True).ok and ran.sync(plan, full=True).ok
    assert kernel.prepared == ["kube-ipvs0", "kube-ipvs0"]
    assert asked == ["kube-ipvs0"] and cold  # a cold node: that device is missing


def test_cleanup_removes_the_ipvs_interface_it_is_given(
    kernel: type[DeviceKernel], monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[list[str]] = []
    monkeypatch.setattr(ipvs_netlink, "has_link", lambda name: True)
    monkeypatch.setattr(ipvs_netlink, "ipset_names", list)
    monkeypatch.setattr(ipvs_netlink, "local_addresses", frozenset)
    monkeypatch.setattr(
        ipvs_netlink, "remove_links_and_sets", lambda links, sets: removed.append(list(links))
    )
    base = ["cleanup", "--iptables-backend", "nft"]
    for flags in (["--ipvs-interface", "lb0"], ["--ipvs-interface", "lb0", "--kube-proxy-only"]):
        args = build_parser().parse_args([*base, *flags])
        assert args.handler(args) == 0
    assert kernel.removed == ["lb0"]  # the backend's cleanup, not run for --kube-proxy-only
    assert removed == [["lb0"], ["kube-ipvs0"]]
