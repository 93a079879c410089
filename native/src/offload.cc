// TUN offloads: splitting GSO reads and coalescing TCP writes (see offload.h). Pure byte work without
// node-addon-api, so fuzz/native/ can build it alone under libFuzzer; the N-API test hooks are in offload_hooks.cc.
#include "offload.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

namespace seng_offload {

namespace {

// From linux/virtio_net.h (which does not compile as C++ here).
constexpr uint8_t VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
constexpr uint8_t VIRTIO_NET_HDR_GSO_NONE = 0;
constexpr uint8_t VIRTIO_NET_HDR_GSO_TCPV4 = 1;
constexpr uint8_t VIRTIO_NET_HDR_GSO_TCPV6 = 4;
constexpr uint8_t VIRTIO_NET_HDR_GSO_ECN = 0x80;

constexpr uint8_t kFin = 0x01, kPsh = 0x08, kAck = 0x10, kCwr = 0x80;
constexpr size_t kHeadStride = kVnetHdrLen + 60 + 60;  // virtio_net_hdr + IPv4 header + TCP header, at most
constexpr size_t kWindow = 16;                           // most recent groups searched for a packet's flow

inline uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t Get32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 |
         p[3];
}
inline void Put16(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void Put32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}
// A folded checksum is stored as a native 16-bit word (it was summed as native words).
inline void PutCsum(uint8_t* p, uint16_t c) { memcpy(p, &c, 2); }

// Sum of the TCP pseudo-header: addresses, protocol, TCP length.
inline uint64_t PseudoSum(const uint8_t* ip, bool v6, size_t tcpLen) {
  uint64_t s = v6 ? CsumPartial(ip + 8, 32, 0) : CsumPartial(ip + 12, 8, 0);
  uint16_t proto = htons(IPPROTO_TCP);
  uint16_t len = htons(static_cast<uint16_t>(tcpLen));
  // For IPv6 the length is 32 bits, but segments here are below 64 KiB: the high half is zero.
  return CsumAdd(CsumAdd(s, proto), len);
}

struct VnetHdr {
  uint8_t flags;
  uint8_t gsoType;
  uint16_t hdrLen, gsoSize, csumStart, csumOffset;  // in host order: TUN's default for a little-endian host
};

VnetHdr ReadVnet(const uint8_t* b) {
  VnetHdr h;
  h.flags = b[0];
  h.gsoType = b[1];
  memcpy(&h.hdrLen, b + 2, 2);
  memcpy(&h.gsoSize, b + 4, 2);
  memcpy(&h.csumStart, b + 6, 2);
  memcpy(&h.csumOffset, b + 8, 2);
  return h;
}

void WriteVnet(uint8_t* b, const VnetHdr& h) {
  b[0] = h.flags;
  b[1] = h.gsoType;
  memcpy(b + 2, &h.hdrLen, 2);
  memcpy(b + 4, &h.gsoSize, 2);
  memcpy(b + 6, &h.csumStart, 2);
  memcpy(b + 8, &h.csumOffset, 2);
}

const uint8_t kZeroVnet[kVnetHdrLen] = {0};

}  // namespace

uint64_t CsumPartial(const uint8_t* p, size_t n, uint64_t sum) {
  // 8 bytes at a time with end-around carry; the 64-bit sum folds to the same 16-bit one's-complement sum.
  while (n >= 32) {
    uint64_t a, b, c, d;
    memcpy(&a, p, 8);
    memcpy(&b, p + 8, 8);
    memcpy(&c, p + 16, 8);
    memcpy(&d, p + 24, 8);
    sum = CsumAdd(sum, a);
    sum = CsumAdd(sum, b);
    sum = CsumAdd(sum, c);
    sum = CsumAdd(sum, d);
    p += 32;
    n -= 32;
  }
  while (n >= 8) {
    uint64_t a;
    memcpy(&a, p, 8);
    sum = CsumAdd(sum, a);
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    uint32_t a;
    memcpy(&a, p, 4);
    sum = CsumAdd(sum, a);
    p += 4;
    n -= 4;
  }
  if (n >= 2) {
    uint16_t a;
    memcpy(&a, p, 2);
    sum = CsumAdd(sum, a);
    p += 2;
    n -= 2;
  }
  if (n) {
    uint16_t a = 0;
    memcpy(&a, p, 1);  // the odd byte is the first byte of a zero-padded word, as in memory
    sum = CsumAdd(sum, a);
  }
  return sum;
}

const char* SplitErrorText(SplitError e) {
  switch (e) {
    case SplitError::kNone:
      return "ok";
    case SplitError::kShort:
      return "read shorter than a virtio_net_hdr and an IP header";
    case SplitError::kBadGso:
      return "unsupported gso_type";
    case SplitError::kBadHeaders:
      return "GSO packet without valid IP/TCP headers or gso_size";
    case SplitError::kBadCsum:
      return "csum_start/csum_offset outside the packet";
  }
  return "?";
}

