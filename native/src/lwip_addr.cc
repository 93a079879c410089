// See lwip_addr.h.
#include "lwip_addr.h"

#include <arpa/inet.h>
#include <string.h>

extern "C" {
#include "lwip/prot/ip6.h"
}

namespace seng_lwip {

bool ParseIp4(const std::string& s, ip_addr_t* out) {
  struct in_addr a;
  if (inet_pton(AF_INET, s.c_str(), &a) != 1) return false;
  memset(out, 0, sizeof *out);
  IP_SET_TYPE_VAL(*out, IPADDR_TYPE_V4);
  ip_2_ip4(out)->addr = a.s_addr;
  return true;
}

bool ParseIp6(const std::string& s, ip_addr_t* out) {
  struct in6_addr a;
  if (inet_pton(AF_INET6, s.c_str(), &a) != 1) return false;
  memset(out, 0, sizeof *out);
  IP_SET_TYPE_VAL(*out, IPADDR_TYPE_V6);
  memcpy(ip_2_ip6(out)->addr, &a, 16);
  return true;
}

bool ParseIp(const std::string& s, ip_addr_t* out) { return ParseIp4(s, out) || ParseIp6(s, out); }

std::string IpText(const ip_addr_t* a) {
  char buf[INET6_ADDRSTRLEN];
  if (IP_IS_V6(a)) {
    struct in6_addr in;
    memcpy(&in, ip_2_ip6(a)->addr, 16);
    return inet_ntop(AF_INET6, &in, buf, sizeof buf) ? buf : "?";
  }
  struct in_addr in;
  in.s_addr = ip_2_ip4(a)->addr;
  return inet_ntop(AF_INET, &in, buf, sizeof buf) ? buf : "?";
}

std::string AddrText(const ip_addr_t* a, u16_t port) {
  if (IP_IS_V6(a)) return "[" + IpText(a) + "]:" + std::to_string(port);
  return IpText(a) + ":" + std::to_string(port);
}

bool FamiliesOverlap(const ip_addr_t* a, const ip_addr_t* b) {
  u8_t ta = IP_GET_TYPE(a), tb = IP_GET_TYPE(b);
  return ta == tb || ta == IPADDR_TYPE_ANY || tb == IPADDR_TYPE_ANY;
}

bool LinkLocalOrMulticast(const uint8_t* a) { return a[0] == 0xff || (a[0] == 0xfe && (a[1] & 0xc0) == 0x80); }

bool UsableAddress6(const uint8_t* a) {
  bool first32Zero = a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0;
  return !first32Zero && !LinkLocalOrMulticast(a);
}

Input6 CheckInput6(const uint8_t* d, size_t len, const uint8_t* ours) {
  if (len < IP6_HLEN || len > 0xffff || memcmp(d + 24, ours, 16) != 0) return Input6::kNotOurs;
  uint8_t nh = d[6];
  if (nh == IP6_NEXTH_TCP || nh == IP6_NEXTH_UDP) return Input6::kAccept;
  if (nh == IP6_NEXTH_ICMP6 && len > IP6_HLEN) {
    uint8_t type = d[IP6_HLEN];
    if ((type >= 1 && type <= 4) || type == 128 || type == 129) return Input6::kAccept;  // errors, echo
  }
  return Input6::kProtocol;
}

bool CheckOutput6(const uint8_t* h, const uint8_t* ours) {
  return !LinkLocalOrMulticast(h + 8) && !LinkLocalOrMulticast(h + 24) && memcmp(h + 8, ours, 16) == 0;
}

}  // namespace seng_lwip
