"""Network-namespace sandboxes: nodes with a pod bridge, pods, clients, echo servers.

Shared by the kernel tests and ``proxyd demo``. The layout follows DESIGN §5::

    client c ──/30── node N ──veth── pod (10.244.N.k, hairpin on)
                     │ cbr0 10.244.N.1/24, fd00:10:244:N::1/64
                     │ routes 10.96.0.0/12 and fd00:10:96::/112 dev cbr0
                     └──/30── node M (pod CIDRs routed both ways)

Every namespace is named ``<prefix><run id>-<role>`` (at most 15 characters) and every
``ip`` command runs with ``-n <namespace>``: the root namespace is never changed.
:class:`Topology` is a context manager whose exit stops the servers it started and
deletes every namespace it created, also after a failure.

Echo servers and probes are this module run as a script inside a namespace::

    python -m proxyd.sandbox.netns serve NAME --tcp PORT --udp PORT --lifetime SECONDS
    python -m proxyd.sandbox.netns probe tcp|udp HOST PORT --count N --timeout S

A server answers every TCP connection or UDP datagram with ``NAME SOURCE-IP`` (the client
address it saw, to check masquerading); a probe prints one JSON object per attempt.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import secrets
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

from proxyd.errors import ProxydError

__all__ = [
    "SERVICE_CIDR",
    "SERVICE_CIDR6",
    "Answer",
    "Client",
    "Netns",
    "Node",
    "Pod",
    "Topology",
    "ip_batch",
    "main",
    "run_ip",
]

SERVICE_CIDR = "10.96.0.0/12"
SERVICE_CIDR6 = "fd00:10:96::/112"
_MAX_NAME = 15
_SETUP_TIMEOUT = 15.0
_IP_TIMEOUT = 30.0


def run_ip(argv: Sequence[str], stdin: str | None = None, *, check: bool = True) -> str:
    """Run ``ip ARGV`` and return its output; failing to run it, or (with ``check``) a
    non-zero exit, raises :class:`ProxydError` with ip's own message."""
    try:
        done = subprocess.run(
            ["ip", *argv], input=stdin, capture_output=True, text=True, check=False,
            timeout=_IP_TIMEOUT,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProxydError(f"ip {' '.join(argv)}: {exc}") from exc
    if check and done.returncode != 0:
        raise ProxydError(f"ip {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def ip_batch(lines: Sequence[str], netns: str | None = None) -> None:
    """All ``lines`` in one ``ip -batch`` (one process per namespace, not per command),
    in namespace ``netns`` (default: the caller's); stops at the first error."""
    run_ip([*(("-n", netns) if netns else ()), "-b", "-"], "\n".join(lines) + "\n")


def _v6(text: str) -> str:
    """Canonical spelling, the one sockets report back."""
    return str(ipaddress.IPv6Address(text))


@dataclass(frozen=True, slots=True)
class Answer:
    """One probe attempt: who answered and which source address it saw, or ``error``
    (``"refused"``, ``"timeout"``, or the OS error text)."""

    pod: str | None = None
    source: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Netns:
    """A namespace this module created; commands run inside it."""

    name: str

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, *cmd: str, stdin: str = "", timeout: float = _SETUP_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*cmd), input=stdin, capture_output=True, text=True, timeout=timeout,
            check=check,
        )  # fmt: skip

    def ip_batch(self, *commands: str) -> None:
        """Run ``ip`` commands (batch syntax) in this namespace, failing on the first error."""
        ip_batch(commands, self.name)

    def sysctl(self, *settings: str) -> None:
        self.run("sysctl", "-qw", *settings)

    def probe(
        self,
        proto: str,
        host: str,
        port: int,
        *,
        count: int = 1,
        timeout: float = 1.0,
        source_port: int | None = None,
    ) -> list[Answer]:
        """Connect ``count`` times (each a new socket) from this namespace."""
        cmd = [sys.executable, "-m", "proxyd.sandbox.netns", "probe", proto, host, str(port)]
        cmd += ["--count", str(count), "--timeout", str(timeout)]
        if source_port is not None:
            cmd += ["--source-port", str(source_port)]
        out = self.run(*cmd, timeout=count * (timeout + 1) + 10).stdout
        return [Answer(**json.loads(line)) for line in out.splitlines() if line.strip()]


@dataclass(frozen=True, slots=True)
class Node(Netns):
    """A node: bridge ``cbr0`` holds the pod gateway addresses."""

    index: int = 0
    bridge_ip: str = ""
    bridge_ip6: str = ""
    pod_cidr: str = ""
    pod_cidr6: str = ""


@dataclass(frozen=True, slots=True)
class Pod(Netns):
    """A pod namespace on ``node``; its echo server answers with ``pod``."""

    pod: str = ""
    node: str = ""
    ip: str = ""
    ip6: str = ""


@dataclass(frozen=True, slots=True)
class Client(Netns):
    """A machine outside the cluster on a /30 link to one node (``gateway`` is the node's
    address on that link)."""

    ip: str = ""
    ip6: str = ""
    gateway: str = ""
    gateway6: str = ""