SplitError Split(uint8_t* buf, size_t len, Sink& sink) {
  if (len < kVnetHdrLen + 20) return SplitError::kShort;
  VnetHdr h = ReadVnet(buf);
  uint8_t* pkt = buf + kVnetHdrLen;
  size_t plen = len - kVnetHdrLen;
  if (plen > kMaxIpPacket) return SplitError::kBadHeaders;
  uint8_t gso = h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  if (gso == VIRTIO_NET_HDR_GSO_NONE) {
    if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
      // The field holds the pseudo-header sum; the checksum covers it and everything from csum_start on.
      size_t start = h.csumStart, at = start + h.csumOffset;
      if (start >= plen || at + 2 > plen || at < start) return SplitError::kBadCsum;
      uint16_t c = static_cast<uint16_t>(~CsumFold(CsumPartial(pkt + start, plen - start, 0)));
      PutCsum(pkt + at, c == 0 ? 0xffff : c);  // as the kernel does: 0 would mean "no checksum" for UDP
    }
    uint8_t* o = sink.Reserve(plen);
    memcpy(o, pkt, plen);
    return SplitError::kNone;
  }
  if (gso != VIRTIO_NET_HDR_GSO_TCPV4 && gso != VIRTIO_NET_HDR_GSO_TCPV6) return SplitError::kBadGso;
  bool v6 = gso == VIRTIO_NET_HDR_GSO_TCPV6;
  size_t iphl;
  if (!v6) {
    iphl = static_cast<size_t>(pkt[0] & 0x0f) * 4;
    if (pkt[0] >> 4 != 4 || iphl < 20 || pkt[9] != IPPROTO_TCP) return SplitError::kBadHeaders;
  } else {
    iphl = 40;
    if (pkt[0] >> 4 != 6 || pkt[6] != IPPROTO_TCP) return SplitError::kBadHeaders;
  }
  if (plen < iphl + 20) return SplitError::kBadHeaders;
  size_t thl = static_cast<size_t>(pkt[iphl + 12] >> 4) * 4;
  size_t hl = iphl + thl;
  if (thl < 20 || plen <= hl || h.gsoSize == 0) return SplitError::kBadHeaders;
  size_t payload = plen - hl, gsoSize = h.gsoSize;
  uint32_t seq0 = Get32(pkt + iphl + 4);
  uint16_t id0 = Get16(pkt + 4);
  uint8_t flags = pkt[iphl + 13];
  uint32_t i = 0;
  for (size_t off = 0; off < payload; off += gsoSize, i++) {
    size_t chunk = payload - off < gsoSize ? payload - off : gsoSize;
    size_t segLen = hl + chunk;
    uint8_t* o = sink.Reserve(segLen);
    memcpy(o, pkt, hl);
    memcpy(o + hl, pkt + hl + off, chunk);
    if (!v6) {
      // Like the kernel's TSO: consecutive IDs, fresh total length and header checksum per segment.
      Put16(o + 2, static_cast<uint32_t>(segLen));
      Put16(o + 4, static_cast<uint16_t>(id0 + i));
      o[10] = o[11] = 0;
      PutCsum(o + 10, static_cast<uint16_t>(~CsumFold(CsumPartial(o, iphl, 0))));
    } else {
      Put16(o + 4, static_cast<uint32_t>(segLen - 40));
    }
    uint8_t* tcp = o + iphl;
    Put32(tcp + 4, seq0 + static_cast<uint32_t>(off));
    uint8_t f = flags;
    if (off + chunk < payload) f &= static_cast<uint8_t>(~(kFin | kPsh));  // only the last segment ends a push
    if (i > 0) f &= static_cast<uint8_t>(~kCwr);                           // only the first reports CWR
    tcp[13] = f;
    tcp[16] = tcp[17] = 0;
    size_t tcpLen = segLen - iphl;
    PutCsum(tcp + 16, static_cast<uint16_t>(~CsumFold(CsumPartial(tcp, tcpLen, PseudoSum(o, v6, tcpLen)))));
  }
  return SplitError::kNone;
}

// ---- coalescing ----

