"""Deleting stale UDP conntrack entries after endpoint changes (DESIGN §3, §6).

UDP has no connection teardown: a conntrack entry that DNATs a client's flow to an
endpoint outlives the endpoint, and the client keeps sending into the void until the
entry times out. So when a UDP endpoint leaves a service port (including when the port
loses its last endpoint), the entries that service's addresses DNATed to it are deleted.
When a UDP service port gets endpoints after having none, entries to its addresses that
were *not* DNATed (reply source = the service address) are deleted too, so early
packets that created a plain entry do not pin the flow to nowhere. When a port loses a
destination (a cluster IP, external or LB IP, or its NodePort changes, e.g. a Service
recreated with a new cluster IP over the same pods), the entries to that destination are
deleted too, as kube-proxy does for a deleted service: the address may be given to another
service, whose clients must not stay pinned to these endpoints.

Never a flush: every deletion names a service address or node port and the address
that answers. Deciding is pure (:func:`stale_udp_flows`); :class:`ConntrackCleaner` runs
the ``conntrack`` tool through an injected :class:`CommandRunner`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from proxyd.backends.commands_runner import CommandRunner
from proxyd.errors import BackendError
from proxyd.model import IPFamily, Protocol, ServicePlan, ServicePortKey, ip_family

__all__ = ["ConntrackCleaner", "StaleFlow", "stale_udp_flows"]


@dataclass(frozen=True, slots=True)
class StaleFlow:
    """UDP entries whose original destination is ``dst_ip`` (any address when ``None``:
    a NodePort) and ``dst_port``, and whose replies come from ``reply_src``."""

    family: IPFamily
    dst_ip: str | None
    dst_port: int
    reply_src: str

    def argv(self) -> list[str]:
        argv = ["conntrack", "-D", "-f", "ipv6" if self.family is IPFamily.IPV6 else "ipv4"]
        argv += ["-p", "udp"]
        if self.dst_ip is not None:
            argv += ["--orig-dst", self.dst_ip]
        return [*argv, "--orig-port-dst", str(self.dst_port), "--reply-src", self.reply_src]


def _endpoint_ips(sp: ServicePlan | None) -> frozenset[str]:
    if sp is None:
        return frozenset()
    return frozenset(ep.ip for ep in (*sp.internal, *sp.external, *(sp.cluster or ())))


def _service_ips(sp: ServicePlan) -> tuple[str, ...]:
    port = sp.port
    return (*port.cluster_ips, *port.external_ips, *port.load_balancer_ips)


def _destinations(sp: ServicePlan | None) -> frozenset[tuple[str | None, int]]:
    """Where clients send the port's traffic: (service address, port), (None, nodePort)."""
    if sp is None:
        return frozenset()
    pairs: set[tuple[str | None, int]] = {(ip, sp.port.port) for ip in _service_ips(sp)}
    if sp.port.node_port:
        pairs.add((None, sp.port.node_port))
    return frozenset(pairs)


def stale_udp_flows(
    previous: Mapping[ServicePortKey, ServicePlan],
    current: Mapping[ServicePortKey, ServicePlan],
    keys: Iterable[ServicePortKey] | None = None,
) -> tuple[StaleFlow, ...]:
    """The UDP entries to delete after going from ``previous`` to ``current`` (looking at
    ``keys`` only, when given: the service ports a sync rewrote or removed)."""
    flows: set[StaleFlow] = set()
    for key in previous.keys() | current.keys() if keys is None else keys:
        if key.protocol is not Protocol.UDP:
            continue
        old, new = previous.get(key), current.get(key)
        old_ips, new_ips = _endpoint_ips(old), _endpoint_ips(new)
        # An endpoint that left: its flows to every old destination. One that stayed: its
        # flows to destinations the port no longer has (an address reassigned later
        # must not keep steering clients here).
        gone = _destinations(old) - _destinations(new)
        for ep_ip in old_ips:
            family = ip_family(ep_ip)
            for ip, port in gone if ep_ip in new_ips else _destinations(old):
                if ip is None or ip_family(ip) is family:
                    flows.add(StaleFlow(family, ip, port, ep_ip))
        if new is not None and new_ips and not old_ips:
            for ip in _service_ips(new):
                flows.add(StaleFlow(ip_family(ip), ip, new.port.port, ip))
    return tuple(sorted(flows, key=lambda f: (f.family, f.dst_ip or "", f.dst_port, f.reply_src)))


class ConntrackCleaner:
    """Runs ``conntrack -D`` for each flow; "0 flow entries" is not a failure."""

    def __init__(self, runner: CommandRunner) -> None:
        self._runner = runner

    def delete(self, flows: Sequence[StaleFlow]) -> list[str]:
        """Delete ``flows``; returns one message per deletion that failed."""
        errors: list[str] = []
        for flow in flows:
            try:
                run = self._runner.run(flow.argv())
            except BackendError as exc:
                errors.append(str(exc))
                continue
            if not run.ok and "0 flow entries" not in run.stderr:
                errors.append(f"{' '.join(flow.argv())}: {run.stderr.strip()}")
        return errors
