"""The real :class:`~proxyd.backends.ipvs.IpvsClient`: netlink, no command-line tools.

pyroute2 resolves the IPVS generic-netlink family, creates the interface and the ipsets
(a handful of calls). The bulk — virtual servers, real servers, set members, addresses —
goes through raw netlink sockets in *batches*: many requests per ``send``, an ACK
requested only on the last one, so the kernel answers only errors (matched back to their
operation by sequence number) and the sync costs one system call per ~16 KiB of
requests. Dumps are parsed with :mod:`struct` directly. Measured in the test VM (qemu
TCG) for 10,000 services: pyroute2 0.9.7's ``IPVS.service("dump")`` took 90 s to parse
what this module reads in 0.25 s, and its per-call ``add`` path is ~30 ms per
operation, so at kube-proxy scale the object API is not usable for the bulk.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence

from proxyd.backends.ipvs import (
    AddAddress,
    AddDest,
    AddMember,
    AddService,
    DelAddress,
    DelDest,
    DelMember,
    DelService,
    KernelDest,
    Op,
    OpError,
    SetDest,
    SetService,
)
from proxyd.backends.ipvs_plan import SCHED_FLAGS, RealServer, SetSpec, VirtualServer, VsKey
from proxyd.backends.sysctl import ProcSysctls
from proxyd.errors import BackendError
from proxyd.model import IPFamily, Protocol

__all__ = [
    "NetlinkIpvsClient",
    "ensure_device",
    "has_link",
    "ipset_names",
    "local_addresses",
    "remove_links_and_sets",
]

NETLINK_ROUTE, NETLINK_NETFILTER, NETLINK_GENERIC = 0, 12, 16
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_BATCH_BYTES = 16384
_TIMEOUT = 60.0

_PROTO = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP, Protocol.SCTP: 132}
_PROTO_BY_NUMBER = {v: k for k, v in _PROTO.items()}
_PERSISTENT = 0x0001


def _attr(kind: int, payload: bytes) -> bytes:
    size = _ATTR.size + len(payload)
    return _ATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    """Top-level attributes of ``data`` by type (flag bits stripped)."""
    out: dict[int, bytes] = {}
    off = 0
    while off + _ATTR.size <= len(data):
        size, kind = _ATTR.unpack_from(data, off)
        if size < _ATTR.size:
            break
        out[kind & 0x3FFF] = data[off + _ATTR.size : off + size]
        off += (size + 3) & ~3
    return out


def _attr_list(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + _ATTR.size <= len(data):
        size, kind = _ATTR.unpack_from(data, off)
        if size < _ATTR.size:
            return
        yield kind & 0x3FFF, data[off + _ATTR.size : off + size]
        off += (size + 3) & ~3


def _u16(b: bytes) -> int:
    return int(struct.unpack_from("=H", b)[0])


def _u32(b: bytes) -> int:
    return int(struct.unpack_from("=I", b)[0])


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _set_family(spec: SetSpec) -> int:
    """The netfilter family of a set's messages: its own (port bitmaps serve both: inet).
    Not read from a member: ``10.0.0.1,sctp:30080`` holds a colon too."""
    return socket.AF_INET6 if spec.family is IPFamily.IPV6 else socket.AF_INET


def _ip_bytes(address: str) -> bytes:
    return socket.inet_pton(_family(address), address)


def _ip_text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[: 16 if family == socket.AF_INET6 else 4])


class _Socket:
    """One raw netlink socket: batched requests and dumps."""

    def __init__(self, protocol: int) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self._sock.bind((0, 0))
        try:  # room for a burst of error reports; FORCE needs CAP_NET_ADMIN
            self._sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
        except OSError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.settimeout(_TIMEOUT)  # a lost reply must fail the sync, not hang it
        self._seq = 0
        # backends have no close(): the socket goes when its owner is collected
        self.close = weakref.finalize(self, self._sock.close)

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def _messages(self) -> Iterator[tuple[int, int, int, bytes]]:
        data = self._sock.recv(1 << 20)
        off = 0
        while off + _HDR.size <= len(data):
            size, kind, flags, seq, _ = _HDR.unpack_from(data, off)
            yield kind, flags, seq, data[off + _HDR.size : off + size]
            off += (size + 3) & ~3

    def batch(self, requests: Sequence[tuple[int, int, bytes]]) -> dict[int, int]:
        """Send (type, flags, payload) requests; returns {index: errno} of the refused."""
        failed: dict[int, int] = {}
        start = 0
        while start < len(requests):
            chunk: list[bytes] = []
            size = 0
            seqs: dict[int, int] = {}
            end = start
            while end < len(requests) and (size < _BATCH_BYTES or not chunk):
                kind, flags, payload = requests[end]
                seq = self._next()
                seqs[seq] = end
                length = _HDR.size + len(payload)
                size += length
                end += 1
                last = end == len(requests) or size >= _BATCH_BYTES
                flags |= NLM_F_REQUEST | (NLM_F_ACK if last else 0)
                chunk.append(_HDR.pack(length, kind, flags, seq, 0) + payload)
            self._sock.send(b"".join(chunk))
            final = self._seq
            done = False
            while not done:
                for kind, _, seq, body in self._messages():
                    if kind != NLMSG_ERROR or seq not in seqs:
                        continue
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        failed[seqs[seq]] = code
                    done = done or seq == final
            start = end
        return failed

    def dump(self, kind: int, payload: bytes) -> Iterator[bytes]:
        """Bodies of a dump's replies. Raises OSError when the kernel refuses."""
        seq = self._next()
        self._sock.send(
            _HDR.pack(_HDR.size + len(payload), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + payload
        )
        while True:
            for mkind, _, mseq, body in self._messages():
                if mseq != seq:
                    continue
                if mkind == NLMSG_DONE:
                    return
                if mkind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                yield body


# --- IPVS (generic netlink) -----------------------------------------------------------

_CMD_NEW_SERVICE, _CMD_SET_SERVICE, _CMD_DEL_SERVICE, _CMD_GET_SERVICE = 1, 2, 3, 4
_CMD_NEW_DEST, _CMD_SET_DEST, _CMD_DEL_DEST, _CMD_GET_DEST = 5, 6, 7, 8
_ATTR_SERVICE, _ATTR_DEST = 1, 2
_SVC_AF, _SVC_PROTOCOL, _SVC_ADDR, _SVC_PORT = 1, 2, 3, 4
_SVC_SCHED, _SVC_FLAGS, _SVC_TIMEOUT, _SVC_NETMASK = 6, 7, 8, 9
_DST_ADDR, _DST_PORT, _DST_FWD, _DST_WEIGHT, _DST_UTHRESH, _DST_LTHRESH = 1, 2, 3, 4, 5, 6
_DST_ACTIVE, _DST_FAMILY = 7, 11
_FWD_MASQ, _FWD_MASK = 0, 0x7


def _svc_key(key: VsKey) -> bytes:
    return (
        _attr(_SVC_AF, struct.pack("=H", _family(key.address)))
        + _attr(_SVC_PROTOCOL, struct.pack("=H", _PROTO[key.protocol]))
        + _attr(_SVC_ADDR, _ip_bytes(key.address))
        + _attr(_SVC_PORT, struct.pack("!H", key.port))
    )


def _svc_full(server: VirtualServer) -> bytes:
    flags = sum(SCHED_FLAGS[f] for f in server.flags) | (_PERSISTENT if server.persistence else 0)
    v6 = _family(server.key.address) == socket.AF_INET6
    return (
        _svc_key(server.key)
        + _attr(_SVC_SCHED, server.scheduler.encode() + b"\0")
        + _attr(_SVC_FLAGS, struct.pack("=II", flags, 0xFFFFFFFF))
        + _attr(_SVC_TIMEOUT, struct.pack("=I", server.persistence))
        + _attr(_SVC_NETMASK, struct.pack("=I", 128) if v6 else b"\xff\xff\xff\xff")
    )


def _dest(real: RealServer) -> bytes:
    return (
        _attr(_DST_ADDR, _ip_bytes(real.address))
        + _attr(_DST_PORT, struct.pack("!H", real.port))
        + _attr(_DST_FWD, struct.pack("=I", _FWD_MASQ))
        + _attr(_DST_WEIGHT, struct.pack("=I", real.weight))
        + _attr(_DST_UTHRESH, struct.pack("=I", 0))
        + _attr(_DST_LTHRESH, struct.pack("=I", 0))
        + _attr(_DST_FAMILY, struct.pack("=H", _family(real.address)))
    )


def _genl(cmd: int, *attrs: bytes) -> bytes:
    return struct.pack("=BBH", cmd, 1, 0) + b"".join(attrs)


def _nested(kind: int, payload: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, payload)


def _ipvs_request(op: Op) -> bytes:
    match op:
        case AddService(server):
            return _genl(_CMD_NEW_SERVICE, _nested(_ATTR_SERVICE, _svc_full(server)))
        case SetService(server):
            return _genl(_CMD_SET_SERVICE, _nested(_ATTR_SERVICE, _svc_full(server)))
        case DelService(key):
            return _genl(_CMD_DEL_SERVICE, _nested(_ATTR_SERVICE, _svc_key(key)))
        case AddDest(key, real) | SetDest(key, real) | DelDest(key, real):
            cmd = {AddDest: _CMD_NEW_DEST, SetDest: _CMD_SET_DEST, DelDest: _CMD_DEL_DEST}[type(op)]
            return _genl(
                cmd, _nested(_ATTR_SERVICE, _svc_key(key)), _nested(_ATTR_DEST, _dest(real))
            )
    raise TypeError(op)


def _parse_service(body: bytes) -> VirtualServer | None:
    svc = _attrs(_attrs(body[4:]).get(_ATTR_SERVICE, b""))
    if _SVC_ADDR not in svc:  # a firewall-mark service: not proxyd's shape
        return None
    family = _u16(svc[_SVC_AF])
    proto = _PROTO_BY_NUMBER.get(_u16(svc[_SVC_PROTOCOL]))
    if proto is None:
        return None
    flags = _u32(svc[_SVC_FLAGS]) if _SVC_FLAGS in svc else 0
    key = VsKey(proto, _ip_text(family, svc[_SVC_ADDR]), struct.unpack("!H", svc[_SVC_PORT][:2])[0])
    return VirtualServer(
        key,
        svc.get(_SVC_SCHED, b"").rstrip(b"\0").decode(),
        frozenset(name for name, bit in SCHED_FLAGS.items() if flags & bit),
        _u32(svc[_SVC_TIMEOUT]) if flags & _PERSISTENT else 0,
    )


def _parse_dest(body: bytes, family: int) -> KernelDest:
    d = _attrs(_attrs(body[4:]).get(_ATTR_DEST, b""))
    fam = _u16(d[_DST_FAMILY]) if _DST_FAMILY in d else family
    return KernelDest(
        _ip_text(fam, d[_DST_ADDR]),
        struct.unpack("!H", d[_DST_PORT][:2])[0],
        _u32(d[_DST_WEIGHT]),
        (_u32(d[_DST_FWD]) & _FWD_MASK) == _FWD_MASQ,
        _u32(d[_DST_ACTIVE]) if _DST_ACTIVE in d else 0,
    )


# --- ipset (nfnetlink) ------------------------------------------------------------------

_IPSET_SUBSYS = 6 << 8
_IPSET_ADD, _IPSET_DEL, _IPSET_LIST = 9, 10, 7
_IPSET_PROTOCOL = 6
_S_PROTOCOL, _S_SETNAME, _S_TYPENAME, _S_FAMILY, _S_DATA, _S_ADT = 1, 2, 3, 5, 7, 8
_D_IP, _D_CIDR, _D_PORT, _D_PROTO, _D_IP2, _D_CIDR2 = 1, 3, 4, 7, 20, 21
_IPV4, _IPV6 = 1, 2
_PROTO_NAMES = {"tcp": 6, "udp": 17, "sctp": 132}
_PROTO_BY_NUM = {v: k for k, v in _PROTO_NAMES.items()}


def _ipset_ip(kind: int, address: str) -> bytes:
    inner = _IPV6 if ":" in address else _IPV4
    return _nested(kind, _attr(inner | NLA_F_NET_BYTEORDER, _ip_bytes(address)))


def _member_data(kind: str, member: str) -> bytes:
    """``IPSET_ATTR_DATA`` payload for a member in ipset's spelling (see ipvs_plan)."""
    if kind == "bitmap:port":
        return _attr(_D_PORT | NLA_F_NET_BYTEORDER, struct.pack("!H", int(member)))
    ip, proto_port, *rest = member.split(",")
    proto, _, port = proto_port.partition(":")
    data = (
        _ipset_ip(_D_IP, ip)
        + _attr(_D_PORT | NLA_F_NET_BYTEORDER, struct.pack("!H", int(port)))
        + _attr(_D_PROTO, struct.pack("=B", _PROTO_NAMES[proto]))
    )
    if kind == "hash:ip,port,ip":
        data += _ipset_ip(_D_IP2, rest[0])
    elif kind == "hash:ip,port,net":
        net, _, cidr = rest[0].partition("/")
        data += _ipset_ip(_D_IP2, net) + _attr(_D_CIDR2, struct.pack("=B", int(cidr)))
    return data


def _member_text(kind: str, data: bytes) -> str:
    a = _attrs(data)
    port = str(struct.unpack("!H", a[_D_PORT][:2])[0])
    if kind == "bitmap:port":
        return port

    def ip(raw: bytes) -> str:
        inner = _attrs(raw)
        if _IPV6 in inner:
            return _ip_text(socket.AF_INET6, inner[_IPV6])
        return _ip_text(socket.AF_INET, inner[_IPV4])

    text = f"{ip(a[_D_IP])},{_PROTO_BY_NUM.get(a[_D_PROTO][0], str(a[_D_PROTO][0]))}:{port}"
    if kind == "hash:ip,port,ip":
        text += f",{ip(a[_D_IP2])}"
    elif kind == "hash:ip,port,net":
        text += f",{ip(a[_D_IP2])}/{a[_D_CIDR2][0]}"
    return text


def _nfgen(family: int, *attrs: bytes) -> bytes:
    return struct.pack("=BBH", family, 0, 0) + b"".join(attrs)


def _ipset_header(name: str) -> bytes:
    return _attr(_S_PROTOCOL, bytes([_IPSET_PROTOCOL])) + _attr(_S_SETNAME, name.encode() + b"\0")


# --- addresses (rtnetlink) ---------------------------------------------------------------

_RTM_NEWADDR, _RTM_DELADDR, _RTM_GETADDR = 20, 21, 22
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_IFA_F_NODAD = 0x02
_IFADDR = struct.Struct("=BBBBI")


def _addr_request(index: int, address: str) -> bytes:
    family = _family(address)
    plen = 128 if family == socket.AF_INET6 else 32
    raw = _ip_bytes(address)
    flags = _IFA_F_NODAD if family == socket.AF_INET6 else 0
    return (
        _IFADDR.pack(family, plen, flags, 0, index)
        + _attr(_IFA_LOCAL, raw)
        + _attr(_IFA_ADDRESS, raw)
    )


def ensure_device(name: str) -> int:
    """Index of link ``name``, creating it when missing: a ``dummy`` where the kernel has
    that driver, else a bridge without ports (it holds local addresses just the same).
    The one place that decides the interface kind; brought up, like kube-ipvs0's users
    expect for IPv6 addresses."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            try:
                ipr.link("add", ifname=name, kind="dummy")
            except NetlinkError as exc:
                if exc.code not in (errno.EOPNOTSUPP, errno.ENODEV, errno.ENOENT):
                    raise BackendError(f"cannot create interface {name}: {exc}") from exc
                ipr.link("add", ifname=name, kind="bridge")
            found = ipr.link_lookup(ifname=name)
        index = int(found[0])
        ipr.link("set", index=index, state="up")
    return index


def has_link(name: str) -> bool:
    """Whether this network namespace has a link called ``name``."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def local_addresses() -> frozenset[str]:
    """Every address bound in this network namespace (where NodePorts live)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return frozenset(
            str(a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()
        )


_IPSET_LIST_SETNAME = 0x2  # IPSET_FLAG_LIST_SETNAME: names only, no members


def ipset_names() -> list[str]:
    """Every ipset in this network namespace, by name (none when the kernel has no
    ipset support). Needs no IPVS: ``proxyd cleanup`` uses it on any kernel."""
    from pyroute2 import IPSet
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPSet() as ipset:
            return sorted(
                str(m.get_attr("IPSET_ATTR_SETNAME")) for m in ipset.list(flags=_IPSET_LIST_SETNAME)
            )
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.EPROTONOSUPPORT):
            return []
        raise BackendError(f"cannot list ipsets: {exc}") from exc


def remove_links_and_sets(links: Iterable[str], sets: Iterable[str]) -> None:
    """Delete the links and destroy the sets that exist (the others are no error), links
    first. Needs no IPVS."""
    from pyroute2 import IPRoute, IPSet
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        for name in links:
            for index in ipr.link_lookup(ifname=name):
                ipr.link("del", index=index)
    with IPSet() as ipset:
        for name in sets:
            try:
                ipset.destroy(name)
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:
                    raise BackendError(f"cannot destroy ipset {name}: {exc}") from exc


class NetlinkIpvsClient:
    """:class:`~proxyd.backends.ipvs.IpvsClient` on netlink, in the current namespace."""

    def __init__(self, *, maxelem: int = 262144, sysctl_root: str = "/proc/sys") -> None:
        from pyroute2 import IPVS

        try:
            with IPVS() as probe:
                self._ipvs_family = int(probe.prid)
        except Exception as exc:  # pyroute2 raises assorted types when the family is missing
            raise BackendError(f"this kernel has no IPVS (generic netlink family): {exc}") from exc
        self._genl = _Socket(NETLINK_GENERIC)
        self._nf = _Socket(NETLINK_NETFILTER)
        self._rt = _Socket(NETLINK_ROUTE)
        self._maxelem = maxelem
        self._sysctls = ProcSysctls(sysctl_root)
        self._index = 0
        self._sets: dict[str, SetSpec] = {}

    def close(self) -> None:
        for sock in (self._genl, self._nf, self._rt):
            sock.close()

    def prepare(self, interface: str, sets: Sequence[SetSpec], sysctls: Mapping[str, str]) -> None:
        from pyroute2 import IPSet
        from pyroute2.netlink.exceptions import NetlinkError

        for path, value in sysctls.items():
            self._sysctls.ensure(path, value)
        self._index = ensure_device(interface)
        self._sets = {s.name: s for s in sets}
        try:
            with IPSet() as ipset:
                for s in sets:
                    family = _set_family(s)
                    extra = (
                        {"bitmap_ports_range": (0, 65535)}
                        if s.kind == "bitmap:port"
                        else {"maxelem": self._maxelem}
                    )
                    ipset.create(s.name, stype=s.kind, family=family, exclusive=False, **extra)
        except NetlinkError as exc:
            raise BackendError(f"cannot create ipsets: {exc}") from exc

    def services(self) -> dict[VsKey, VirtualServer]:
        out: dict[VsKey, VirtualServer] = {}
        for body in self._dump_genl(_genl(_CMD_GET_SERVICE)):
            server = _parse_service(body)
            if server is not None:
                out[server.key] = server
        return out

    def dests(self, keys: Iterable[VsKey]) -> dict[VsKey, list[KernelDest]]:
        out: dict[VsKey, list[KernelDest]] = {}
        for key in keys:
            request = _genl(_CMD_GET_DEST, _nested(_ATTR_SERVICE, _svc_key(key)))
            try:
                bodies = list(self._dump_genl(request))
            except BackendError:
                continue  # no such virtual server
            out[key] = [_parse_dest(b, _family(key.address)) for b in bodies]
        return out

    def addresses(self, interface: str) -> set[str]:
        out: set[str] = set()
        try:
            wanted = socket.if_nametoindex(interface)
        except OSError:
            return out
        try:
            for body in self._rt.dump(_RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0)):
                family, _, _, scope, index = _IFADDR.unpack_from(body)
                if index == wanted and scope == 0:  # not the kernel's link-local ones
                    a = _attrs(body[_IFADDR.size :])
                    raw = a.get(_IFA_LOCAL) or a.get(_IFA_ADDRESS, b"")
                    out.add(_ip_text(family, raw))
        except OSError as exc:
            raise BackendError(f"cannot list addresses: {exc}") from exc
        return out

    def members(self, sets: Iterable[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for name in sets:
            members: set[str] = set()
            try:
                for body in self._nf.dump(
                    _IPSET_SUBSYS | _IPSET_LIST, _nfgen(0, _ipset_header(name))
                ):
                    a = _attrs(body[4:])
                    kind = a.get(_S_TYPENAME, b"").rstrip(b"\0").decode()
                    for _, data in _attr_list(a.get(_S_ADT, b"")):
                        members.add(_member_text(kind, data))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise BackendError(f"cannot list ipset {name}: {exc}") from exc
            out[name] = members
        return out

    def apply(self, ops: Sequence[Op]) -> list[OpError]:
        """Runs of operations on the same socket go out as one batch, in order."""
        errors: list[OpError] = []
        run: list[Op] = []
        sock: _Socket | None = None
        for op in [*ops, None]:
            target = None if op is None else self._socket_of(op)
            if run and target is not sock:
                errors += self._send(sock, run)
                run = []
            if op is not None:
                run.append(op)
                sock = target
        return errors

    def remove(self, interface: str, sets: Iterable[str]) -> None:
        remove_links_and_sets([interface], sets)

    # --- internals ---

    def _dump_genl(self, request: bytes) -> Iterator[bytes]:
        try:
            yield from self._genl.dump(self._ipvs_family, request)
        except OSError as exc:
            raise BackendError(f"IPVS dump failed: {exc}") from exc

    def _socket_of(self, op: Op) -> _Socket:
        if isinstance(op, AddAddress | DelAddress):
            return self._rt
        if isinstance(op, AddMember | DelMember):
            return self._nf
        return self._genl

    def _request(self, op: Op) -> tuple[int, int, bytes]:
        match op:
            case AddAddress(address):
                return _RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, _addr_request(self._index, address)
            case DelAddress(address):
                return _RTM_DELADDR, 0, _addr_request(self._index, address)
            case AddMember(name, member) | DelMember(name, member):
                spec = self._sets[name]
                cmd = _IPSET_ADD if isinstance(op, AddMember) else _IPSET_DEL
                data = _nested(_S_DATA, _member_data(spec.kind, member))
                return _IPSET_SUBSYS | cmd, 0, _nfgen(_set_family(spec), _ipset_header(name), data)
        return self._ipvs_family, 0, _ipvs_request(op)

    def _send(self, sock: _Socket | None, ops: Sequence[Op]) -> list[OpError]:
        assert sock is not None
        try:
            failed = sock.batch([self._request(op) for op in ops])
        except OSError as exc:
            raise BackendError(f"netlink send failed: {exc}") from exc
        return [
            OpError(ops[i], code, f"{ops[i]}: {os.strerror(code)}")
            for i, code in sorted(failed.items())
        ]
