// libFuzzer harness for seng_offload::Coalescer (native/src/offload.cc), the planner of TUN writes, and the round
// trip through Split: what the kernel makes of a planned write must be the packets that went into it.
//
// Input: the first byte picks the mode. Raw mode (odd) cuts the rest into packets of [u16 length][bytes].
// Builder mode (even) reads a small program that builds TCP segments of up to four flows with correct checksums,
// consecutive sequence numbers and IP IDs, and then lets the fuzzer break one thing per packet (checksum, a header
// byte, sequence, ID, fragment bits, IP options, flags, payload size): random bytes almost never form a mergeable
// flow, so this is what reaches the merge logic.
//
// Properties checked, beyond ASan/UBSan:
//  - every input packet is in exactly one write, and the write's byte count is right;
//  - a single-packet write is a zero virtio_net_hdr and the packet, unchanged;
//  - a merged write, split back by Split() (as the kernel segments it), gives exactly the packets of the flow that
//    went into it, byte for byte (checksum fields aside when both verify: 0x0000 and 0xffff are the same sum);
//  - packets of one flow are written in their order, and nothing crosses a barrier (a fragment, or an IPv6 packet
//    whose next header hides the ports).
#include <string.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "../../native/src/offload.h"
#include "common.h"

using namespace seng_offload;
using fuzzref::Get16;
using fuzzref::Get32;

