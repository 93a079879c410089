// Helpers shared by the libFuzzer harnesses: an independent RFC 1071 checksum (byte-wise, big-endian words, so it
// does not share code or tricks with offload.cc) and a failure macro that aborts with a message, which libFuzzer
// records as a crash with the input that caused it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define FUZZ_CHECK(cond, ...)                                           \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf(stderr, "property violated at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                     \
      fputc('\n', stderr);                                              \
      abort();                                                          \
    }                                                                   \
  } while (0)

namespace fuzzref {

// One's-complement sum of big-endian 16-bit words (odd byte padded with zero), folded, not complemented.
inline uint16_t Sum(const uint8_t* p, size_t n, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += static_cast<uint32_t>(p[i] << 8 | p[i + 1]);
  if (n & 1) sum += static_cast<uint32_t>(p[n - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

inline uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t Get32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 | p[3];
}

// Whether an IPv4 header checksum verifies.
inline bool Ipv4HeaderOk(const uint8_t* ip, size_t iphl) { return Sum(ip, iphl) == 0xffff; }

// Whether the TCP checksum of a packet (IP header at ip, TCP at ip + iphl, tcpLen bytes) verifies.
inline bool TcpOk(const uint8_t* ip, size_t iphl, bool v6, size_t tcpLen) {
  uint32_t s = v6 ? Sum(ip + 8, 32) : Sum(ip + 12, 8);
  s += 6 + static_cast<uint32_t>(tcpLen);
  return Sum(ip + iphl, tcpLen, s) == 0xffff;
}

}  // namespace fuzzref
