// libFuzzer harness for seng_offload::Split (native/src/offload.cc): one TUN read, virtio_net_hdr + packet, as the
// kernel hands it over with TUN_F_CSUM/TSO. Beyond "no crash" (ASan/UBSan), it checks what segmentation must keep:
//  - a dropped read puts nothing in the sink;
//  - GSO_NONE: the packet comes out unchanged, except that with NEEDS_CSUM the checksum is completed so that it
//    verifies against the pseudo-header sum the field held;
//  - GSO TCPv4/v6: segments of at most gso_size payload bytes whose payloads concatenate to the original payload,
//    with the original headers except length, IPv4 ID (+1 per segment), sequence number (+offset), FIN/PSH only on
//    the last and CWR only on the first segment, and IP and TCP checksums that verify (checked with an independent
//    byte-wise implementation); a TCPv6 super-packet is split only when TCP directly follows the IPv6 header.
// It also checks CsumPartial against that independent implementation at every alignment.
#include <arpa/inet.h>
#include <string.h>

#include <vector>

#include "../../native/src/offload.h"
#include "common.h"

using namespace seng_offload;
using fuzzref::Get16;
using fuzzref::Get32;

namespace {

class VecSink : public Sink {
 public:
  std::vector<std::vector<uint8_t>> out;
  uint8_t* Reserve(size_t len) override {
    out.emplace_back(len);
    return out.back().data();
  }
};

void CheckCsumPartial(const uint8_t* data, size_t size) {
  for (size_t align = 0; align < 8 && align < size; align++) {
    const uint8_t* p = data + align;
    size_t n = size - align;
    uint16_t native = CsumFold(CsumPartial(p, n, 0));
    uint16_t ref = fuzzref::Sum(p, n);
    // Summing native (little-endian) words gives the byte-swapped sum (RFC 1071, byte order independence).
    uint16_t want = static_cast<uint16_t>(ntohs(ref));
    // One's complement has two zeros; the folded sums may differ only in which one they show.
    bool same = native == want || ((native == 0 || native == 0xffff) && (want == 0 || want == 0xffff));
    FUZZ_CHECK(same, "CsumPartial(%zu bytes at +%zu) = %04x, reference %04x", n, align, native, want);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CheckCsumPartial(data, size < 256 ? size : 256);

  std::vector<uint8_t> buf(data, data + size);
  VecSink sink;
  SplitError e = Split(buf.data(), buf.size(), sink);
  if (e != SplitError::kNone) {
    FUZZ_CHECK(sink.out.empty(), "dropped read (%s) put %zu packets", SplitErrorText(e), sink.out.size());
    return 0;
  }
  FUZZ_CHECK(size >= kVnetHdrLen + 20, "accepted a %zu-byte read", size);
  const uint8_t flags = data[0];
  const uint8_t gso = data[1] & 0x7f;
  uint16_t gsoSize, csumStart, csumOffset;
  memcpy(&gsoSize, data + 4, 2);
  memcpy(&csumStart, data + 6, 2);
  memcpy(&csumOffset, data + 8, 2);
  const uint8_t* in = data + kVnetHdrLen;
  const size_t plen = size - kVnetHdrLen;

  if (gso == 0) {
    FUZZ_CHECK(sink.out.size() == 1, "GSO_NONE gave %zu packets", sink.out.size());
    const std::vector<uint8_t>& o = sink.out[0];
    FUZZ_CHECK(o.size() == plen, "GSO_NONE changed the length %zu -> %zu", plen, o.size());
    if (!(flags & 1)) {
      FUZZ_CHECK(memcmp(o.data(), in, plen) == 0, "GSO_NONE without NEEDS_CSUM changed the packet");
      return 0;
    }
    size_t at = static_cast<size_t>(csumStart) + csumOffset;
    FUZZ_CHECK(csumStart < plen && at + 2 <= plen, "NEEDS_CSUM accepted outside the packet");
    for (size_t i = 0; i < plen; i++)
      if (i != at && i != at + 1) FUZZ_CHECK(o[i] == in[i], "NEEDS_CSUM changed byte %zu", i);
    if ((at - csumStart) % 2 == 0) {
      // The field held the pseudo-header sum: the completed checksum verifies against it.
      uint32_t pseudo = Get16(in + at);
      uint16_t s = fuzzref::Sum(o.data() + csumStart, plen - csumStart, pseudo);
      FUZZ_CHECK(s == 0xffff, "completed checksum does not verify (sum %04x)", s);
    }
    return 0;
  }

  FUZZ_CHECK(gso == 1 || gso == 4, "accepted gso_type %u", gso);
  const bool v6 = gso == 4;
  // Never an unparsed chain: a TCPv6 super-packet is split only when TCP follows the fixed header directly (an
  // extension header there is a dropped read, not segments cut at a guessed offset).
  FUZZ_CHECK(!v6 || in[6] == 6, "split a GSO_TCPV6 read whose next header is %u", in[6]);
  FUZZ_CHECK(in[0] >> 4 == (v6 ? 6 : 4), "split a GSO read of IP version %u as %s", in[0] >> 4, v6 ? "v6" : "v4");
  const size_t iphl = v6 ? 40 : static_cast<size_t>(in[0] & 0x0f) * 4;
  const size_t thl = static_cast<size_t>(in[iphl + 12] >> 4) * 4;
  const size_t hl = iphl + thl;
  FUZZ_CHECK(gsoSize > 0 && plen > hl, "accepted a GSO read without payload or gso_size");
  const size_t payload = plen - hl;
  const size_t want = (payload + gsoSize - 1) / gsoSize;
  FUZZ_CHECK(sink.out.size() == want, "%zu payload bytes at gso_size %u gave %zu segments, want %zu", payload,
             gsoSize, sink.out.size(), want);
  const uint32_t seq0 = Get32(in + iphl + 4);
  size_t off = 0;
  for (size_t i = 0; i < sink.out.size(); i++) {
    const std::vector<uint8_t>& o = sink.out[i];
    FUZZ_CHECK(o.size() > hl && o.size() - hl <= gsoSize, "segment %zu has %zu bytes", i, o.size());
    const size_t chunk = o.size() - hl;
    const bool last = i + 1 == sink.out.size();
    FUZZ_CHECK(last || chunk == gsoSize, "segment %zu is short (%zu) but not last", i, chunk);
    FUZZ_CHECK(memcmp(o.data() + hl, in + hl + off, chunk) == 0, "segment %zu payload differs", i);
    const uint8_t* tcp = o.data() + iphl;
    if (!v6) {
      FUZZ_CHECK(Get16(o.data() + 2) == o.size(), "segment %zu total length", i);
      FUZZ_CHECK(Get16(o.data() + 4) == static_cast<uint16_t>(Get16(in + 4) + i), "segment %zu IP ID", i);
      FUZZ_CHECK(fuzzref::Ipv4HeaderOk(o.data(), iphl), "segment %zu IPv4 header checksum", i);
      FUZZ_CHECK(memcmp(o.data(), in, 2) == 0 && memcmp(o.data() + 6, in + 6, 4) == 0 &&
                     memcmp(o.data() + 12, in + 12, iphl - 12) == 0,
                 "segment %zu IPv4 header changed", i);
    } else {
      FUZZ_CHECK(Get16(o.data() + 4) == o.size() - 40, "segment %zu payload length", i);
      FUZZ_CHECK(memcmp(o.data(), in, 4) == 0 && memcmp(o.data() + 6, in + 6, 34) == 0,
                 "segment %zu IPv6 header changed", i);
    }
    FUZZ_CHECK(Get32(tcp + 4) == seq0 + static_cast<uint32_t>(off), "segment %zu sequence number", i);
    uint8_t f = in[iphl + 13];
    if (!last) f &= static_cast<uint8_t>(~0x09);  // FIN, PSH
    if (i > 0) f &= static_cast<uint8_t>(~0x80);  // CWR
    FUZZ_CHECK(tcp[13] == f, "segment %zu TCP flags %02x, want %02x", i, tcp[13], f);
    FUZZ_CHECK(memcmp(tcp, in + iphl, 4) == 0 && memcmp(tcp + 8, in + iphl + 8, 5) == 0 &&
                   memcmp(tcp + 14, in + iphl + 14, 2) == 0 && memcmp(tcp + 18, in + iphl + 18, thl - 18) == 0,
               "segment %zu TCP header changed", i);
    FUZZ_CHECK(fuzzref::TcpOk(o.data(), iphl, v6, o.size() - iphl), "segment %zu TCP checksum", i);
    off += chunk;
  }
  FUZZ_CHECK(off == payload, "segments carry %zu of %zu payload bytes", off, payload);
  return 0;
}