namespace {

enum class Kind { kOther, kBarrier, kTcpAlone, kCandidate };

struct Parsed {
  Kind kind;
  bool v6;
  size_t iphl, thl;
  uint8_t flags;
};

bool TcpChecksumOk(const uint8_t* p, size_t len, size_t iphl, bool v6) {
  size_t tcpLen = len - iphl;
  return CsumFold(CsumPartial(p + iphl, tcpLen, PseudoSum(p, v6, tcpLen))) == 0xffff;
}

// What a packet is for coalescing. kTcpAlone: TCP with a known flow that must not be merged; kBarrier: possibly
// TCP but the flow is unknown (fragments, IPv6 extension headers): ends every group to keep flows in order.
Parsed Classify(const uint8_t* p, size_t len) {
  Parsed r{Kind::kOther, false, 0, 0, 0};
  if (len < 20) return r;
  uint8_t ver = p[0] >> 4;
  if (ver == 4) {
    size_t ihl = static_cast<size_t>(p[0] & 0x0f) * 4;
    if (p[9] != IPPROTO_TCP) return r;
    if ((Get16(p + 6) & 0x3fff) != 0) {  // MF or a fragment offset: ports may be missing
      r.kind = Kind::kBarrier;
      return r;
    }
    if (ihl < 20 || len < ihl + 20) return r;  // the kernel will refuse it anyway
    r.iphl = ihl;
  } else if (ver == 6) {
    if (len < 60) return r;
    uint8_t nh = p[6];
    if (nh != IPPROTO_TCP) {
      if (nh != IPPROTO_UDP && nh != IPPROTO_ICMPV6 && nh != 59 /* no next header */) r.kind = Kind::kBarrier;
      return r;
    }
    r.v6 = true;
    r.iphl = 40;
  } else {
    return r;
  }
  r.kind = Kind::kTcpAlone;
  const uint8_t* tcp = p + r.iphl;
  r.thl = static_cast<size_t>(tcp[12] >> 4) * 4;
  r.flags = tcp[13];
  if (r.thl < 20 || len <= r.iphl + r.thl || len > kMaxIpPacket) return r;
  if (r.flags != kAck && r.flags != (kAck | kPsh)) return r;
  if (!r.v6) {
    if (r.iphl != 20 || Get16(p + 2) != len) return r;  // IP options, or trailing bytes: not merged
    if (CsumFold(CsumPartial(p, 20, 0)) != 0xffff) return r;
  } else if (Get16(p + 4) != len - 40) {
    return r;
  }
  // A segment with a bad checksum goes alone (the receiver drops it); merging would give it a fresh one.
  if (!TcpChecksumOk(p, len, r.iphl, r.v6)) return r;
  r.kind = Kind::kCandidate;
  return r;
}

// Same addresses and ports; each packet's TCP header is at its own offset (IPv4 options).
bool SameFlow(const uint8_t* a, size_t aIphl, const uint8_t* b, size_t bIphl, bool v6) {
  if (v6 ? memcmp(a + 8, b + 8, 32) != 0 : memcmp(a + 12, b + 12, 8) != 0) return false;
  return memcmp(a + aIphl, b + bIphl, 4) == 0;  // ports
}

}  // namespace

void Coalescer::CloseFlow(const uint8_t* p, size_t iphl, bool v6) {
  size_t seen = 0;
  for (size_t k = groups_.size(); k-- > 0 && seen < kWindow; seen++) {
    Group& g = groups_[k];
    if (g.open && g.v6 == v6 && SameFlow(data_[g.first], g.iphl, p, iphl, v6)) g.open = false;
  }
}

void Coalescer::CloseAll() {
  size_t seen = 0;
  for (size_t k = groups_.size(); k-- > 0 && seen < kWindow; seen++) groups_[k].open = false;
}

