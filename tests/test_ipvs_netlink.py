"""The netlink codec and batching of the real IPVS client, without a kernel."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from proxyd.backends import ipvs_netlink as nl
from proxyd.backends.ipvs import AddDest, AddMember, AddService
from proxyd.backends.ipvs_plan import RealServer, SetSpec, VirtualServer, VsKey
from proxyd.model import IPFamily, Protocol


class FakeKernelSocket:
    """Answers like the kernel: an error for refused sequence numbers, an ACK only where
    the request asked for one, in order."""

    def __init__(self, refuse: set[int]) -> None:
        self.refuse = refuse
        self.sends: list[bytes] = []
        self.replies: list[bytes] = []
        self.handled = 0

    def send(self, data: bytes) -> int:
        self.sends.append(data)
        off = 0
        while off < len(data):
            size, _, flags, seq, _ = nl._HDR.unpack_from(data, off)
            code = -errno.EEXIST if self.handled in self.refuse else 0
            self.handled += 1
            if code or flags & nl.NLM_F_ACK:
                body = struct.pack("=i", code) + data[off : off + nl._HDR.size]
                self.replies.append(nl._HDR.pack(16 + len(body), nl.NLMSG_ERROR, 0, seq, 0) + body)
            off += size
        return len(data)

    def recv(self, _: int) -> bytes:
        return self.replies.pop(0)


@pytest.mark.parametrize("count", [1, 5, 1000])
def test_batches_map_errors_back_to_requests_and_never_wait_for_a_missing_ack(count: int) -> None:
    sock = nl._Socket.__new__(nl._Socket)
    sock._seq = 0
    refuse = {0, count // 2, count - 1}
    fake = FakeKernelSocket(refuse)
    sock._sock = fake  # type: ignore[assignment]
    requests = [(30, 0, b"x" * (20 + i % 7 * 4)) for i in range(count)]
    assert sock.batch(requests) == {i: errno.EEXIST for i in refuse}
    assert fake.handled == count
    assert all(len(chunk) <= nl._BATCH_BYTES + 200 for chunk in fake.sends)
    assert (len(fake.sends) > 1) == (count == 1000)


@pytest.mark.parametrize(
    ("kind", "member"),
    [
        ("hash:ip,port", "10.96.0.10,tcp:80"),
        ("hash:ip,port", "fd00::10,udp:53"),
        ("hash:ip,port,ip", "10.244.1.2,sctp:8080,10.244.1.2"),
        ("hash:ip,port,net", "198.51.100.9,tcp:80,10.1.0.0/16"),
        ("bitmap:port", "30080"),
    ],
)
def test_ipset_members_round_trip(kind: str, member: str) -> None:
    assert nl._member_text(kind, nl._member_data(kind, member)) == member


def test_virtual_and_real_servers_round_trip_through_the_wire_format() -> None:
    key = VsKey(Protocol.UDP, "10.96.0.10", 53)
    server = VirtualServer(key, "sh", frozenset({"port"}), 60)
    body = nl._ipvs_request(AddService(server))
    assert nl._parse_service(body) == server
    dest = nl._ipvs_request(AddDest(key, RealServer("fd00::2", 8080, 0)))
    parsed = nl._parse_dest(dest, 2)
    assert (parsed.address, parsed.port, parsed.weight, parsed.masq) == ("fd00::2", 8080, 0, True)


@pytest.mark.parametrize(
    ("family", "member", "wire"),
    [
        (IPFamily.IPV4, "10.0.0.1,sctp:30080", socket.AF_INET),
        (IPFamily.IPV6, "fd00::1,sctp:30080", socket.AF_INET6),
        (None, "30080", socket.AF_INET),
    ],
)
def test_set_member_messages_carry_the_sets_family(
    family: IPFamily | None, member: str, wire: int
) -> None:
    """Not guessed from the member: an IPv4 ``addr,sctp:port`` holds a colon too."""
    client = object.__new__(nl.NetlinkIpvsClient)
    kind = "bitmap:port" if family is None else "hash:ip,port"
    client._sets = {"S": SetSpec("S", kind, family, "")}
    _, _, payload = client._request(AddMember("S", member))
    assert payload[0] == wire