namespace {

struct Input {
  const uint8_t* p;
  size_t n;
  size_t pos = 0;
  uint8_t u8() { return pos < n ? p[pos++] : 0; }
  uint16_t u16() { return static_cast<uint16_t>(u8() << 8 | u8()); }
  bool more() const { return pos < n; }
};

void Put16(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void Put32(uint8_t* p, uint32_t v) {
  Put16(p, v >> 16);
  Put16(p + 2, v);
}

void FixChecksums(std::vector<uint8_t>& pk, size_t iphl, bool v6) {
  if (!v6) {
    pk[10] = pk[11] = 0;
    Put16(pk.data() + 10, static_cast<uint16_t>(~fuzzref::Sum(pk.data(), iphl)));
  }
  uint8_t* tcp = pk.data() + iphl;
  size_t tcpLen = pk.size() - iphl;
  tcp[16] = tcp[17] = 0;
  uint32_t s = v6 ? fuzzref::Sum(pk.data() + 8, 32) : fuzzref::Sum(pk.data() + 12, 8);
  s += 6 + static_cast<uint32_t>(tcpLen);
  Put16(tcp + 16, static_cast<uint16_t>(~fuzzref::Sum(tcp, tcpLen, s)));
}

struct Flow {
  bool v6;
  uint8_t addr[32];
  uint8_t ports[4];
  uint32_t seq, ack;
  uint16_t id, window, mss;
  uint8_t ttl, tos, optWords;
};

std::vector<std::vector<uint8_t>> Build(Input& in) {
  std::vector<std::vector<uint8_t>> out;
  Flow flows[4];
  uint8_t nflows = in.u8() % 4 + 1;
  for (int f = 0; f < nflows; f++) {
    Flow& fl = flows[f];
    uint8_t b = in.u8();
    fl.v6 = b & 1;
    memset(fl.addr, 0, sizeof fl.addr);
    fl.addr[0] = 10;
    fl.addr[3] = static_cast<uint8_t>(f + 1);  // distinct flows, unless the fuzzer makes ports collide
    fl.ports[0] = 0x1f;
    fl.ports[1] = 0x90;
    fl.ports[2] = 0xc0;
    fl.ports[3] = static_cast<uint8_t>(b >> 1 & 3);
    fl.seq = static_cast<uint32_t>(in.u16()) << 16 | in.u16();
    fl.ack = in.u16();
    fl.id = in.u16();
    fl.window = 0xffff;
    fl.mss = static_cast<uint16_t>(in.u8() % 4 == 0 ? in.u16() % 1500 + 1 : 1000);
    fl.ttl = 64;
    fl.tos = 0;
    fl.optWords = in.u8() % 4 == 0 ? 3 : 0;  // a timestamp option (12 bytes) on some flows
  }
  uint8_t count = in.u8() % 48 + 1;
  for (int k = 0; k < count && in.more(); k++) {
    Flow& fl = flows[in.u8() % nflows];
    uint8_t op = in.u8();
    size_t payload = op & 0x80 ? fl.mss : in.u16() % (fl.mss + 1);
    size_t iphl = fl.v6 ? 40 : 20;
    size_t thl = 20 + fl.optWords * 4;
    std::vector<uint8_t> pk(iphl + thl + payload);
    uint8_t* ip = pk.data();
    if (fl.v6) {
      ip[0] = 0x60 | (fl.tos >> 4);
      Put16(ip + 4, static_cast<uint32_t>(pk.size() - 40));
      ip[6] = 6;
      ip[7] = fl.ttl;
      memcpy(ip + 8, fl.addr, 32);
    } else {
      ip[0] = 0x45;
      ip[1] = fl.tos;
      Put16(ip + 2, static_cast<uint32_t>(pk.size()));
      Put16(ip + 4, fl.id++);
      ip[6] = 0x40;  // DF
      ip[8] = fl.ttl;
      ip[9] = 6;
      memcpy(ip + 12, fl.addr, 8);
    }
    uint8_t* tcp = ip + iphl;
    memcpy(tcp, fl.ports, 4);
    Put32(tcp + 4, fl.seq);
    Put32(tcp + 8, fl.ack);
    tcp[12] = static_cast<uint8_t>(thl / 4 << 4);
    tcp[13] = 0x10;  // ACK
    Put16(tcp + 14, fl.window);
    for (size_t o = 20; o + 12 <= thl; o += 12) {
      tcp[o] = 1;
      tcp[o + 1] = 1;
      tcp[o + 2] = 8;
      tcp[o + 3] = 10;
    }
    for (size_t i = 0; i < payload; i++) tcp[thl + i] = static_cast<uint8_t>(k * 31 + i);
    fl.seq += static_cast<uint32_t>(payload);
    bool fix = true;
    switch (op & 0x0f) {  // one deviation per packet, most packets none
      case 1:
        tcp[13] |= 0x08;  // PSH
        break;
      case 2:
        tcp[13] = in.u8();  // any flags
        break;
      case 3: {  // any header byte
        size_t at = in.u8() % (iphl + thl);
        ip[at] ^= static_cast<uint8_t>(in.u8() | 1);
        break;
      }
      case 4:
        fl.seq += in.u8();  // a gap before the next segment
        break;
      case 5:
        if (!fl.v6) fl.id = static_cast<uint16_t>(fl.id + in.u8());
        break;
      case 6:
        fix = false;  // checksums left at zero
        break;
      case 7:
        if (!fl.v6) ip[6] |= 0x20;  // MF: a fragment
        else ip[6] = in.u8();        // another next header
        break;
      case 8:
        fl.ack += in.u8();  // the ACK moves
        break;
      case 9:
        fl.window = in.u16();
        break;
      case 10:
        fl.ttl = in.u8();
        break;
      case 11:
        tcp[12] |= static_cast<uint8_t>(in.u8() & 0x0f);  // reserved bits and AE
        break;
      default:
        break;
    }
    if (fix) FixChecksums(pk, iphl, fl.v6);
    if ((op & 0x0f) == 12) pk.resize(pk.size() + in.u8() % 8);  // trailing bytes after the IP packet
    out.push_back(std::move(pk));
  }
  return out;
}

std::vector<std::vector<uint8_t>> Raw(Input& in) {
  std::vector<std::vector<uint8_t>> out;
  while (in.more() && out.size() < 256) {
    size_t len = in.u16() % 2048;
    if (len > in.n - in.pos) len = in.n - in.pos;
    out.emplace_back(in.p + in.pos, in.p + in.pos + len);
    in.pos += len;
  }
  return out;
}

// The key SameFlow() uses: IP version, addresses and ports. Empty for packets that are not TCP with known ports.
std::string FlowKey(const std::vector<uint8_t>& p) {
  if (p.size() < 20) return "";
  if (p[0] >> 4 == 4) {
    size_t ihl = static_cast<size_t>(p[0] & 0x0f) * 4;
    if (p[9] != 6 || (Get16(p.data() + 6) & 0x3fff) != 0 || ihl < 20 || p.size() < ihl + 20) return "";
    return std::string("4") + std::string(p.begin() + 12, p.begin() + 20) + std::string(p.begin() + ihl, p.begin() + ihl + 4);
  }
  if (p[0] >> 4 == 6 && p.size() >= 60 && p[6] == 6)
    return std::string("6") + std::string(p.begin() + 8, p.begin() + 44);
  return "";
}

// Whether the packet makes the coalescer close every group (Classify's kBarrier).
bool IsBarrier(const std::vector<uint8_t>& p) {
  if (p.size() < 20) return false;
  if (p[0] >> 4 == 4) return p[9] == 6 && (Get16(p.data() + 6) & 0x3fff) != 0;
  if (p[0] >> 4 == 6 && p.size() >= 60) return p[6] != 6 && p[6] != 17 && p[6] != 58 && p[6] != 59;
  return false;
}

class VecSink : public Sink {
 public:
  std::vector<std::vector<uint8_t>> out;
  uint8_t* Reserve(size_t len) override {
    out.emplace_back(len);
    return out.back().data();
  }
};

// Equal, or equal apart from checksum fields that verify in both.
bool SameSegment(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a == b) return true;
  if (getenv("FUZZ_DEBUG")) {
    for (size_t i = 0; i < a.size() && i < b.size(); i++)
      if (a[i] != b[i]) fprintf(stderr, "byte %zu: segment %02x, packet %02x\n", i, a[i], b[i]);
    fprintf(stderr, "sizes %zu %zu\n", a.size(), b.size());
  }
  if (a.size() != b.size()) return false;
  bool v6 = a[0] >> 4 == 6;
  size_t iphl = v6 ? 40 : static_cast<size_t>(a[0] & 0x0f) * 4;
  std::vector<uint8_t> x = a, y = b;
  for (auto* v : {&x, &y}) {
    if (!v6) (*v)[10] = (*v)[11] = 0;
    (*v)[iphl + 16] = (*v)[iphl + 17] = 0;
  }
  if (x != y) return false;
  for (auto* v : {&a, &b}) {
    if (!v6 && !fuzzref::Ipv4HeaderOk(v->data(), iphl)) return false;
    if (!fuzzref::TcpOk(v->data(), iphl, v6, v->size() - iphl)) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  Input in{data + 1, size - 1};
  std::vector<std::vector<uint8_t>> pk = data[0] & 1 ? Raw(in) : Build(in);
  const size_t n = pk.size();
  std::vector<const uint8_t*> ptrs(n);
  std::vector<size_t> lens(n);
  for (size_t i = 0; i < n; i++) {
    ptrs[i] = pk[i].data();
    lens[i] = pk[i].size();
  }
  Coalescer c;
  const std::vector<PlannedWrite>& writes = c.Plan(ptrs.data(), lens.data(), n);

  std::vector<int> pos(n, -1);  // output position of every input packet
  int next = 0;
  for (size_t w = 0; w < writes.size(); w++) {
    const PlannedWrite& pw = writes[w];
    FUZZ_CHECK(pw.first < n && pw.count >= 1, "write %zu: first %u count %u", w, pw.first, pw.count);
    std::vector<uint8_t> bytes;
    for (size_t j = 0; j < pw.iovCnt; j++) {
      const iovec& v = c.iovs()[pw.iovOff + j];
      bytes.insert(bytes.end(), static_cast<const uint8_t*>(v.iov_base),
                   static_cast<const uint8_t*>(v.iov_base) + v.iov_len);
    }
    FUZZ_CHECK(bytes.size() == kVnetHdrLen + pw.bytes, "write %zu: %zu bytes for %zu", w, bytes.size(), pw.bytes);
    if (pw.count == 1) {
      static const uint8_t zero[kVnetHdrLen] = {0};
      FUZZ_CHECK(memcmp(bytes.data(), zero, kVnetHdrLen) == 0, "write %zu: single packet with a GSO header", w);
      FUZZ_CHECK(std::equal(bytes.begin() + kVnetHdrLen, bytes.end(), pk[pw.first].begin(), pk[pw.first].end()),
                 "write %zu: single packet %u changed", w, pw.first);
      FUZZ_CHECK(pos[pw.first] < 0, "packet %u written twice", pw.first);
      pos[pw.first] = next++;
      continue;
    }
    // A merged write: segment it as the kernel would, and match the segments to the flow's next packets.
    VecSink sink;
    SplitError e = Split(bytes.data(), bytes.size(), sink);
    FUZZ_CHECK(e == SplitError::kNone, "write %zu: Split refuses the merged write: %s", w, SplitErrorText(e));
    FUZZ_CHECK(sink.out.size() == pw.count, "write %zu: %u packets merged, %zu segments", w, pw.count,
               sink.out.size());
    const std::string key = FlowKey(pk[pw.first]);
    FUZZ_CHECK(!key.empty(), "write %zu: merged a packet without a flow", w);
    size_t i = pw.first;
    for (size_t s = 0; s < sink.out.size(); s++) {
      while (i < n && (pos[i] >= 0 || FlowKey(pk[i]) != key)) i++;
      FUZZ_CHECK(i < n, "write %zu: segment %zu matches no packet of the flow", w, s);
      FUZZ_CHECK(SameSegment(sink.out[s], pk[i]), "write %zu: segment %zu differs from packet %zu (%zu bytes)", w, s,
                 i, pk[i].size());
      pos[i] = next++;
      i++;
    }
  }
  for (size_t i = 0; i < n; i++) FUZZ_CHECK(pos[i] >= 0, "packet %zu was not written", i);
  // Order: within a flow, and around barriers.
  std::map<std::string, int> last;
  for (size_t i = 0; i < n; i++) {
    std::string key = FlowKey(pk[i]);
    if (!key.empty()) {
      auto it = last.find(key);
      FUZZ_CHECK(it == last.end() || it->second < pos[i], "packet %zu of a flow written before an earlier one", i);
      last[key] = pos[i];
    }
    if (IsBarrier(pk[i]))
      for (size_t j = 0; j < n; j++)
        FUZZ_CHECK((j < i) == (pos[j] < pos[i]) || j == i, "packet %zu crosses the barrier %zu", j, i);
  }
  return 0;
}