@dataclass(slots=True)
class _Counters:
    pods: dict[str, int] = field(default_factory=dict)
    clients: int = 0
    links: int = 0


class Topology:
    """Builds namespaces on demand and removes them all on :meth:`close`."""

    def __init__(self, prefix: str = "pxi-", *, run_id: str | None = None) -> None:
        self.run_id = run_id or secrets.token_hex(2)
        self._base = f"{prefix}{self.run_id}-"
        self._namespaces: list[Netns] = []
        self._servers: list[subprocess.Popen[str]] = []
        self._nodes: list[Node] = []
        self._count = _Counters()

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(ns.name for ns in self._namespaces)

    def _create(self, role: str) -> str:
        name = self._base + role
        if len(name) > _MAX_NAME:
            raise ValueError(f"namespace name {name!r} longer than {_MAX_NAME} characters")
        run_ip(["netns", "add", name])
        self._namespaces.append(Netns(name))
        return name

    def add_node(self) -> Node:
        """A node with ``cbr0``, forwarding on, and the service CIDRs routed to the bridge.

        ICMP redirects are off: a pod's packet to a cluster IP leaves through the bridge it
        came in on, so the node would answer with a redirect, and redirects share the
        per-host ICMP rate limit with the port-unreachable a REJECT sends.
        """
        index = len(self._nodes) + 1
        node = Node(
            self._create(f"n{index}"),
            index=index,
            bridge_ip=f"10.244.{index}.1",
            bridge_ip6=_v6(f"fd00:10:244:{index}::1"),
            pod_cidr=f"10.244.{index}.0/24",
            pod_cidr6=f"fd00:10:244:{index}::/64",
        )
        node.sysctl(
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.default.send_redirects=0",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_dad=0",
        )
        node.ip_batch(
            "link set lo up",
            "link add cbr0 type bridge",
            "link set cbr0 up",
            f"addr add {node.bridge_ip}/24 dev cbr0",
            f"addr add {node.bridge_ip6}/64 dev cbr0 nodad",
            f"route add {SERVICE_CIDR} dev cbr0",
            f"route add {SERVICE_CIDR6} dev cbr0",
        )
        self._nodes.append(node)
        return node

    def add_pod(self, node: Node, pod: str) -> Pod:
        """A pod on ``node``'s bridge (hairpin on), default routes via the bridge."""
        k = self._count.pods.get(node.name, 1) + 1
        self._count.pods[node.name] = k
        name = self._create(f"p{node.index}-{k}")
        ip, ip6 = f"10.244.{node.index}.{k}", _v6(f"fd00:10:244:{node.index}::{k:x}")
        veth = f"vp{k}"
        node.ip_batch(f"link add {veth} type veth peer name eth0 netns {name}")
        node.ip_batch(
            f"link set {veth} master cbr0",
            f"link set {veth} up",
            f"link set dev {veth} type bridge_slave hairpin on",
        )
        result = Pod(name, pod=pod, node=node.name, ip=ip, ip6=ip6)
        result.sysctl("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        result.ip_batch(
            "link set lo up",
            f"addr add {ip}/24 dev eth0",
            f"addr add {ip6}/64 dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {node.bridge_ip}",
            f"route add default via {node.bridge_ip6}",
        )
        return result

    def add_client(self, node: Node) -> Client:
        """A namespace outside the cluster, on its own /30 (and /64) link to ``node``."""
        c = self._count.clients
        self._count.clients += 1
        name = self._create(f"c{c}")
        gw, ip = f"10.255.0.{4 * c + 1}", f"10.255.0.{4 * c + 2}"
        gw6, ip6 = _v6(f"fd00:255:0:{c:x}::1"), _v6(f"fd00:255:0:{c:x}::2")
        veth = f"vc{c}"
        node.ip_batch(
            f"link add {veth} type veth peer name eth0 netns {name}",
            f"addr add {gw}/30 dev {veth}",
            f"addr add {gw6}/64 dev {veth} nodad",
            f"link set {veth} up",
        )
        client = Client(name, ip=ip, ip6=ip6, gateway=gw, gateway6=gw6)
        client.sysctl("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        client.ip_batch(
            "link set lo up",
            f"addr add {ip}/30 dev eth0",
            f"addr add {ip6}/64 dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {gw}",
            f"route add default via {gw6}",
        )
        return client

    def link_nodes(self, a: Node, b: Node) -> tuple[str, str]:
        """A /30 between two nodes with each one's pod CIDRs routed to the other; returns
        the (a, b) addresses on that link."""
        n = self._count.links
        self._count.links += 1
        a_ip, b_ip = f"10.254.0.{4 * n + 1}", f"10.254.0.{4 * n + 2}"
        a_ip6, b_ip6 = _v6(f"fd00:254:0:{n:x}::1"), _v6(f"fd00:254:0:{n:x}::2")
        veth_a, veth_b = f"vn{b.index}", f"vn{a.index}"
        a.ip_batch(f"link add {veth_a} type veth peer name {veth_b} netns {b.name}")
        for node, dev, mine, peer, mine6, peer6, far in (
            (a, veth_a, a_ip, b_ip, a_ip6, b_ip6, b),
            (b, veth_b, b_ip, a_ip, b_ip6, a_ip6, a),
        ):
            node.ip_batch(
                f"addr add {mine}/30 dev {dev}",
                f"addr add {mine6}/64 dev {dev} nodad",
                f"link set {dev} up",
                f"route add {far.pod_cidr} via {peer}",
                f"route add {far.pod_cidr6} via {peer6}",
            )
        return a_ip, b_ip

    def add_device(self, ns: Netns, name: str, addresses: Sequence[str] = ()) -> None:
        """A local-only device holding ``addresses`` (CIDR notation), up. This kernel has
        no ``dummy`` driver, so a bridge without ports stands in for one."""
        ns.ip_batch(
            f"link add {name} type bridge",
            f"link set {name} up",
            *(f"addr add {a} dev {name}" + (" nodad" if ":" in a else "") for a in addresses),
        )

    def serve(
        self,
        pod: Pod,
        *,
        tcp: Sequence[int] = (),
        udp: Sequence[int] = (),
        lifetime: float = 300.0,
    ) -> None:
        """Start an echo server in ``pod`` (answers with the pod name) and wait until it
        listens. It exits by itself after ``lifetime`` seconds, or on :meth:`close`."""
        cmd = [sys.executable, "-m", "proxyd.sandbox.netns", "serve", pod.pod]
        cmd += [a for p in tcp for a in ("--tcp", str(p))]
        cmd += [a for p in udp for a in ("--udp", str(p))]
        proc = subprocess.Popen(
            pod.argv(*cmd, "--lifetime", str(lifetime)),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self._servers.append(proc)
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=_SETUP_TIMEOUT) and proc.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"echo server in {pod.name} did not start")

    def close(self) -> None:
        """Stop servers, delete namespaces (in reverse order); safe to call twice."""
        for proc in self._servers:
            proc.terminate()
        for proc in self._servers:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        self._servers.clear()
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
        self._namespaces.clear()
        self._nodes.clear()


