// Batched UDP primitive: a non-blocking socket whose uv_poll reader drains up to `batch` datagrams per recvmmsg()
// and whose sendMany() hands a whole array to sendmmsg() (one syscall per up to 1024 datagrams). Node's dgram costs
// one syscall and one JS event per datagram; this exists for throughput. No policy here.
//
// Receive hand-off per recvmmsg(): one Buffer holding the datagrams back to back, a Uint32Array owned by the JS
// wrapper (passed once to start()) holding [length, peerIndex] pairs, and an array of the distinct peer strings
// of that batch ("1.2.3.4:5678" or "[2001:db8::1]:5678"; IPv4-mapped IPv6 peers are shown as IPv4). Strings are
// what the gateway's session Map is keyed by; building one per distinct peer per batch (not per datagram) keeps
// the cost low when a batch comes from few peers, and equal peers in a batch share one string.
//
// UDP GRO (UDP_GRO, on by default when the receive slots hold 64 KiB): the kernel may hand over a run of equal-sized
// datagrams of one peer as one message (a sender's UDP GSO buffer is then never cut into datagrams on its way in,
// and GRO-capable devices merge too); the cmsg gives the datagram size and the message is split here into its
// datagrams, so the caller sees exactly the datagrams that were sent.
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "addon.h"
#include "reader.h"

