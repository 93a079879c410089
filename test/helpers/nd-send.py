#!/usr/bin/env python3
"""Sends crafted IPv6 neighbour/router discovery messages (RFC 4861) from a test namespace, hop limit 255.

Node has no raw sockets, so the rogue LAN host of test/firewall/ipv6-netns.test.ts uses this. The kernel fills in
the ICMPv6 checksum and picks the link-local source address of the interface.

  nd-send.py <ifname> ra <dst>                            router advertisement: default route, prefix 2001:2:0:99::/64
                                                          (autoconf), route information for 2001:2:ff::/48 and
                                                          fd64::/16, MTU 1280, current hop limit 1
  nd-send.py <ifname> redirect <dst> <target> <destination>
  nd-send.py <ifname> na <dst> <target>                   unsolicited, override flag, target link-layer address
  nd-send.py <ifname> ns <dst> <target>
  nd-send.py <ifname> udp <dst> <src> <port>              one UDP datagram with any IPv6 source (the whole header
                                                          written here: IPPROTO_RAW), e.g. a link-local one
"""
import socket
import struct
import sys


def mac_of(ifname: str) -> bytes:
    with open(f"/sys/class/net/{ifname}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def a6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def raw_udp(ifname: str, dst: str, src: str, port: int) -> None:
    payload = b"unshielded"
    length = 8 + len(payload)
    pseudo = a6(src) + a6(dst) + struct.pack("!IxxxB", length, 17)
    udp = struct.pack("!HHHH", 40000, port, length, 0) + payload
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack("!IHBB", 6 << 28, length, 17, 64) + a6(src) + a6(dst)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    s.sendto(header + udp, (dst, 0, 0, 0))


def main() -> None:
    ifname, kind, dst, *rest = sys.argv[1:]
    mac = mac_of(ifname)
    if kind == "udp":
        src, port = rest
        raw_udp(ifname, dst, src, int(port))
        return
    if kind == "ra":
        body = struct.pack("!BBHBBHII", 134, 0, 0, 1, 0, 1800, 0, 0)  # cur hop limit 1, lifetime 1800 s
        body += struct.pack("!BB", 1, 1) + mac  # source link-layer address
        body += struct.pack("!BB", 5, 1) + struct.pack("!HI", 0, 1280)  # MTU
        # prefix information: /64, on-link + autonomous, valid 86400 s, preferred 14400 s
        body += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + a6("2001:2:0:99::")
        for prefix, length in (("2001:2:ff::", 48), ("fd64::", 16)):
            # route information (RFC 4191), preference high, lifetime 1800 s
            body += struct.pack("!BBBBI", 24, 3, length, 0x08, 1800) + a6(prefix)
    elif kind == "redirect":
        target, destination = rest
        body = struct.pack("!BBHI", 137, 0, 0, 0) + a6(target) + a6(destination)
        body += struct.pack("!BB", 2, 1) + mac  # target link-layer address
    elif kind == "na":
        (target,) = rest
        body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + a6(target)  # override
        body += struct.pack("!BB", 2, 1) + mac
    elif kind == "ns":
        (target,) = rest
        body = struct.pack("!BBHI", 135, 0, 0, 0) + a6(target)
        body += struct.pack("!BB", 1, 1) + mac
    else:
        raise SystemExit(f"unknown message {kind}")
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    s.sendto(body, (dst, 0, 0, socket.if_nametoindex(ifname)))


main()
