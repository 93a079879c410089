// TUN offloads (IFF_VNET_HDR + TUNSETOFFLOAD): byte work on packets, no policy, no I/O.
//
// Read side (kernel → us): with TUN_F_CSUM/TSO the kernel hands over TCP "super-packets" of up to 64 KiB with a
// virtio_net_hdr in front, and packets whose checksum is left to us (VIRTIO_NET_HDR_F_NEEDS_CSUM). Split() turns
// one such read into ordinary MTU-sized IP packets with complete checksums, as the kernel's own segmentation would.
//
// Write side (us → kernel): Coalesce() plans the writes of a batch: consecutive in-order TCP segments of one flow
// become one super-packet (one write) with a GSO virtio_net_hdr, which the kernel forwards as one skb and
// segments only where needed. Everything else is written as it is, behind a zero virtio_net_hdr. Packets of a flow
// keep their order; packets of different flows may be reordered relative to each other (a group is written where
// its first packet was).
#pragma once
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace seng_offload {

constexpr size_t kVnetHdrLen = 10;  // struct virtio_net_hdr (no num_buffers), the TUN default
constexpr size_t kMaxIpPacket = 65535;
// Most TCP segments merged into one write: 64 KiB of 1 KiB segments; bounds the iovec count well under IOV_MAX.
constexpr size_t kMaxMerge = 64;

// Why a read could not be turned into packets.
enum class SplitError { kNone, kShort, kBadGso, kBadHeaders, kBadCsum };

const char* SplitErrorText(SplitError e);

// Where Split() puts its packets.
class Sink {
 public:
  virtual ~Sink() = default;
  // Room for one packet of `len` bytes, filled by the caller right away.
  virtual uint8_t* Reserve(size_t len) = 0;
};

// Splits one TUN read (virtio_net_hdr + packet, `len` bytes; the buffer may be modified) into packets put in
// `sink`. Returns kNone, or why the read was dropped (then nothing was put).
SplitError Split(uint8_t* buf, size_t len, Sink& sink);

// One planned write: iovs()[iovOff .. iovOff+iovCnt) cover virtio_net_hdr + one IP packet.
struct PlannedWrite {
  uint32_t first;  // index of the first input packet in it
  uint32_t count;  // input packets in it (more than 1: a GSO super-packet)
  size_t bytes;    // IP packet bytes (without the virtio_net_hdr)
  size_t iovOff;
  size_t iovCnt;
};

// Plans the writes of `n` packets (data[i], lens[i]). The plan points into the inputs and into the planner's own
// header storage, valid until the next Plan(). Never fails: what cannot be merged goes alone, unchanged.
class Coalescer {
 public:
  const std::vector<PlannedWrite>& Plan(const uint8_t* const* data, const size_t* lens, size_t n);
  const iovec* iovs() const { return iovs_.data(); }

 private:
  struct Group {
    uint32_t first, last, count;
    uint32_t nextSeq;
    uint16_t gso, nextId;
    uint8_t iphl, thl, lastFlags;
    bool v6, open;
    size_t bytes;
  };
  struct Entry {
    bool group;
    uint32_t index;  // packet index, or group index
  };
  void CloseFlow(const uint8_t* p, size_t iphl, bool v6);
  void CloseAll();

  const uint8_t* const* data_ = nullptr;
  const size_t* lens_ = nullptr;
  std::vector<Group> groups_;
  std::vector<Entry> order_;
  std::vector<uint32_t> next_;  // next packet of the same group
  std::vector<PlannedWrite> writes_;
  std::vector<iovec> iovs_;
  std::vector<uint8_t> heads_;  // per group: virtio_net_hdr + IP and TCP headers of the super-packet
};

// ---- checksums (RFC 1071), summed over memory as native 16-bit words: byte order does not matter until stored ----

inline uint64_t CsumAdd(uint64_t a, uint64_t b) {
  uint64_t s = a + b;
  return s + (s < b);  // end-around carry
}

uint64_t CsumPartial(const uint8_t* p, size_t n, uint64_t sum);

inline uint16_t CsumFold(uint64_t s) {
  s = (s & 0xffffffff) + (s >> 32);
  s = (s & 0xffffffff) + (s >> 32);
  s = (s & 0xffff) + (s >> 16);
  s = (s & 0xffff) + (s >> 16);
  return static_cast<uint16_t>(s);
}

}  // namespace seng_offload