namespace {

constexpr uint32_t kDefaultBatch = 64;
constexpr uint32_t kMaxBatch = 1024;
constexpr uint32_t kDefaultMaxDatagram = 65536;
constexpr unsigned kSendChunk = 1024;  // UIO_MAXIOV: the most sendmmsg() takes at once
constexpr int kRoundsPerWakeup = 4;
// UDP GSO (UDP_SEGMENT): equal-sized datagrams to one peer, adjacent in memory, go down the stack as one buffer
// that the kernel cuts into datagrams as late as possible. Older kernels take at most 64 segments per send.
constexpr uint32_t kGsoMaxSegs = 64;
constexpr size_t kGsoMaxBytes = 65000;
// Most datagrams one received GRO message may carry: the kernel's UDP_MAX_SEGMENTS (128 since Linux 6.10; 64
// before; GRO from devices stops at 64). A message with more is dropped and counted (rxTruncated).
constexpr uint32_t kGroMaxSegs = 128;  // below 64 KiB with the IP and UDP headers     // full batches drained per readiness event before yielding to the loop

using seng_io::ErrnoText;
using seng_io::GetBytes;
using seng_io::IsDropErrno;
using seng_io::SysError;

// Parses a numeric IPv4 or IPv6 address ("::1", "[::1]", "fe80::1%eth0"); no name resolution.
bool ParseAddress(const std::string& in, uint16_t port, sockaddr_storage* out, socklen_t* outLen) {
  std::string s = in;
  if (s.size() >= 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  memset(out, 0, sizeof *out);
  auto* a4 = reinterpret_cast<sockaddr_in*>(out);
  if (s.find(':') == std::string::npos) {
    if (inet_pton(AF_INET, s.c_str(), &a4->sin_addr) != 1) return false;
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    *outLen = sizeof(sockaddr_in);
    return true;
  }
  auto* a6 = reinterpret_cast<sockaddr_in6*>(out);
  std::string host = s;
  uint32_t scope = 0;
  size_t pct = s.find('%');
  if (pct != std::string::npos) {
    host = s.substr(0, pct);
    std::string zone = s.substr(pct + 1);
    if (zone.empty()) return false;
    char* end = nullptr;
    unsigned long num = strtoul(zone.c_str(), &end, 10);
    if (end && *end == '\0') {
      scope = static_cast<uint32_t>(num);
    } else {
      scope = if_nametoindex(zone.c_str());
      if (scope == 0) return false;
    }
  }
  if (inet_pton(AF_INET6, host.c_str(), &a6->sin6_addr) != 1) return false;
  a6->sin6_family = AF_INET6;
  a6->sin6_port = htons(port);
  a6->sin6_scope_id = scope;
  *outLen = sizeof(sockaddr_in6);
  return true;
}

// "ip:port" / "[ip6]:port" -> sockaddr. On an IPv6 socket, IPv4 peers become IPv4-mapped addresses.
bool ParsePeer(const char* str, size_t len, int family, sockaddr_storage* out, socklen_t* outLen) {
  std::string s(str, len);
  size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon + 1 >= s.size() || colon == 0) return false;
  std::string host = s.substr(0, colon);
  std::string portStr = s.substr(colon + 1);
  if (host.find(':') != std::string::npos && !(host.front() == '[' && host.back() == ']')) return false;
  if (portStr.size() > 5) return false;
  unsigned long port = 0;
  for (char c : portStr) {
    if (c < '0' || c > '9') return false;
    port = port * 10 + static_cast<unsigned long>(c - '0');
  }
  if (port == 0 || port > 65535) return false;
  if (!ParseAddress(host, static_cast<uint16_t>(port), out, outLen)) return false;
  if (family == AF_INET6 && out->ss_family == AF_INET) {
    sockaddr_in a4 = *reinterpret_cast<sockaddr_in*>(out);
    auto* a6 = reinterpret_cast<sockaddr_in6*>(out);
    memset(out, 0, sizeof *out);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = a4.sin_port;
    a6->sin6_addr.s6_addr[10] = 0xff;
    a6->sin6_addr.s6_addr[11] = 0xff;
    memcpy(&a6->sin6_addr.s6_addr[12], &a4.sin_addr, 4);
    *outLen = sizeof(sockaddr_in6);
  }
  return out->ss_family == family;
}

std::string FormatPeer(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN + 1];
  if (ss.ss_family == AF_INET) {
    const auto& a4 = reinterpret_cast<const sockaddr_in&>(ss);
    inet_ntop(AF_INET, &a4.sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(a4.sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    const auto& a6 = reinterpret_cast<const sockaddr_in6&>(ss);
    if (IN6_IS_ADDR_V4MAPPED(&a6.sin6_addr)) {
      inet_ntop(AF_INET, &a6.sin6_addr.s6_addr[12], buf, sizeof buf);
      return std::string(buf) + ":" + std::to_string(ntohs(a6.sin6_port));
    }
    inet_ntop(AF_INET6, &a6.sin6_addr, buf, sizeof buf);
    std::string out = "[" + std::string(buf);
    if (a6.sin6_scope_id != 0) out += "%" + std::to_string(a6.sin6_scope_id);
    return out + "]:" + std::to_string(ntohs(a6.sin6_port));
  }
  return "?";
}

// Compact comparable form of a peer address (family, port, 16 address bytes, scope).
struct PeerKey {
  uint16_t family;
  uint16_t port;
  uint32_t scope;
  uint8_t addr[16];
  bool operator==(const PeerKey& o) const { return memcmp(this, &o, sizeof *this) == 0; }
};

PeerKey KeyOf(const sockaddr_storage& ss) {
  PeerKey k;
  memset(&k, 0, sizeof k);
  k.family = ss.ss_family;
  if (ss.ss_family == AF_INET) {
    const auto& a4 = reinterpret_cast<const sockaddr_in&>(ss);
    k.port = a4.sin_port;
    memcpy(k.addr, &a4.sin_addr, 4);
  } else if (ss.ss_family == AF_INET6) {
    const auto& a6 = reinterpret_cast<const sockaddr_in6&>(ss);
    k.port = a6.sin6_port;
    k.scope = a6.sin6_scope_id;
    memcpy(k.addr, &a6.sin6_addr, 16);
  }
  return k;
}

bool GetUint(Napi::Object opts, const char* key, double max, double* out, Napi::Env env, bool* bad) {
  Napi::Value v = opts.Get(key);
  if (v.IsUndefined()) return false;
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0 && d <= max) || d != static_cast<double>(static_cast<int64_t>(d))) {
    Napi::RangeError::New(env, std::string("UdpSocket.bind: ") + key + " must be an integer from 0 to " +
                                   std::to_string(static_cast<int64_t>(max)))
        .ThrowAsJavaScriptException();
    *bad = true;
    return false;
  }
  *out = d;
  return true;
}

class UdpHandle : public seng_io::PollReader<UdpHandle> {
 public:
  static constexpr const char* kJsName = "UdpSocket";
  static constexpr const char* kClosedText = "the socket is closed";
  static constexpr const char* kStartName = "onDatagrams";
  static constexpr const char* kAsyncName = "SengUdp";

