// TUN device primitive: open /dev/net/tun (IFF_TUN | IFF_NO_PI [| IFF_MULTI_QUEUE], non-blocking), a uv_poll reader
// that hands JavaScript a whole batch of packets per callback, and writes of one packet per write() syscall.
// No policy: addresses, routes and what to do with packets are decided in TypeScript (src/native/io.ts).
//
// With offload (IFF_VNET_HDR + TUNSETOFFLOAD TUN_F_CSUM | TSO4 | TSO6), reads may be TCP super-packets of up to
// 64 KiB that the reader splits into ordinary packets before JavaScript sees them, and writeMany() merges in-order
// TCP segments of one flow into one GSO write (offload.h). JavaScript sees the same packets either way.
//
// Batch hand-off: packets are read back to back into a scratch Buffer that the JS wrapper owns and passes once to
// start(), with a Uint32Array for the packet lengths; each batch reuses both, so a batch costs no allocation, no
// copy and one call into JS whatever its packet count (allocating per batch made V8 collect garbage all the time).
// The wrapper cuts the batch into per-packet Buffer views (subarray), valid until the callback returns.
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>

#include <cstdint>
#include <string>
#include <vector>

#include "addon.h"
#include "offload.h"
#include "reader.h"

namespace {

constexpr size_t kMaxPacket = 65536;        // read() size: larger than any IP packet a TUN delivers
constexpr size_t kSlotEstimate = 2048;      // scratch per batch slot; the scratch area is packed, not slotted
constexpr uint32_t kDefaultBatch = 64;
constexpr uint32_t kMaxBatch = 1024;

using seng_io::ErrnoText;
using seng_io::GetBytes;
using seng_io::IsDropErrno;
using seng_io::SysError;

class TunHandle : public seng_io::PollReader<TunHandle> {
 public:
  static constexpr const char* kJsName = "Tun";
  static constexpr const char* kClosedText = "the TUN handle is closed";
  static constexpr const char* kStartName = "onPackets";
  static constexpr const char* kAsyncName = "SengTun";

  static Napi::Function Define(Napi::Env env) {
    std::vector<PropertyDescriptor> props = {
        InstanceAccessor<&TunHandle::GetName>("name"),
        InstanceAccessor<&TunHandle::GetOffload>("offload"),
        InstanceMethod<&TunHandle::Write>("write"),
        InstanceMethod<&TunHandle::WriteMany>("writeMany"),
        InstanceMethod<&TunHandle::Stats>("stats"),
    };
    AddReaderProps(props);
    return DefineClass(env, "TunHandle", props);
  }

  // new TunHandle(name: string, multiQueue: boolean, batch: number, napi: boolean, offload: boolean)
  explicit TunHandle(const Napi::CallbackInfo& info) : PollReader<TunHandle>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) {
      Napi::TypeError::New(env, "TunHandle: name must be a string").ThrowAsJavaScriptException();
      return;
    }
    std::string name = info[0].As<Napi::String>().Utf8Value();
    if (name.size() >= IFNAMSIZ) {
      Napi::TypeError::New(env, "TunHandle: name \"" + name + "\" is longer than " + std::to_string(IFNAMSIZ - 1) +
                                    " bytes")
          .ThrowAsJavaScriptException();
      return;
    }
    if (name == "." || name == ".." || name.find_first_of("/: \t\n\r") != std::string::npos ||
        name.find('\0') != std::string::npos) {
      Napi::TypeError::New(env, "TunHandle: invalid interface name \"" + name + "\"").ThrowAsJavaScriptException();
      return;
    }
    bool multiQueue = info.Length() > 1 && info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value();
    bool napi = info.Length() > 3 && info[3].IsBoolean() && info[3].As<Napi::Boolean>().Value();
    bool offload = info.Length() > 4 && info[4].IsBoolean() && info[4].As<Napi::Boolean>().Value();
    batch_ = kDefaultBatch;
    if (info.Length() > 2 && !info[2].IsUndefined()) {
      if (!info[2].IsNumber()) {
        Napi::TypeError::New(env, "TunHandle: batch must be a number").ThrowAsJavaScriptException();
        return;
      }
      double b = info[2].As<Napi::Number>().DoubleValue();
      if (!(b >= 1 && b <= kMaxBatch) || b != static_cast<double>(static_cast<uint32_t>(b))) {
        Napi::RangeError::New(env, "TunHandle: batch must be an integer from 1 to " + std::to_string(kMaxBatch))
            .ThrowAsJavaScriptException();
        return;
      }
      batch_ = static_cast<uint32_t>(b);
    }

