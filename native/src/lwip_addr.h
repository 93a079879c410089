// Addresses and IP packet checks of the lwIP binding (native/src/lwip.cc), without lwIP state: parsing and writing
// IPv4/IPv6 addresses as Node does, and the checks that keep the tunnel point-to-point for IPv6 (what may reach lwIP,
// what may leave it).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

extern "C" {
#include "lwip/ip_addr.h"
}

namespace seng_lwip {

// Numeric addresses only (inet_pton): no names, no IPv6 zones ("%eth0").
bool ParseIp4(const std::string& s, ip_addr_t* out);
bool ParseIp6(const std::string& s, ip_addr_t* out);
bool ParseIp(const std::string& s, ip_addr_t* out);

// As Node writes them (inet_ntop: RFC 5952 for IPv6, like libuv's uv_inet_ntop): "ip", and "ip:port" / "[ip6]:port".
std::string IpText(const ip_addr_t* a);
std::string AddrText(const ip_addr_t* a, u16_t port);

// Whether two bound pcbs' families overlap (IPADDR_TYPE_ANY, a dual-stack pcb, overlaps both).
bool FamiliesOverlap(const ip_addr_t* a, const ip_addr_t* b);

// 16 address bytes in fe80::/10 or ff00::/8.
bool LinkLocalOrMulticast(const uint8_t* a);

// Whether a leased IPv6 address may be leased at all: global or unique-local unicast (not ::, not ::/32 (v4-mapped
// and the like), not link-local, not multicast).
bool UsableAddress6(const uint8_t* a);

enum class Input6 { kAccept, kNotOurs, kProtocol };

// An IPv6 packet from the tunnel: a whole header addressed to `ours` (16 bytes) and TCP, UDP or an ICMPv6 echo or
// error message right after it. Extension headers (fragments included), neighbour discovery, MLD, router
// advertisements and redirects are refused (kProtocol): lwIP would learn routes, prefixes or addresses from them.
Input6 CheckInput6(const uint8_t* d, size_t len, const uint8_t* ours);

// An IPv6 header (40 bytes) lwIP wants to send: only from `ours` to an address that is neither link-local nor
// multicast.
bool CheckOutput6(const uint8_t* h, const uint8_t* ours);

}  // namespace seng_lwip