const std::vector<PlannedWrite>& Coalescer::Plan(const uint8_t* const* data, const size_t* lens, size_t n) {
  data_ = data;
  lens_ = lens;
  groups_.clear();
  order_.clear();
  writes_.clear();
  iovs_.clear();
  next_.assign(n, UINT32_MAX);
  for (size_t i = 0; i < n; i++) {
    const uint8_t* p = data[i];
    size_t len = lens[i];
    Parsed c = Classify(p, len);
    if (c.kind == Kind::kBarrier) CloseAll();
    if (c.kind == Kind::kTcpAlone) CloseFlow(p, c.iphl, c.v6);
    if (c.kind != Kind::kCandidate) {
      order_.push_back({false, static_cast<uint32_t>(i)});
      continue;
    }
    const uint8_t* tcp = p + c.iphl;
    size_t payload = len - c.iphl - c.thl;
    uint32_t seq = Get32(tcp + 4);
    Group* found = nullptr;
    size_t seen = 0;
    for (size_t k = groups_.size(); k-- > 0 && seen < kWindow; seen++) {
      Group& g = groups_[k];
      if (g.open && g.v6 == c.v6 && SameFlow(data[g.first], g.iphl, p, c.iphl, c.v6)) {
        found = &g;
        break;
      }
    }
    if (found) {
      Group& g = *found;
      const uint8_t* f = data[g.first];
      const uint8_t* ft = f + g.iphl;
      // Everything but lengths, IDs, sequence numbers, PSH and checksums must be what one TSO write would
      // reproduce: the kernel copies the first header to every segment.
      // Byte 12 is the data offset and the reserved bits (AE among them): all of it must match, not only thl.
      bool ok = tcp[12] == ft[12] && seq == g.nextSeq && payload <= g.gso && g.count < kMaxMerge &&
                g.bytes + payload <= kMaxIpPacket && memcmp(tcp + 8, ft + 8, 4) == 0 /* ack */ &&
                memcmp(tcp + 14, ft + 14, 2) == 0 /* window */ && memcmp(tcp + 18, ft + 18, 2) == 0 /* urg ptr */ &&
                memcmp(tcp + 20, ft + 20, c.thl - 20) == 0 /* options */;
      if (ok && !c.v6) {
        ok = p[1] == f[1] /* TOS */ && (p[6] & 0xe0) == (f[6] & 0xe0) /* DF */ && p[8] == f[8] /* TTL */ &&
             Get16(p + 4) == g.nextId;
      } else if (ok) {
        ok = memcmp(p, f, 4) == 0 /* traffic class, flow label */ && p[7] == f[7] /* hop limit */;
      }
      if (ok) {
        next_[g.last] = static_cast<uint32_t>(i);
        g.last = static_cast<uint32_t>(i);
        g.count++;
        g.bytes += payload;
        g.nextSeq = seq + static_cast<uint32_t>(payload);
        g.nextId = static_cast<uint16_t>(g.nextId + 1);
        g.lastFlags = c.flags;
        // Only the last segment of a TSO write may be short or carry PSH.
        if (payload < g.gso || (c.flags & kPsh)) g.open = false;
        continue;
      }
      g.open = false;  // this flow's later segments must not jump ahead of this one
    }
    Group g;
    g.first = g.last = static_cast<uint32_t>(i);
    g.count = 1;
    g.nextSeq = seq + static_cast<uint32_t>(payload);
    g.gso = static_cast<uint16_t>(payload);
    g.nextId = c.v6 ? 0 : static_cast<uint16_t>(Get16(p + 4) + 1);
    g.iphl = static_cast<uint8_t>(c.iphl);
    g.thl = static_cast<uint8_t>(c.thl);
    g.lastFlags = c.flags;
    g.v6 = c.v6;
    g.open = !(c.flags & kPsh);
    g.bytes = len;
    order_.push_back({true, static_cast<uint32_t>(groups_.size())});
    groups_.push_back(g);
  }

  if (heads_.size() < groups_.size() * kHeadStride) heads_.resize(groups_.size() * kHeadStride);
  iovs_.reserve(n + order_.size());
  for (const Entry& e : order_) {
    PlannedWrite w;
    w.iovOff = iovs_.size();
    if (!e.group || groups_[e.index].count == 1) {
      uint32_t i = e.group ? groups_[e.index].first : e.index;
      w.first = i;
      w.count = 1;
      w.bytes = lens[i];
      iovs_.push_back({const_cast<uint8_t*>(kZeroVnet), kVnetHdrLen});
      iovs_.push_back({const_cast<uint8_t*>(data[i]), lens[i]});
    } else {
      const Group& g = groups_[e.index];
      size_t hl = static_cast<size_t>(g.iphl) + g.thl;
      uint8_t* head = heads_.data() + e.index * kHeadStride;
      VnetHdr vh;
      vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
      vh.gsoType = g.v6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4;
      vh.hdrLen = static_cast<uint16_t>(hl);
      vh.gsoSize = g.gso;
      vh.csumStart = g.iphl;
      vh.csumOffset = 16;
      WriteVnet(head, vh);
      uint8_t* ip = head + kVnetHdrLen;
      memcpy(ip, data[g.first], hl);
      if (!g.v6) {
        Put16(ip + 2, static_cast<uint32_t>(g.bytes));
        ip[10] = ip[11] = 0;
        PutCsum(ip + 10, static_cast<uint16_t>(~CsumFold(CsumPartial(ip, g.iphl, 0))));
      } else {
        Put16(ip + 4, static_cast<uint32_t>(g.bytes - 40));
      }
      uint8_t* tcp = ip + g.iphl;
      tcp[13] = g.lastFlags;
      // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel adds the rest per segment.
      tcp[16] = tcp[17] = 0;
      PutCsum(tcp + 16, CsumFold(PseudoSum(ip, g.v6, g.bytes - g.iphl)));
      w.first = g.first;
      w.count = g.count;
      w.bytes = g.bytes;
      iovs_.push_back({head, kVnetHdrLen + hl});
      for (uint32_t i = g.first; i != UINT32_MAX; i = next_[i])
        iovs_.push_back({const_cast<uint8_t*>(data[i] + hl), lens[i] - hl});
    }
    w.iovCnt = iovs_.size() - w.iovOff;
    writes_.push_back(w);
  }
  return writes_;
}

}  // namespace seng_offload