    int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      SysError(env, "open(/dev/net/tun)", errno).ThrowAsJavaScriptException();
      return;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (multiQueue ? IFF_MULTI_QUEUE : 0) | (napi ? IFF_NAPI : 0) |
                    (offload ? IFF_VNET_HDR : 0);
    memcpy(ifr.ifr_name, name.data(), name.size());
    if (::ioctl(fd, TUNSETIFF, &ifr) < 0) {
      int err = errno;
      ::close(fd);
      SysError(env, "ioctl(TUNSETIFF)", err).ThrowAsJavaScriptException();
      return;
    }
    if (offload) {
      int hdrLen = static_cast<int>(seng_offload::kVnetHdrLen);
      const char* what = "ioctl(TUNSETVNETHDRSZ)";
      int rc = ::ioctl(fd, TUNSETVNETHDRSZ, &hdrLen);
      if (rc == 0) {
        what = "ioctl(TUNSETOFFLOAD)";
        // Not TUN_F_USO4/USO6 (accepted by this 6.18 kernel): the kernel would then hand over UDP super-packets
        // (GSO_UDP_L4), which Split() has no path for and would drop. UDP segmentation stays the kernel's until
        // Split and the coalescer learn UDP and a measurement shows it pays.
        rc = ::ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
      }
      if (rc < 0) {
        int err = errno;
        ::close(fd);
        SysError(env, what, err).ThrowAsJavaScriptException();
        return;
      }
      offload_ = true;
      rbuf_.resize(seng_offload::kVnetHdrLen + kMaxPacket);
    }
    name_.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
    scratchSize_ = kMaxPacket + static_cast<size_t>(batch_) * kSlotEstimate;
    lens_.resize(batch_);
    Opened(fd);
  }

 private:
  friend class seng_io::PollReader<TunHandle>;

  Napi::Value GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }
  Napi::Value GetOffload(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), offload_); }

  // start(onBatch: (count: number) => void, onError: (err: Error) => void, lengths: Uint32Array, scratch: Buffer)
  bool AcceptStart(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[0].IsFunction() || !info[1].IsFunction() || !info[2].IsTypedArray() ||
        info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array || !info[3].IsBuffer()) {
      Napi::TypeError::New(env, "TunHandle.start(onBatch, onError, lengths: Uint32Array, scratch: Buffer)")
          .ThrowAsJavaScriptException();
      return false;
    }
    if (info[3].As<Napi::Buffer<uint8_t>>().Length() < scratchSize_) {
      Napi::RangeError::New(env, "TunHandle.start: scratch must hold " + std::to_string(scratchSize_) + " bytes")
          .ThrowAsJavaScriptException();
      return false;
    }
    if (info[2].As<Napi::Uint32Array>().ElementLength() < batch_) {
      Napi::RangeError::New(env, "TunHandle.start: lengths must hold " + std::to_string(batch_) + " entries")
          .ThrowAsJavaScriptException();
      return false;
    }
    lengths_ = Napi::Persistent(info[2].As<Napi::Uint32Array>());
    // Held until the handle is destroyed (not reset by close(): a read round may still be filling it).
    scratchRef_ = Napi::Persistent(info[3].As<Napi::Buffer<uint8_t>>());
    sbuf_ = scratchRef_.Value().Data();
    return true;
  }

  void ReleaseStart() { lengths_.Reset(); }

  // libuv reports POLLERR as EBADF; a read tells the real cause (EBADFD once the device was deleted).
  void PollError(Napi::Env env, int status) {
    uint8_t probe[1];
    if (::read(fd_, probe, 0) < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      Fail(env, "read", errno);
    } else {
      Fail(env, "uv_poll", -status);
    }
  }

  void ReadReady(Napi::Env env) {
    int err = offload_ ? ReadSplit() : ReadPlain();
    Deliver(env);
    if (err != 0 && fd_ >= 0) Fail(env, "read", err);
  }

  // Reads packets back to back into the scratch area until the batch is full or the device is drained. Returns
  // a fatal errno, or 0.
  int ReadPlain() {
    while (n_ < batch_ && off_ + kMaxPacket <= scratchSize_) {
      ssize_t r = ::read(fd_, sbuf_ + off_, kMaxPacket);
      if (r < 0) {
        if (errno == EINTR) continue;
        return errno != EAGAIN && errno != EWOULDBLOCK ? errno : 0;
      }
      rxReads_++;
      lens_[n_++] = static_cast<uint32_t>(r);
      off_ += static_cast<size_t>(r);
    }
    return 0;
  }

  // Offload: each read is a virtio_net_hdr and a packet, maybe a super-packet; its segments go to the scratch area,
  // which is handed to JavaScript whenever it is full (so one read may span two callbacks).
  // At most `batch_` reads per wakeup: the sink hands full scratch areas to JavaScript mid-round (which resets n_),
  // so n_ alone would not bound the round, and a busy device would starve the event loop.
  int ReadSplit() {
    for (uint32_t reads = 0; reads < batch_ && n_ < batch_ && fd_ >= 0 && !paused_;) {
      ssize_t r = ::read(fd_, rbuf_.data(), rbuf_.size());
      if (r < 0) {
        if (errno == EINTR) continue;
        return errno != EAGAIN && errno != EWOULDBLOCK ? errno : 0;
      }
      reads++;
      rxReads_++;
      seng_offload::SplitError e = seng_offload::Split(rbuf_.data(), static_cast<size_t>(r), sink_);
      if (e != seng_offload::SplitError::kNone) {
        rxDropped_++;
        lastError_ = std::string("read: ") + seng_offload::SplitErrorText(e);
      }
    }
    return 0;
  }

  // The scratch area as the reader's sink: flushes to JavaScript when a packet does not fit.
  class ScratchSink : public seng_offload::Sink {
   public:
    explicit ScratchSink(TunHandle* h) : h_(h) {}
    uint8_t* Reserve(size_t len) override {
      if (h_->n_ >= h_->batch_ || h_->off_ + len > h_->scratchSize_) h_->Deliver(h_->env_);
      uint8_t* p = h_->sbuf_ + h_->off_;
      h_->lens_[h_->n_++] = static_cast<uint32_t>(len);
      h_->off_ += len;
      return p;
    }

   private:
    TunHandle* h_;
  };

  // Hands the packets in the scratch area to JavaScript, in one Buffer.
  void Deliver(Napi::Env env) {
    uint32_t n = n_;
    size_t off = off_;
    n_ = 0;
    off_ = 0;
    if (n == 0) return;
    rxPackets_ += n;
    rxBytes_ += off;
    rxBatches_++;
    if (onBatch_.IsEmpty()) return;  // closed by an earlier callback of this round
    Napi::Uint32Array lengths = lengths_.Value();
    if (lengths.IsEmpty() || lengths.ElementLength() < n) {
      Fail(env, "read", EFAULT);  // the wrapper's lengths array was detached: cannot deliver
      return;
    }
    memcpy(lengths.Data(), lens_.data(), n * sizeof(uint32_t));
    napi_value argv[1] = {Napi::Number::New(env, n)};
    CallJs(env, onBatch_, 1, argv);
  }

  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint8_t* data;
    size_t len;
    if (info.Length() < 1 || !GetBytes(env, info[0], &data, &len)) {
      Napi::TypeError::New(env, "Tun.write: packet must be a Buffer or Uint8Array").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (!CheckOpen(env, "write")) return env.Undefined();
    return Napi::Boolean::New(env, WriteOne(data, len) == 1);
  }

  // 1 written, 0 not written (counted as dropped or as an error), -1 stop: the device would block.
  int WriteOne(const uint8_t* data, size_t len) {
    if (offload_) {
      static const uint8_t zero[seng_offload::kVnetHdrLen] = {0};
      iovec iov[2] = {{const_cast<uint8_t*>(zero), sizeof zero}, {const_cast<uint8_t*>(data), len}};
      return WriteV(iov, 2, 1, len);
    }
    iovec iov = {const_cast<uint8_t*>(data), len};
    return WriteV(&iov, 1, 1, len);
  }

  // One write of `packets` IP packets (`bytes` long in all), counted as a whole.
  int WriteV(const iovec* iov, int cnt, uint32_t packets, size_t bytes) {
    for (;;) {
      ssize_t r = cnt == 1 ? ::write(fd_, iov[0].iov_base, iov[0].iov_len) : ::writev(fd_, iov, cnt);
      if (r >= 0) {
        txPackets_ += packets;
        txBytes_ += bytes;
        txWrites_++;
        return 1;
      }
      int err = errno;
      if (err == EINTR) continue;
      lastError_ = std::string("write: ") + ErrnoText(err);
      if (IsDropErrno(err)) {
        txDropped_ += packets;
        return -1;
      }
      txErrors_ += packets;
      return 0;
    }
  }

  // writeMany(packets: Uint8Array[]): number — one write() per packet, never merged. A packet the kernel refuses
  // (e.g. not IPv4/IPv6) counts in txErrors and the rest still go; EAGAIN/ENOBUFS stops and counts the rest in
  // txDropped.
  Napi::Value WriteMany(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArray()) {
      Napi::TypeError::New(env, "Tun.writeMany: packets must be an array of Buffers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Array arr = info[0].As<Napi::Array>();
    uint32_t n = arr.Length();
    pending_.resize(n);
    for (uint32_t i = 0; i < n; i++) {
      napi_value el;
      if (napi_get_element(env, arr, i, &el) != napi_ok ||
          !GetBytes(env, el, &pending_[i].data, &pending_[i].len)) {
        if (env.IsExceptionPending()) return env.Undefined();
        Napi::TypeError::New(env, "Tun.writeMany: packets[" + std::to_string(i) + "] is not a Buffer or Uint8Array")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    if (!CheckOpen(env, "writeMany")) return env.Undefined();
    if (offload_) return Napi::Number::New(env, WriteCoalesced(n));
    uint32_t written = 0;
    for (uint32_t i = 0; i < n; i++) {
      int r = WriteOne(pending_[i].data, pending_[i].len);
      if (r == 1) {
        written++;
      } else if (r < 0) {
        txDropped_ += n - i - 1;  // this one was counted by WriteOne
        break;
      }
    }
    return Napi::Number::New(env, written);
  }

  // Offload: consecutive TCP segments of a flow go in one GSO write. Returns how many packets were written.
  uint32_t WriteCoalesced(uint32_t n) {
    ptrs_.resize(n);
    plens_.resize(n);
    for (uint32_t i = 0; i < n; i++) {
      ptrs_[i] = pending_[i].data;
      plens_[i] = pending_[i].len;
    }
    const auto& writes = coalescer_.Plan(ptrs_.data(), plens_.data(), n);
    uint32_t written = 0;
    for (size_t k = 0; k < writes.size(); k++) {
      const seng_offload::PlannedWrite& w = writes[k];
      int r = WriteV(coalescer_.iovs() + w.iovOff, static_cast<int>(w.iovCnt), w.count, w.bytes);
      if (r == 1) {
        written += w.count;
      } else if (r < 0) {
        for (size_t j = k + 1; j < writes.size(); j++) txDropped_ += writes[j].count;
        break;
      }
    }
    return written;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("rxPackets", Napi::Number::New(env, static_cast<double>(rxPackets_)));
    o.Set("rxBytes", Napi::Number::New(env, static_cast<double>(rxBytes_)));
    o.Set("rxBatches", Napi::Number::New(env, static_cast<double>(rxBatches_)));
    o.Set("rxReads", Napi::Number::New(env, static_cast<double>(rxReads_)));
    o.Set("rxDropped", Napi::Number::New(env, static_cast<double>(rxDropped_)));
    o.Set("txPackets", Napi::Number::New(env, static_cast<double>(txPackets_)));
    o.Set("txBytes", Napi::Number::New(env, static_cast<double>(txBytes_)));
    o.Set("txDropped", Napi::Number::New(env, static_cast<double>(txDropped_)));
    o.Set("txErrors", Napi::Number::New(env, static_cast<double>(txErrors_)));
    o.Set("txWrites", Napi::Number::New(env, static_cast<double>(txWrites_)));
    if (!lastError_.empty()) o.Set("lastError", Napi::String::New(env, lastError_));
    return o;
  }

  struct Span {
    const uint8_t* data;
    size_t len;
  };

  std::string name_;
  uint32_t batch_ = kDefaultBatch;
  Napi::Reference<Napi::Buffer<uint8_t>> scratchRef_;
  uint8_t* sbuf_ = nullptr;  // scratchRef_'s bytes
  size_t scratchSize_ = 0;
  std::vector<uint32_t> lens_;
  std::vector<Span> pending_;
  bool offload_ = false;
  std::vector<uint8_t> rbuf_;  // one offload read: virtio_net_hdr + up to 64 KiB
  uint32_t n_ = 0;             // packets in the scratch area
  size_t off_ = 0;             // bytes in the scratch area
  ScratchSink sink_{this};
  seng_offload::Coalescer coalescer_;
  std::vector<const uint8_t*> ptrs_;
  std::vector<size_t> plens_;
  Napi::Reference<Napi::Uint32Array> lengths_;
  uint64_t rxPackets_ = 0, rxBytes_ = 0, rxBatches_ = 0, rxReads_ = 0, rxDropped_ = 0;
  uint64_t txPackets_ = 0, txBytes_ = 0, txDropped_ = 0, txErrors_ = 0, txWrites_ = 0;
  std::string lastError_;
};

}  // namespace

void InitTun(Napi::Env env, Napi::Object exports) { exports.Set("TunHandle", TunHandle::Define(env)); }
