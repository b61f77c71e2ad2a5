"""A small network inside the VM guest: the guest's root namespace is the node.

    client c1 10.255.1.2(+.3…) ── veth ── 10.255.1.1  node (root ns)  cbr0 10.244.1.1/24 ── p1 .2
    client c2 10.255.2.2       ── veth ── 10.255.2.1   IPVS, proxyd-ipvs0,                 ├─ p2 .3
                                                       iptables, ipsets                    └─ p3 .4

Dual-stack: every link also has an IPv6 address (``PODS6``, ``CLIENTS6``: the same last
digits under fd00:10:244:1::/64 and fd00:10:255:N::/64) and the node forwards IPv6, as a
dual-stack node's network setup does (proxyd writes only IPv4's ``ip_forward``).

Every pod serves TCP, UDP and SCTP on 8080 (both families) from threads of *this* process
(sockets are opened inside the pod's namespace with setns, then served from here): under
TCG each extra Python process costs seconds. A TCP (and an SCTP, one-to-one style) server
greets each connection with ``<pod> <peer-ip>\\n`` and then echoes; UDP answers each
datagram the same way. The peer IP shows whether the node masqueraded the client.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from proxyd.sandbox.netns import ip_batch

__all__ = [
    "CLIENTS",
    "CLIENTS6",
    "NODE_IPS",
    "PODS",
    "PODS6",
    "Conn",
    "Lab",
    "connect",
    "netns",
    "udp_ask",
]

PODS = {"p1": "10.244.1.2", "p2": "10.244.1.3", "p3": "10.244.1.4"}
PODS6 = {"p1": "fd00:10:244:1::2", "p2": "fd00:10:244:1::3", "p3": "fd00:10:244:1::4"}
CLIENTS = {"c1": ("10.255.1.2", "10.255.1.1"), "c2": ("10.255.2.2", "10.255.2.1")}
CLIENTS6 = {
    "c1": ("fd00:10:255:1::2", "fd00:10:255:1::1"),
    "c2": ("fd00:10:255:2::2", "fd00:10:255:2::1"),
}
NODE_IPS = tuple(gw for _, gw in CLIENTS.values())
#: extra source addresses of c1 (source-hashing tests)
C1_EXTRA = tuple(f"10.255.1.{i}" for i in range(3, 11))
PORT = 8080
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the block with this thread in namespace ``name`` (sockets keep theirs)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(own)
        os.close(own)
        os.close(target)


class _Servers:
    """One selector thread serving every pod's listeners."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, pod: str, ip: str) -> None:
        with netns(pod):
            tcp = socket.socket(_family(ip), socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((ip, PORT))
            tcp.listen(128)
            sctp = socket.socket(_family(ip), socket.SOCK_STREAM, socket.IPPROTO_SCTP)
            sctp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sctp.bind((ip, PORT))
            sctp.listen(128)
            udp = socket.socket(_family(ip), socket.SOCK_DGRAM)
            udp.bind((ip, PORT))
        for s in (tcp, sctp, udp):
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ, (pod, s.type))

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop:
            for key, _ in self._sel.select(timeout=0.2):
                pod, kind = key.data
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    self._handle(pod, kind, sock)
                except OSError:
                    with contextlib.suppress(KeyError, ValueError):
                        self._sel.unregister(sock)
                    sock.close()

    def _handle(self, pod: str, kind: object, sock: socket.socket) -> None:
        if kind == "conn":
            data = sock.recv(4096)
            if not data:
                self._sel.unregister(sock)
                sock.close()
            else:
                sock.sendall(data)
        elif kind == socket.SOCK_STREAM:
            conn, peer = sock.accept()
            conn.setblocking(True)
            conn.sendall(f"{pod} {peer[0]}\n".encode())
            conn.setblocking(False)
            self._sel.register(conn, selectors.EVENT_READ, (pod, "conn"))
        else:
            _, peer = sock.recvfrom(4096)
            sock.sendto(f"{pod} {peer[0]}".encode(), peer)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()


@dataclass
class Conn:
    """An open TCP (or SCTP) connection through a service; ``pod`` served it, ``peer`` is
    the client address that pod saw."""

    sock: socket.socket
    pod: str
    peer: str

    def echo(self, data: bytes = b"ping") -> bytes:
        self.sock.sendall(data)
        return self.sock.recv(4096)

    def close(self) -> None:
        self.sock.close()


def connect(
    client: str,
    ip: str,
    port: int,
    *,
    source: str | None = None,
    timeout: float = 5.0,
    sctp: bool = False,
) -> Conn:
    """Open a TCP (``sctp``: SCTP) connection from namespace ``client`` and read the pod's
    greeting."""
    with netns(client):
        sock = socket.socket(_family(ip), socket.SOCK_STREAM, socket.IPPROTO_SCTP if sctp else 0)
    sock.settimeout(timeout)
    if source is not None:
        sock.bind((source, 0))
    try:
        sock.connect((ip, port))
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                raise ConnectionResetError("closed before the greeting")
            line += chunk
    except BaseException:
        sock.close()
        raise
    pod, peer = line.decode().split()
    return Conn(sock, pod, peer)


def udp_ask(client: str, ip: str, port: int, timeout: float = 3.0) -> tuple[str, str]:
    with netns(client):
        sock = socket.socket(_family(ip), socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        sock.sendto(b"?", (ip, port))
        pod, peer = sock.recv(256).decode().split()
        return pod, peer


class Lab:
    """Builds the topology above once; :meth:`close` removes it."""

    def __init__(self) -> None:
        self.servers = _Servers()

    def build(self) -> None:
        root = [
            "link add cbr0 type bridge",
            "addr add 10.244.1.1/24 dev cbr0",
            "addr add fd00:10:244:1::1/64 dev cbr0 nodad",
            "link set cbr0 up",
        ]
        inside: dict[str, list[str]] = {}
        for pod, ip in PODS.items():
            root += [
                f"netns add {pod}",
                f"link add v-{pod} type veth peer name eth0 netns {pod}",
                f"link set v-{pod} master cbr0",
                f"link set v-{pod} type bridge_slave hairpin on",
                f"link set v-{pod} up",
            ]
            inside[pod] = [
                f"addr add {ip}/24 dev eth0",
                f"addr add {PODS6[pod]}/64 dev eth0 nodad",
                "route add default via 10.244.1.1",
                "route add default via fd00:10:244:1::1",
            ]
        for client, (ip, gw) in CLIENTS.items():
            root += [
                f"netns add {client}",
                f"link add v-{client} type veth peer name eth0 netns {client}",
                f"addr add {gw}/24 dev v-{client}",
                f"addr add {CLIENTS6[client][1]}/64 dev v-{client} nodad",
                f"link set v-{client} up",
            ]
            inside[client] = [
                f"addr add {ip}/24 dev eth0",
                f"addr add {CLIENTS6[client][0]}/64 dev eth0 nodad",
                f"route add default via {gw}",
                f"route add default via {CLIENTS6[client][1]}",
            ]
        inside["c1"] += [f"addr add {ip}/24 dev eth0" for ip in C1_EXTRA]
        with open("/proc/sys/net/ipv6/conf/all/forwarding", "w") as f:
            f.write("1")
        ip_batch(root)
        for ns, lines in inside.items():
            ip_batch(["link set lo up", "link set eth0 up", *lines], ns)
        for pod in PODS:
            self.servers.add(pod, PODS[pod])
            self.servers.add(pod, PODS6[pod])
        self.servers.start()

    def close(self) -> None:
        self.servers.close()
        ip_batch([f"netns del {n}" for n in (*PODS, *CLIENTS)] + ["link del cbr0"])