# --- the script side: runs inside a namespace -------------------------------------------


def _listeners(tcp: Sequence[int], udp: Sequence[int]) -> list[socket.socket]:
    socks = []
    for kind, ports in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, udp)):
        for port in ports:
            for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                s = socket.socket(family, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((host, port))
                if kind == socket.SOCK_STREAM:
                    s.listen(128)
                socks.append(s)
    return socks


def _serve(name: str, tcp: Sequence[int], udp: Sequence[int], lifetime: float) -> None:
    socks = _listeners(tcp, udp)
    print("ready", flush=True)
    deadline = time.monotonic() + lifetime
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(timeout=min(left, 1.0)):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                with contextlib.suppress(OSError):
                    if sock.type == socket.SOCK_STREAM:
                        conn, peer = sock.accept()
                        with conn:
                            conn.settimeout(1.0)
                            conn.sendall(f"{name} {peer[0]}\n".encode())
                    else:
                        _, peer = sock.recvfrom(2048)
                        sock.sendto(f"{name} {peer[0]}\n".encode(), peer)


def _attempt(proto: str, host: str, port: int, timeout: float, source_port: int | None) -> Answer:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        s.settimeout(timeout)
        try:
            if source_port is not None:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", source_port))
            s.connect((host, port))
            if kind == socket.SOCK_DGRAM:
                # A datagram dropped by the local OUTPUT chain fails with EPERM; a REJECT
                # there has already queued its port-unreachable, which recv() reports.
                with contextlib.suppress(PermissionError):
                    s.send(b"hello\n")
            data = s.recv(512).decode(errors="replace").strip()
        except ConnectionRefusedError:
            return Answer(error="refused")
        except TimeoutError:
            return Answer(error="timeout")
        except OSError as exc:
            return Answer(error=exc.strerror or str(exc))
    pod, _, source = data.partition(" ")
    return Answer(pod=pod or None, source=source or None, error=None if pod else "empty reply")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxyd.sandbox.netns")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("name")
    serve.add_argument("--tcp", type=int, action="append", default=[])
    serve.add_argument("--udp", type=int, action="append", default=[])
    serve.add_argument("--lifetime", type=float, default=300.0)
    probe = sub.add_parser("probe")
    probe.add_argument("proto", choices=("tcp", "udp"))
    probe.add_argument("host")
    probe.add_argument("port", type=int)
    probe.add_argument("--count", type=int, default=1)
    probe.add_argument("--timeout", type=float, default=1.0)
    probe.add_argument("--source-port", type=int)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        _serve(args.name, args.tcp, args.udp, args.lifetime)
        return 0
    for _ in range(args.count):
        answer = _attempt(args.proto, args.host, args.port, args.timeout, args.source_port)
        print(json.dumps({"pod": answer.pod, "source": answer.source, "error": answer.error}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
