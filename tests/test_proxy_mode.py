"""``--proxy-mode``: one vocabulary (config.ProxyMode) for every command, and the daemon's
IPVS backend programs every IP family the kernel has."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

import proxyd.backends.commands_runner as commands_runner
import proxyd.backends.iptables as iptables
import proxyd.backends.ipvs_netlink as ipvs_netlink
import proxyd.commands.apply as apply_command
from proxyd.backends.commands_runner import CompletedRun
from proxyd.backends.ipvs import IpvsBackend, KernelDest, Op, OpError
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