  static Napi::Function Define(Napi::Env env) {
    std::vector<PropertyDescriptor> props = {
        InstanceAccessor<&UdpHandle::GetPort>("port"),
        InstanceAccessor<&UdpHandle::GetAddress>("address"),
        InstanceAccessor<&UdpHandle::GetFamily>("family"),
        InstanceAccessor<&UdpHandle::GetRcvbuf>("rcvbuf"),
        InstanceAccessor<&UdpHandle::GetSndbuf>("sndbuf"),
        InstanceMethod<&UdpHandle::Send>("send"),
        InstanceMethod<&UdpHandle::SendMany>("sendMany"),
        InstanceMethod<&UdpHandle::Stats>("stats"),
    };
    AddReaderProps(props);
    return DefineClass(env, "UdpHandle", props);
  }

  // new UdpHandle(address: string, port: number, opts: { rcvbuf?, sndbuf?, reusePort?, ipv6Only?, batch?,
  //               maxDatagram? })
  explicit UdpHandle(const Napi::CallbackInfo& info) : PollReader<UdpHandle>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
      Napi::TypeError::New(env, "UdpSocket.bind(address: string, port: number, opts?)").ThrowAsJavaScriptException();
      return;
    }
    std::string address = info[0].As<Napi::String>().Utf8Value();
    double port = info[1].As<Napi::Number>().DoubleValue();
    if (!(port >= 0 && port <= 65535) || port != static_cast<double>(static_cast<int>(port))) {
      Napi::RangeError::New(env, "UdpSocket.bind: port must be an integer from 0 to 65535")
          .ThrowAsJavaScriptException();
      return;
    }
    double rcvbuf = -1, sndbuf = -1, batch = kDefaultBatch, maxDatagram = kDefaultMaxDatagram;
    bool reusePort = false, ipv6Only = false, gro = true;
    if (info.Length() > 2 && !info[2].IsUndefined()) {
      if (!info[2].IsObject()) {
        Napi::TypeError::New(env, "UdpSocket.bind: opts must be an object").ThrowAsJavaScriptException();
        return;
      }
      Napi::Object o = info[2].As<Napi::Object>();
      bool bad = false;
      GetUint(o, "rcvbuf", 1 << 30, &rcvbuf, env, &bad);
      if (!bad) GetUint(o, "sndbuf", 1 << 30, &sndbuf, env, &bad);
      if (!bad) GetUint(o, "batch", kMaxBatch, &batch, env, &bad);
      if (!bad) GetUint(o, "maxDatagram", 65536, &maxDatagram, env, &bad);
      if (bad) return;
      if (batch < 1 || maxDatagram < 1) {
        Napi::RangeError::New(env, "UdpSocket.bind: batch and maxDatagram must be at least 1")
            .ThrowAsJavaScriptException();
        return;
      }
      reusePort = o.Get("reusePort").ToBoolean().Value();
      ipv6Only = o.Get("ipv6Only").ToBoolean().Value();
      Napi::Value g = o.Get("gro");
      if (!g.IsUndefined()) gro = g.ToBoolean().Value();
    }
    sockaddr_storage ss;
    socklen_t slen = 0;
    if (!ParseAddress(address, static_cast<uint16_t>(port), &ss, &slen)) {
      Napi::TypeError::New(env, "UdpSocket.bind: \"" + address + "\" is not a numeric IPv4 or IPv6 address")
          .ThrowAsJavaScriptException();
      return;
    }
    family_ = ss.ss_family;
    int fd = ::socket(family_, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      SysError(env, "socket", errno).ThrowAsJavaScriptException();
      return;
    }
    auto fail = [&](const char* call) {
      int err = errno;
      ::close(fd);
      SysError(env, call, err).ThrowAsJavaScriptException();
    };
    int one = 1, v6only = ipv6Only ? 1 : 0;
    if (family_ == AF_INET6 && ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0) {
      { fail("setsockopt(IPV6_V6ONLY)"); return; }
    }
    if (reusePort && ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
      { fail("setsockopt(SO_REUSEPORT)"); return; }
    }
    // The *FORCE variants pass net.core.[rw]mem_max when we have CAP_NET_ADMIN; otherwise the plain ones (capped).
    if (rcvbuf >= 0 && !SetBuf(fd, SO_RCVBUFFORCE, SO_RCVBUF, static_cast<int>(rcvbuf))) {
      { fail("setsockopt(SO_RCVBUF)"); return; }
    }
    if (sndbuf >= 0 && !SetBuf(fd, SO_SNDBUFFORCE, SO_SNDBUF, static_cast<int>(sndbuf))) {
      { fail("setsockopt(SO_SNDBUF)"); return; }
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), slen) < 0) { fail("bind"); return; }
    sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen) < 0) { fail("getsockname"); return; }
    std::string formatted = FormatPeer(bound);
    size_t colon = formatted.rfind(':');
    address_ = formatted.substr(0, colon);
    if (!address_.empty() && address_.front() == '[') address_ = address_.substr(1, address_.size() - 2);
    port_ = ntohs(family_ == AF_INET ? reinterpret_cast<sockaddr_in&>(bound).sin_port
                                     : reinterpret_cast<sockaddr_in6&>(bound).sin6_port);
    socklen_t il = sizeof(int);
    ::getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbufEff_, &il);
    il = sizeof(int);
    ::getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbufEff_, &il);

    batch_ = static_cast<uint32_t>(batch);
    slot_ = static_cast<size_t>(maxDatagram);
    // GRO only when a slot holds any message (64 KiB); an older kernel without UDP_GRO just gets datagrams.
    if (gro && slot_ >= 65535) {
      gro_ = ::setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0;
      if (gro_) rxCmsg_.assign(static_cast<size_t>(batch_) * kRxCmsgSpace, 0);
    }
    // Virtual reservation; pages are only touched as datagrams land in them.
    rxBuf_ = static_cast<uint8_t*>(malloc(slot_ * batch_));
    if (!rxBuf_) {
      ::close(fd);
      Napi::Error::New(env, "UdpSocket.bind: out of memory").ThrowAsJavaScriptException();
      return;
    }
    rxMsgs_.resize(batch_);
    rxIov_.resize(batch_);
    rxNames_.resize(batch_);
    peerKeys_.reserve(batch_);
    for (uint32_t i = 0; i < batch_; i++) {
      rxIov_[i].iov_base = rxBuf_ + i * slot_;
      rxIov_[i].iov_len = slot_;
    }
    Opened(fd);
  }

  ~UdpHandle() override { free(rxBuf_); }

 private:
  friend class seng_io::PollReader<UdpHandle>;

  static bool SetBuf(int fd, int forceOpt, int opt, int size) {
    if (::setsockopt(fd, SOL_SOCKET, forceOpt, &size, sizeof size) == 0) return true;
    if (errno != EPERM) return false;
    return ::setsockopt(fd, SOL_SOCKET, opt, &size, sizeof size) == 0;
  }

  Napi::Value GetPort(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), port_); }
  Napi::Value GetAddress(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), address_); }
  Napi::Value GetFamily(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), family_ == AF_INET6 ? 6 : 4);
  }
  Napi::Value GetRcvbuf(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), rcvbufEff_); }
  Napi::Value GetSndbuf(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), sndbufEff_); }

  // start(onBatch: (data: Buffer, count: number, peers: string[]) => void, onError: (err: Error) => void,
  //       meta: Uint32Array /* 2 * batch entries: length, peer index */)
  bool AcceptStart(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsFunction() || !info[1].IsFunction() || !info[2].IsTypedArray() ||
        info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
      Napi::TypeError::New(env, "UdpHandle.start(onBatch, onError, meta: Uint32Array)")
          .ThrowAsJavaScriptException();
      return false;
    }
    if (info[2].As<Napi::Uint32Array>().ElementLength() < 2 * static_cast<size_t>(batch_)) {
      Napi::RangeError::New(env, "UdpHandle.start: meta must hold " + std::to_string(2 * batch_) + " entries")
          .ThrowAsJavaScriptException();
      return false;
    }
    meta_ = Napi::Persistent(info[2].As<Napi::Uint32Array>());
    return true;
  }

  void ReleaseStart() { meta_.Reset(); }

  // Up to kRoundsPerWakeup full batches per readiness event, then back to the loop.
  void ReadReady(Napi::Env env) {
    for (int round = 0; round < kRoundsPerWakeup && fd_ >= 0 && polling_; round++) {
      for (uint32_t i = 0; i < batch_; i++) {
        msghdr& h = rxMsgs_[i].msg_hdr;
        h.msg_name = &rxNames_[i];
        h.msg_namelen = sizeof(sockaddr_storage);
        h.msg_iov = &rxIov_[i];
        h.msg_iovlen = 1;
        if (gro_) {
          h.msg_control = rxCmsg_.data() + i * kRxCmsgSpace;
          h.msg_controllen = kRxCmsgSpace;
        } else {
          h.msg_control = nullptr;
          h.msg_controllen = 0;
        }
        h.msg_flags = 0;
        rxMsgs_[i].msg_len = 0;
      }
      int r = ::recvmmsg(fd_, rxMsgs_.data(), batch_, MSG_DONTWAIT, nullptr);
      if (r < 0) {
        int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) return;
        if (err == EBADF || err == ENOTSOCK || err == EFAULT || err == EINVAL) {
          Fail(env, "recvmmsg", err);
          return;
        }
        rxErrors_++;  // a queued ICMP error or similar: consumed by this call, keep reading
        lastError_ = std::string("recvmmsg: ") + ErrnoText(err);
        continue;
      }
      if (r == 0) return;
      Deliver(env, static_cast<uint32_t>(r));
      if (static_cast<uint32_t>(r) < batch_) return;  // drained
    }
  }

  // The datagram size of a GRO message (its cmsg), or 0 when it is one datagram.
  uint32_t GroSize(const msghdr& h) {
    if (!gro_) return 0;
    for (cmsghdr* c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(const_cast<msghdr*>(&h), c)) {
      if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
        int v = 0;
        memcpy(&v, CMSG_DATA(c), sizeof v);
        return v > 0 ? static_cast<uint32_t>(v) : 0;
      }
    }
    return 0;
  }

  void Deliver(Napi::Env env, uint32_t r) {
    Napi::Uint32Array meta = meta_.Value();
    if (meta.IsEmpty() || meta.ElementLength() < 2 * static_cast<size_t>(r)) {
      Fail(env, "recvmmsg", EFAULT);  // the wrapper's meta array was detached: cannot deliver
      return;
    }
    uint32_t* m = meta.Data();
    const size_t cap = meta.ElementLength() / 2;  // datagrams the meta array can describe
    size_t total = 0;
    uint32_t n = 0, kept = 0;
    peerKeys_.clear();
    Napi::Array peers = Napi::Array::New(env);
    for (uint32_t i = 0; i < r; i++) {
      const msghdr& h = rxMsgs_[i].msg_hdr;
      uint32_t len = rxMsgs_[i].msg_len;
      if (h.msg_flags & MSG_TRUNC) {
        rxTruncated_++;
        continue;
      }
      uint32_t seg = GroSize(h);
      if (seg == 0 || seg >= len) seg = len;
      uint32_t segs = len == 0 ? 1 : (len + seg - 1) / seg;
      if (segs > kGroMaxSegs || n + segs > cap) {
        rxTruncated_ += segs;
        continue;
      }
      PeerKey key = KeyOf(rxNames_[i]);
      uint32_t idx = 0;
      while (idx < peerKeys_.size() && !(peerKeys_[idx] == key)) idx++;
      if (idx == peerKeys_.size()) {
        peerKeys_.push_back(key);
        peers.Set(idx, Napi::String::New(env, FormatPeer(rxNames_[i])));
      }
      if (segs > 1) rxGroMessages_++;
      for (uint32_t left = len, k = 0; k < segs; k++) {
        uint32_t l = left < seg ? left : seg;
        m[2 * n] = l;
        m[2 * n + 1] = idx;
        n++;
        left -= l;
      }
      rxIndex_[kept++] = i;
      total += len;
    }
    if (n == 0) return;
    Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(env, total);
    uint8_t* out = buf.Data();
    for (uint32_t j = 0; j < kept; j++) {
      uint32_t i = rxIndex_[j];
      if (rxMsgs_[i].msg_len == 0) continue;
      memcpy(out, rxIov_[i].iov_base, rxMsgs_[i].msg_len);
      out += rxMsgs_[i].msg_len;
    }
    rxPackets_ += n;
    rxBytes_ += total;
    rxBatches_++;
    napi_value argv[3] = {buf, Napi::Number::New(env, n), peers};
    CallJs(env, onBatch_, 3, argv);
  }

  // Resolves a peer string to a sockaddr, reusing the last parse when the text is the same. False + TypeError
  // thrown when it is not a numeric "ip:port" of the socket's family.
  bool ResolvePeer(Napi::Env env, napi_value v, const char* what, sockaddr_storage* out, socklen_t* outLen) {
    char buf[96];
    size_t len = 0;
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_string ||
        napi_get_value_string_latin1(env, v, buf, sizeof buf, &len) != napi_ok) {
      Napi::TypeError::New(env, std::string("UdpSocket.") + what + ": peer must be a string \"ip:port\"")
          .ThrowAsJavaScriptException();
      return false;
    }
    if (len > 0 && len == lastPeerText_.size() && memcmp(buf, lastPeerText_.data(), len) == 0) {
      *out = lastPeer_;
      *outLen = lastPeerLen_;
      return true;
    }
    if (len >= sizeof buf - 1 || !ParsePeer(buf, len, family_, out, outLen)) {
      Napi::TypeError::New(env, std::string("UdpSocket.") + what + ": bad peer \"" + std::string(buf, len) +
                                    "\" (want a numeric " + (family_ == AF_INET6 ? "IPv6 or IPv4" : "IPv4") +
                                    " \"ip:port\" or \"[ip6]:port\")")
          .ThrowAsJavaScriptException();
      return false;
    }
    lastPeerText_.assign(buf, len);
    lastPeer_ = *out;
    lastPeerLen_ = *outLen;
    return true;
  }

  void CountSendError(const char* call, int err) {
    lastError_ = std::string(call) + ": " + ErrnoText(err);
    if (IsDropErrno(err)) {
      txDropped_++;
    } else {
      txErrors_++;
    }
  }

  // send(datagram, peer): boolean — false when dropped (would block) or refused (counted in stats).
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint8_t* data;
    size_t len;
    if (info.Length() < 2 || !GetBytes(env, info[0], &data, &len)) {
      Napi::TypeError::New(env, "UdpSocket.send: datagram must be a Buffer or Uint8Array")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (!CheckOpen(env, "send")) return env.Undefined();
    sockaddr_storage to;
    socklen_t tolen;
    if (!ResolvePeer(env, info[1], "send", &to, &tolen)) return env.Undefined();
    for (;;) {
      ssize_t r = ::sendto(fd_, data, len, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&to), tolen);
      if (r >= 0) {
        txPackets_++;
        txBytes_ += static_cast<uint64_t>(r);
        return Napi::Boolean::New(env, true);
      }
      if (errno == EINTR) continue;
      CountSendError("sendto", errno);
      return Napi::Boolean::New(env, false);
    }
  }

  // sendMany(datagrams: Uint8Array[], peers: string[] | string): number sent. Everything is validated before the
  // first byte goes out; then sendmmsg() per up to 1024 messages. Would-block stops and counts the rest as
  // dropped; a datagram the kernel refuses (EMSGSIZE, unreachable...) is counted in txErrors and skipped.
  // Runs of equal-sized datagrams (the last may be shorter) to one peer that are adjacent in memory go as one
  // UDP GSO message; one the kernel refuses is sent again datagram by datagram.
  Napi::Value SendMany(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsArray() || !(info[1].IsArray() || info[1].IsString())) {
      Napi::TypeError::New(env, "UdpSocket.sendMany(datagrams: Buffer[], peers: string[] | string)")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (!CheckOpen(env, "sendMany")) return env.Undefined();
    Napi::Array arr = info[0].As<Napi::Array>();
    uint32_t n = arr.Length();
    bool onePeer = info[1].IsString();
    Napi::Array peerArr;
    if (!onePeer) {
      peerArr = info[1].As<Napi::Array>();
      if (peerArr.Length() != n) {
        Napi::TypeError::New(env, "UdpSocket.sendMany: " + std::to_string(n) + " datagrams but " +
                                      std::to_string(peerArr.Length()) + " peers")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    if (txMsgs_.size() < n) {
      txMsgs_.resize(n);
      txIov_.resize(n);
      txNames_.resize(n);
      txNameLens_.resize(n);
      txSegs_.resize(n);
      txGsoIov_.resize(n);
      txCmsg_.resize(static_cast<size_t>(n) * kCmsgSpace);
    }
    sockaddr_storage to;
    socklen_t tolen = 0;
    if (onePeer && !ResolvePeer(env, info[1], "sendMany", &to, &tolen)) return env.Undefined();
    for (uint32_t i = 0; i < n; i++) {
      napi_value el;
      const uint8_t* data;
      size_t len;
      if (napi_get_element(env, arr, i, &el) != napi_ok || !GetBytes(env, el, &data, &len)) {
        if (env.IsExceptionPending()) return env.Undefined();
        Napi::TypeError::New(env,
                             "UdpSocket.sendMany: datagrams[" + std::to_string(i) + "] is not a Buffer or Uint8Array")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
      if (!onePeer) {
        napi_value pv;
        if (napi_get_element(env, peerArr, i, &pv) != napi_ok) return env.Undefined();
        if (!ResolvePeer(env, pv, "sendMany", &to, &tolen)) return env.Undefined();
      }
      txNames_[i] = to;
      txIov_[i].iov_base = const_cast<uint8_t*>(data);
      txIov_[i].iov_len = len;
      txNameLens_[i] = tolen;
    }
    uint32_t m = BuildMessages(n, gso_);
    uint32_t k = 0, sent = 0;
    while (k < m) {
      unsigned chunk = m - k < kSendChunk ? m - k : kSendChunk;
      int r = ::sendmmsg(fd_, &txMsgs_[k], chunk, MSG_DONTWAIT);
      if (r > 0) {
        for (uint32_t j = k; j < k + static_cast<uint32_t>(r); j++) {
          txBytes_ += txMsgs_[j].msg_len;
          txPackets_ += txSegs_[j].count;
          sent += txSegs_[j].count;
        }
        k += static_cast<uint32_t>(r);
        continue;
      }
      int err = r < 0 ? errno : EAGAIN;
      if (err == EINTR) continue;
      lastError_ = std::string("sendmmsg: ") + ErrnoText(err);
      if (IsDropErrno(err)) {
        for (uint32_t j = k; j < m; j++) txDropped_ += txSegs_[j].count;
        break;
      }
      if (txSegs_[k].count > 1) {
        // Refused as a whole (e.g. a datagram above the path MTU, which GSO cannot fragment): one by one.
        gsoRefused_++;
        uint32_t first = txSegs_[k].first, cnt = txSegs_[k].count;
        for (uint32_t d = first; d < first + cnt; d++) {
          ssize_t w;
          do {
            w = ::sendto(fd_, txIov_[d].iov_base, txIov_[d].iov_len, MSG_DONTWAIT,
                         reinterpret_cast<sockaddr*>(&txNames_[d]), txNameLens_[d]);
          } while (w < 0 && errno == EINTR);
          if (w >= 0) {
            txBytes_ += static_cast<uint64_t>(w);
            txPackets_++;
            sent++;
          } else {
            CountSendError("sendto", errno);
          }
        }
      } else {
        txErrors_++;
      }
      k++;
    }
    return Napi::Number::New(env, sent);
  }

  // Fills txMsgs_ for datagrams 0..n-1 (txIov_, txNames_, txNameLens_), merging runs into UDP GSO messages when
  // `gso`. Returns the message count.
  uint32_t BuildMessages(uint32_t n, bool gso) {
    uint32_t m = 0;
    for (uint32_t i = 0; i < n;) {
      uint32_t j = i + 1;
      size_t seg = txIov_[i].iov_len, total = seg;
      if (gso && seg > 0) {
        // Extend while the next datagram follows in memory, goes to the same peer and fits the run.
        while (j < n && j - i < kGsoMaxSegs) {
          const iovec& prev = txIov_[j - 1];
          const iovec& next = txIov_[j];
          if (static_cast<uint8_t*>(prev.iov_base) + prev.iov_len != next.iov_base) break;
          if (prev.iov_len != seg || next.iov_len > seg || next.iov_len == 0) break;
          if (total + next.iov_len > kGsoMaxBytes) break;
          if (txNameLens_[j] != txNameLens_[i] || memcmp(&txNames_[j], &txNames_[i], txNameLens_[i]) != 0) break;
          total += next.iov_len;
          j++;
        }
      }
      msghdr& h = txMsgs_[m].msg_hdr;
      memset(&h, 0, sizeof h);
      h.msg_name = &txNames_[i];
      h.msg_namelen = txNameLens_[i];
      txMsgs_[m].msg_len = 0;
      txSegs_[m] = {i, j - i};
      if (j - i > 1) {
        txGsoIov_[m].iov_base = txIov_[i].iov_base;
        txGsoIov_[m].iov_len = total;
        h.msg_iov = &txGsoIov_[m];
        h.msg_iovlen = 1;
        char* cbuf = txCmsg_.data() + m * kCmsgSpace;
        memset(cbuf, 0, kCmsgSpace);
        h.msg_control = cbuf;
        h.msg_controllen = CMSG_SPACE(sizeof(uint16_t));
        cmsghdr* c = CMSG_FIRSTHDR(&h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t gsoSize = static_cast<uint16_t>(seg);
        memcpy(CMSG_DATA(c), &gsoSize, sizeof gsoSize);
        gsoMessages_++;
      } else {
        h.msg_iov = &txIov_[i];
        h.msg_iovlen = 1;
      }
      m++;
      i = j;
    }
    return m;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("rxPackets", Napi::Number::New(env, static_cast<double>(rxPackets_)));
    o.Set("rxBytes", Napi::Number::New(env, static_cast<double>(rxBytes_)));
    o.Set("rxBatches", Napi::Number::New(env, static_cast<double>(rxBatches_)));
    o.Set("rxTruncated", Napi::Number::New(env, static_cast<double>(rxTruncated_)));
    o.Set("rxGroMessages", Napi::Number::New(env, static_cast<double>(rxGroMessages_)));
    o.Set("gro", Napi::Boolean::New(env, gro_));
    o.Set("rxErrors", Napi::Number::New(env, static_cast<double>(rxErrors_)));
    o.Set("txPackets", Napi::Number::New(env, static_cast<double>(txPackets_)));
    o.Set("txBytes", Napi::Number::New(env, static_cast<double>(txBytes_)));
    o.Set("txDropped", Napi::Number::New(env, static_cast<double>(txDropped_)));
    o.Set("txErrors", Napi::Number::New(env, static_cast<double>(txErrors_)));
    o.Set("txGsoMessages", Napi::Number::New(env, static_cast<double>(gsoMessages_)));
    o.Set("txGsoRefused", Napi::Number::New(env, static_cast<double>(gsoRefused_)));
    if (!lastError_.empty()) o.Set("lastError", Napi::String::New(env, lastError_));
    return o;
  }

  int family_ = AF_INET;
  uint16_t port_ = 0;
  std::string address_;
  int rcvbufEff_ = 0, sndbufEff_ = 0;
  uint32_t batch_ = kDefaultBatch;
  size_t slot_ = kDefaultMaxDatagram;
  uint8_t* rxBuf_ = nullptr;
  std::vector<mmsghdr> rxMsgs_;
  std::vector<iovec> rxIov_;
  std::vector<sockaddr_storage> rxNames_;
  std::vector<PeerKey> peerKeys_;
  uint32_t rxIndex_[kMaxBatch];
  std::vector<mmsghdr> txMsgs_;
  std::vector<iovec> txIov_;
  std::vector<sockaddr_storage> txNames_;
  std::vector<socklen_t> txNameLens_;
  struct SegRun {
    uint32_t first, count;  // datagrams in a message
  };
  static constexpr size_t kCmsgSpace = CMSG_SPACE(sizeof(uint16_t));
  static constexpr size_t kRxCmsgSpace = CMSG_SPACE(sizeof(int));
  bool gro_ = false;
  std::vector<char> rxCmsg_;
  uint64_t rxGroMessages_ = 0;
  std::vector<SegRun> txSegs_;
  std::vector<iovec> txGsoIov_;
  std::vector<char> txCmsg_;
  bool gso_ = true;
  uint64_t gsoMessages_ = 0, gsoRefused_ = 0;
  std::string lastPeerText_;
  sockaddr_storage lastPeer_;
  socklen_t lastPeerLen_ = 0;
  Napi::Reference<Napi::Uint32Array> meta_;
  uint64_t rxPackets_ = 0, rxBytes_ = 0, rxBatches_ = 0, rxTruncated_ = 0, rxErrors_ = 0;
  uint64_t txPackets_ = 0, txBytes_ = 0, txDropped_ = 0, txErrors_ = 0;
  std::string lastError_;
};

}  // namespace

void InitUdp(Napi::Env env, Napi::Object exports) { exports.Set("UdpHandle", UdpHandle::Define(env)); }
