// DTLS 1.2 primitives on Node's bundled OpenSSL 3.0 (see src/native/dtls.ts for the typed API and docs).
//
// Each connection owns one SSL and one custom BIO used for both directions:
//  - reading hands OpenSSL exactly one datagram (the caller's buffer, no copy) and then reports "retry";
//  - every BIO_write is one outgoing datagram, and WPENDING is always 0 so records written after a flush never
//    join an earlier datagram. (During handshakes OpenSSL packs several small records into one datagram up to
//    the MTU through its own buffering BIO; each flush of that BIO is still exactly one BIO_write here.)
// No policy lives here: peer certificates are accepted by OpenSSL's verify callback (the handshake still proves
// key possession) and checked in TypeScript from the DER exposed by peerCertificate().
//
// Results cross the N-API boundary without creating JS objects in the common case: the bytes (all output
// datagrams, then all decrypted records, back to back) go into a small byte array shared with the TypeScript
// wrapper ("scratch", which copies them out into a pooled Buffer), and counts and lengths into a shared Uint32Array
// ("meta"): meta[0] flags, meta[1] datagram count, meta[2] record count, meta[3] total bytes, then the datagram
// lengths, then the record lengths. Larger results are returned as a Buffer that takes over the native memory
// (no copy); if the lengths do not fit, kOverflow is set and the call returns [buffer, Uint32Array] instead.
//
// Errors become JS exceptions or result fields; the addon is built with -fno-exceptions and
// NAPI_DISABLE_CPP_EXCEPTIONS, so nothing is thrown across the boundary.

#include "addon.h"

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/time.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr size_t kCookieLen = 16;  // truncated HMAC-SHA256
constexpr size_t kSecretLen = 32;
constexpr long kMtuOverhead = 28;  // IPv4 + UDP: only used by OpenSSL's minimum-MTU check
// During handshakes OpenSSL writes through its own 4 KB buffering BIO, which splits a datagram larger than that
// (mid-record) into several writes: larger MTUs would emit broken handshake datagrams.
constexpr int kMinMtu = 256;
constexpr int kMaxMtu = 4096;
constexpr size_t kScratchKeep = 1 << 20;  // per-thread output scratch kept between calls up to this size

// meta[0] flags
constexpr uint32_t kEstablished = 1;
constexpr uint32_t kClosed = 2;
constexpr uint32_t kFailed = 4;
constexpr uint32_t kOverflow = 8;
constexpr uint32_t kInScratch = 16;
constexpr size_t kMetaHeader = 4;

// Listener verdicts (meta[0] of handle()).
constexpr uint32_t kDrop = 0;
constexpr uint32_t kReply = 1;
constexpr uint32_t kAccept = 2;
constexpr uint32_t kRefused = 3;  // listener: valid cookie, but the caller's admit() said no

/** SSL max_send_fragment for an MTU: records never exceed one datagram, so the write buffer (which OpenSSL sizes
 * from this) need not hold 16 KB. */
size_t MaxFragment(int mtu) { return std::min<size_t>(16384, std::max<size_t>(512, static_cast<size_t>(mtu))); }

const napi_type_tag kCtxTag = {0x5e4e47d71500c7a1ULL, 0x9b3c2f0e6d1a4c11ULL};
const napi_type_tag kConnTag = {0x5e4e47d71500c7a2ULL, 0x9b3c2f0e6d1a4c12ULL};

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

/** Growable malloc'd byte buffer. */
struct ByteBuf {
  uint8_t* p = nullptr;
  size_t len = 0;
  size_t cap = 0;
  ByteBuf() = default;
  ByteBuf(const ByteBuf&) = delete;
  ByteBuf& operator=(const ByteBuf&) = delete;
  ~ByteBuf() { std::free(p); }
  bool reserve(size_t n) {
    if (n <= cap) return true;
    size_t nc = std::max(n, cap * 2);
    void* q = std::realloc(p, nc);
    if (q == nullptr) return false;
    p = static_cast<uint8_t*>(q);
    cap = nc;
    return true;
  }
  bool append(const void* d, size_t n) {
    if (!reserve(len + n)) return false;
    std::memcpy(p + len, d, n);
    len += n;
    return true;
  }
  void reset() {
    std::free(p);
    p = nullptr;
    len = cap = 0;
  }
  /** Empties the buffer, keeping its storage unless it grew beyond `keep`. */
  void clear(size_t keep) {
    if (cap > keep) reset();
    len = 0;
  }
};

/**
 * Output of the current call, shared by every connection of this thread (calls are synchronous, and OpenSSL
 * only writes from inside them): datagrams written by OpenSSL and records decrypted, with their lengths.
 */
struct Scratch {
  ByteBuf out;
  std::vector<uint32_t> outLens;
  bool outFailed = false;
  ByteBuf rec;
  std::vector<uint32_t> recLens;
  void clear() {
    out.clear(kScratchKeep);
    rec.clear(kScratchKeep);
    outLens.clear();
    recLens.clear();
    outFailed = false;
  }
};
thread_local Scratch tScratch;

/** The OpenSSL error queue as one message (reasons, outermost last, duplicates dropped), then cleared. */
std::string TakeErrors(const char* fallback) {
  std::string msg;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    const char* r = ERR_reason_error_string(e);
    std::string part;
    if (r != nullptr) {
      part = r;
    } else {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof buf);
      part = buf;
    }
    if (msg.find(part) != std::string::npos) continue;
    if (!msg.empty()) msg += ": ";
    msg += part;
  }
  return msg.empty() ? std::string(fallback) : msg;
}

/** Leaves the thread's OpenSSL error queue empty (Node's own crypto shares it). */
void ClearErrors() {
  if (ERR_peek_error() != 0) ERR_clear_error();
}

/** Pointer and length of a Uint8Array/Buffer argument; false if it is not one. */
bool BytesOf(const Napi::Value& v, const uint8_t** data, size_t* len) {
  napi_env env = v.Env();
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  size_t length = 0;
  void* p = nullptr;
  if (napi_get_typedarray_info(env, v, &type, &length, &p, nullptr, nullptr) != napi_ok ||
      type != napi_uint8_array) {
    return false;
  }
  static const uint8_t kNone = 0;
  *data = p != nullptr ? static_cast<const uint8_t*>(p) : &kNone;
  *len = length;
  return true;
}

Napi::Value ThrowError(Napi::Env env, const std::string& msg) {
  Napi::Error::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowTypeError(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

/** The shared meta and scratch arrays given to a wrapper's constructor. */
struct Meta {
  Napi::Reference<Napi::Uint32Array> ref;
  Napi::Reference<Napi::Uint8Array> scratchRef;
  uint32_t* p = nullptr;
  size_t cap = 0;
  uint8_t* scratch = nullptr;
  size_t scratchCap = 0;
  bool Init(const Napi::Value& m, const Napi::Value& sc) {
    if (!m.IsTypedArray() || m.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) return false;
    if (!sc.IsTypedArray() || sc.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) return false;
    Napi::Uint32Array a = m.As<Napi::Uint32Array>();
    Napi::Uint8Array b = sc.As<Napi::Uint8Array>();
    if (a.ElementLength() < kMetaHeader + 16) return false;
    ref = Napi::Persistent(a);
    scratchRef = Napi::Persistent(b);
    p = a.Data();
    cap = a.ElementLength();
    scratch = b.Data();
    scratchCap = b.ByteLength();
    return true;
  }
};

/**
 * Returns the thread scratch as the call's result: the output datagrams then the records, in the shared scratch
 * when they fit (kInScratch) or else as one Buffer that takes over the native memory; counts and lengths in `meta`.
 */
Napi::Value Emit(Napi::Env env, Meta& meta, uint32_t flags) {
  Scratch& s = tScratch;
  size_t total = s.out.len + s.rec.len;
  Napi::Value buf = env.Undefined();
  if (total > 0 && total <= meta.scratchCap) {
    if (s.out.len > 0) std::memcpy(meta.scratch, s.out.p, s.out.len);
    if (s.rec.len > 0) std::memcpy(meta.scratch + s.out.len, s.rec.p, s.rec.len);
    flags |= kInScratch;
  } else if (total > 0) {
    // A V8-managed buffer (not an external one: Node frees those only after the event loop turns, and V8 does not
    // count them towards its GC heuristics, so a synchronous loop of large calls would pile them up).
    Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::New(env, total);
    if (env.IsExceptionPending()) return env.Undefined();
    if (s.out.len > 0) std::memcpy(b.Data(), s.out.p, s.out.len);
    if (s.rec.len > 0) std::memcpy(b.Data() + s.out.len, s.rec.p, s.rec.len);
    buf = b;
  }
  size_t no = s.outLens.size();
  size_t nr = s.recLens.size();
  meta.p[1] = static_cast<uint32_t>(no);
  meta.p[2] = static_cast<uint32_t>(nr);
  meta.p[3] = static_cast<uint32_t>(total);
  Napi::Value result = buf;
  if (kMetaHeader + no + nr <= meta.cap) {
    if (no > 0) std::memcpy(meta.p + kMetaHeader, s.outLens.data(), no * sizeof(uint32_t));
    if (nr > 0) std::memcpy(meta.p + kMetaHeader + no, s.recLens.data(), nr * sizeof(uint32_t));
  } else {
    flags |= kOverflow;
    Napi::Uint32Array lens = Napi::Uint32Array::New(env, no + nr);
    if (no > 0) std::memcpy(lens.Data(), s.outLens.data(), no * sizeof(uint32_t));
    if (nr > 0) std::memcpy(lens.Data() + no, s.recLens.data(), nr * sizeof(uint32_t));
    Napi::Array pair = Napi::Array::New(env, 2);
    pair.Set(0u, buf);
    pair.Set(1u, lens);
    result = pair;
  }
  meta.p[0] = flags;
  s.clear();
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// Connection: one SSL + the datagram BIO state

struct Conn {
  SSL* ssl = nullptr;
  // Incoming datagram offered to OpenSSL (borrowed from the JS buffer for the duration of one call).
  const uint8_t* in = nullptr;
  size_t inLen = 0;
  int mtu = 0;
  // SSL_free_buffers ran since OpenSSL last set up its record buffers (see Writable()).
  bool released = false;
  // Fatal state: set once, after which OpenSSL is not called again for I/O.
  bool failed = false;
  // trimPeerCertificate() ran: the session's copy of the peer certificate no longer matches its signature.
  bool peerTrimmed = false;
  std::string error;
  // Membership of the per-thread list of sessions that keep their record buffers (see Rest()).
  bool hot = false;
  Conn* hotPrev = nullptr;
  Conn* hotNext = nullptr;

  Conn() = default;
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;
  ~Conn();
};

// The kHotSessions most recently active sessions of this thread keep their record buffers between calls (about
// 20 KB each); every other session has released them. Busy sessions thus avoid reallocating buffers on each call
// while idle ones cost only their keys and handshake results, however many there are.
constexpr size_t kHotSessions = 32;
struct HotList {
  Conn* head = nullptr;
  Conn* tail = nullptr;
  size_t n = 0;
};
thread_local HotList tHot;

void Unhot(Conn* c) {
  if (!c->hot) return;
  if (c->hotPrev != nullptr) {
    c->hotPrev->hotNext = c->hotNext;
  } else {
    tHot.head = c->hotNext;
  }
  if (c->hotNext != nullptr) {
    c->hotNext->hotPrev = c->hotPrev;
  } else {
    tHot.tail = c->hotPrev;
  }
  c->hotPrev = c->hotNext = nullptr;
  c->hot = false;
  tHot.n--;
}

Conn::~Conn() {
  Unhot(this);
  if (ssl != nullptr) SSL_free(ssl);  // also frees the BIO
}

int BioCreate(BIO* b) {
  BIO_set_init(b, 1);
  BIO_set_data(b, nullptr);
  return 1;
}

int BioDestroy(BIO* b) {
  if (b == nullptr) return 0;
  BIO_set_data(b, nullptr);
  return 1;
}

int BioWrite(BIO* b, const char* data, int len) {
  BIO_clear_retry_flags(b);
  if (len < 0) return -1;
  Scratch& s = tScratch;
  if (!s.out.append(data, static_cast<size_t>(len))) {
    s.outFailed = true;
    return -1;
  }
  s.outLens.push_back(static_cast<uint32_t>(len));
  return len;
}

int BioRead(BIO* b, char* buf, int size) {
  BIO_clear_retry_flags(b);
  Conn* c = static_cast<Conn*>(BIO_get_data(b));
  if (c == nullptr || c->in == nullptr || size < 0) {
    BIO_set_retry_read(b);
    return -1;
  }
  // Datagram semantics: one read returns one datagram; whatever does not fit is discarded.
  size_t n = std::min(static_cast<size_t>(size), c->inLen);
  std::memcpy(buf, c->in, n);
  c->in = nullptr;
  c->inLen = 0;
  return static_cast<int>(n);
}

long BioCtrl(BIO* b, int cmd, long num, void* ptr) {
  Conn* c = static_cast<Conn*>(BIO_get_data(b));
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_WPENDING:
      return 0;  // every write is already a complete datagram
    case BIO_CTRL_PENDING:
      return (c != nullptr && c->in != nullptr) ? static_cast<long>(c->inLen) : 0;
    case BIO_CTRL_DGRAM_QUERY_MTU:
      return 0;  // SSL_OP_NO_QUERY_MTU: the MTU comes from the configuration
    case BIO_CTRL_DGRAM_GET_MTU_OVERHEAD:
      return kMtuOverhead;
    case BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT:
      return 1;
    case BIO_CTRL_DGRAM_MTU_EXCEEDED:
      return 0;
    default:
      return 0;
  }
}

BIO_METHOD* DgramMethod() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "seng datagram");
    if (m == nullptr) return m;
    BIO_meth_set_write(m, BioWrite);
    BIO_meth_set_read(m, BioRead);
    BIO_meth_set_ctrl(m, BioCtrl);
    BIO_meth_set_create(m, BioCreate);
    BIO_meth_set_destroy(m, BioDestroy);
    return m;
  }();
  return method;
}

/** SSL ex_data slot holding the listener's CookieState during DTLSv1_listen and the first handshake step. */
int CookieExIndex() {
  static int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return idx;
}

std::unique_ptr<Conn> NewConn(SSL_CTX* ctx, int mtu, bool server, std::string* err) {
  BIO_METHOD* m = DgramMethod();
  if (m == nullptr) {
    *err = "cannot create the datagram BIO method";
    return nullptr;
  }
  auto c = std::make_unique<Conn>();
  ClearErrors();
  c->ssl = SSL_new(ctx);
  if (c->ssl == nullptr) {
    *err = "SSL_new: " + TakeErrors("out of memory");
    return nullptr;
  }
  BIO* bio = BIO_new(m);
  if (bio == nullptr) {
    *err = "BIO_new: " + TakeErrors("out of memory");
    return nullptr;
  }
  BIO_set_data(bio, c.get());
  SSL_set_bio(c->ssl, bio, bio);  // one BIO for both directions; the SSL owns it
  c->mtu = mtu;
  if (SSL_set_mtu(c->ssl, mtu) <= 0) {
    *err = "mtu " + std::to_string(mtu) + " is below OpenSSL's DTLS minimum";
    return nullptr;
  }
  if (server) {
    SSL_set_accept_state(c->ssl);
  } else {
    SSL_set_connect_state(c->ssl);
  }
  return c;
}

/** Largest record plaintext that fits one datagram of the configured MTU with the negotiated cipher. */
size_t MaxPlaintext(SSL* ssl, int mtu) { return std::min(DTLS_get_data_mtu(ssl), MaxFragment(mtu)); }

void Fail(Conn* c, const std::string& msg) {
  if (c->failed) return;
  c->failed = true;
  c->error = msg;
}

/** Releases the record buffers (~18 KB read + the write buffer, sized from the MTU) of a connection. */
void Release(Conn* c) {
  if (c->ssl != nullptr && !c->released && SSL_free_buffers(c->ssl) == 1) c->released = true;
}

/** End of a call on `c`: it becomes the most recently active session; the least recent beyond the limit rests. */
void Rest(Conn* c) {
  if (c->failed) {
    Unhot(c);
    Release(c);
    return;
  }
  if (c->released) return;  // nothing held (the call did not touch OpenSSL's record layer)
  Unhot(c);
  c->hotNext = tHot.head;
  if (tHot.head != nullptr) {
    tHot.head->hotPrev = c;
  } else {
    tHot.tail = c;
  }
  tHot.head = c;
  c->hot = true;
  tHot.n++;
  while (tHot.n > kHotSessions) {
    Conn* v = tHot.tail;
    Unhot(v);
    Release(v);
  }
}

/**
 * Makes sure OpenSSL may write. Its DTLS write path (do_dtls1_write) uses the write buffer without allocating it,
 * SSL_free_buffers releases it, and only the read path (dtls1_read_bytes -> ssl3_setup_buffers) re-creates it:
 * calling SSL_write, SSL_shutdown, SSL_do_handshake or DTLSv1_handle_timeout after SSL_free_buffers would
 * dereference NULL. A zero-length SSL_read with no datagram queued re-creates both buffers and consumes nothing
 * (it returns WANT_READ; at most it retransmits a flight whose timer expired, which lands in the output like any
 * other datagram).
 */
void Writable(Conn* c) {
  if (!c->released) return;
  // SSL_read returns early once close_notify was received: hide that flag for the duration of the call.
  int shut = SSL_get_shutdown(c->ssl);
  if (shut & SSL_RECEIVED_SHUTDOWN) SSL_set_shutdown(c->ssl, shut & ~SSL_RECEIVED_SHUTDOWN);
  unsigned char none = 0;
  c->in = nullptr;
  c->inLen = 0;
  SSL_read(c->ssl, &none, 0);
  if (shut & SSL_RECEIVED_SHUTDOWN) SSL_set_shutdown(c->ssl, shut);
  ClearErrors();
  c->released = false;
}

// ---------------------------------------------------------------------------------------------------------------
// Cookies (RFC 6347 HelloVerifyRequest), keyed by the peer string the caller passes

struct CookieState {
  uint8_t secret[kSecretLen];
  uint8_t previous[kSecretLen];
  bool hasPrevious = false;
  std::string peer;
};

bool CookieFor(const uint8_t* secret, const std::string& peer, uint8_t out[kCookieLen]) {
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned int macLen = 0;
  if (HMAC(EVP_sha256(), secret, static_cast<int>(kSecretLen), reinterpret_cast<const uint8_t*>(peer.data()),
           peer.size(), mac, &macLen) == nullptr ||
      macLen < kCookieLen) {
    return false;
  }
  std::memcpy(out, mac, kCookieLen);
  return true;
}

int GenerateCookie(SSL* ssl, unsigned char* cookie, unsigned int* len) {
  auto* st = static_cast<CookieState*>(SSL_get_ex_data(ssl, CookieExIndex()));
  if (st == nullptr || !CookieFor(st->secret, st->peer, cookie)) return 0;
  *len = static_cast<unsigned int>(kCookieLen);
  return 1;
}

int VerifyCookie(SSL* ssl, const unsigned char* cookie, unsigned int len) {
  auto* st = static_cast<CookieState*>(SSL_get_ex_data(ssl, CookieExIndex()));
  if (st == nullptr || len != kCookieLen) return 0;
  uint8_t expect[kCookieLen];
  if (CookieFor(st->secret, st->peer, expect) && CRYPTO_memcmp(expect, cookie, kCookieLen) == 0) return 1;
  if (st->hasPrevious && CookieFor(st->previous, st->peer, expect) &&
      CRYPTO_memcmp(expect, cookie, kCookieLen) == 0) {
    return 1;
  }
  return 0;
}

/** Peers use self-signed RA-TLS certificates, validated in TypeScript: accept any chain here. The handshake still
 * checks CertificateVerify / ServerKeyExchange signatures against the presented key. */
int AcceptAnyCertificate(int, X509_STORE_CTX*) { return 1; }

int NoPassword(char*, int, int, void*) { return 0; }  // encrypted keys are refused, never prompted for

// ALPN (RFC 7301). A server context keeps its protocols (wire format, most preferred first) in the SSL_CTX's ex
// data, so the list lives exactly as long as the SSL_CTX, which listeners and sessions hold references to.
void FreeAlpn(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<std::string*>(ptr); }

int AlpnIndex() {
  static const int idx = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeAlpn);
  return idx;
}

/** Whether `wire` is a well-formed, non-empty ALPN protocol list (length-prefixed names of 1..255 bytes). */
bool ValidAlpn(const std::string& wire) {
  if (wire.empty() || wire.size() > 65535) return false;
  size_t i = 0;
  while (i < wire.size()) {
    size_t n = static_cast<uint8_t>(wire[i]);
    if (n == 0 || i + 1 + n > wire.size()) return false;
    i += 1 + n;
  }
  return true;
}

/**
 * Server: selects the first of its own protocols (its preference order) that the client offered. No common
 * protocol: no ALPN in the answer (SSL_TLSEXT_ERR_NOACK), so the TypeScript side sees "" and falls back, rather
 * than a failed handshake.
 */
int SelectAlpn(SSL* ssl, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned int inlen, void*) {
  auto* mine = static_cast<const std::string*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), AlpnIndex()));
  if (mine == nullptr) return SSL_TLSEXT_ERR_NOACK;
  const auto* m = reinterpret_cast<const unsigned char*>(mine->data());
  for (size_t i = 0; i < mine->size(); i += 1 + m[i]) {
    unsigned int n = m[i];
    for (unsigned int j = 0; j < inlen;) {
      unsigned int k = in[j];
      if (k == 0 || j + 1 + k > inlen) return SSL_TLSEXT_ERR_NOACK;  // malformed offer: ignore it
      if (k == n && std::memcmp(in + j + 1, m + i + 1, n) == 0) {
        *out = in + j + 1;
        *outlen = static_cast<unsigned char>(n);
        return SSL_TLSEXT_ERR_OK;
      }
      j += 1 + k;
    }
  }
  return SSL_TLSEXT_ERR_NOACK;
}

// ---------------------------------------------------------------------------------------------------------------
// DtlsContext

class ContextWrap : public Napi::ObjectWrap<ContextWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DtlsContext", {InstanceMethod<&ContextWrap::NewClient>("newClient")});
  }

  // new DtlsContext(role, certPem, keyPem, ciphers, mtu, alpn?: Buffer in ALPN wire format)
  explicit ContextWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ContextWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 5 || !info[0].IsString() || !info[1].IsString() || !info[2].IsString() ||
        !info[3].IsString() || !info[4].IsNumber()) {
      ThrowTypeError(env, "DtlsContext(role, certPem, keyPem, ciphers, mtu, alpn?)");
      return;
    }
    std::string alpn;
    if (info.Length() >= 6 && !info[5].IsUndefined()) {
      const uint8_t* d = nullptr;
      size_t n = 0;
      if (!BytesOf(info[5], &d, &n)) {
        ThrowTypeError(env, "alpn must be a Buffer");
        return;
      }
      alpn.assign(reinterpret_cast<const char*>(d), n);
      if (!ValidAlpn(alpn)) {
        ThrowError(env, "alpn: not a protocol list (length-prefixed names of 1..255 bytes)");
        return;
      }
    }
    std::string role = info[0].As<Napi::String>().Utf8Value();
    if (role != "server" && role != "client") {
      ThrowTypeError(env, "role must be \"server\" or \"client\"");
      return;
    }
    server_ = role == "server";
    mtu_ = info[4].As<Napi::Number>().Int32Value();
    if (mtu_ < kMinMtu || mtu_ > kMaxMtu) {
      ThrowError(env, "mtu must be " + std::to_string(kMinMtu) + ".." + std::to_string(kMaxMtu));
      return;
    }
    std::string err;
    ctx_ = Build(server_, mtu_, info[1].As<Napi::String>().Utf8Value(), info[2].As<Napi::String>().Utf8Value(),
                 info[3].As<Napi::String>().Utf8Value(), &err);
    if (ctx_ == nullptr) {
      ThrowError(env, err);
      return;
    }
    if (!alpn.empty()) {
      bool ok;
      if (server_) {
        auto* copy = new std::string(alpn);
        ok = SSL_CTX_set_ex_data(ctx_, AlpnIndex(), copy) == 1;
        if (ok) {
          SSL_CTX_set_alpn_select_cb(ctx_, SelectAlpn, nullptr);
        } else {
          delete copy;
        }
      } else {
        // SSL_CTX_set_alpn_protos returns 0 on success.
        ok = SSL_CTX_set_alpn_protos(ctx_, reinterpret_cast<const unsigned char*>(alpn.data()),
                                     static_cast<unsigned int>(alpn.size())) == 0;
      }
      if (!ok) {
        ThrowError(env, "alpn: " + TakeErrors("failed"));
        return;
      }
    }
    // Probe the MTU once so a bad value fails here rather than on every connection.
    std::unique_ptr<Conn> probe = NewConn(ctx_, mtu_, server_, &err);
    if (!probe) {
      ThrowError(env, err);
      return;
    }
    info.This().As<Napi::Object>().TypeTag(&kCtxTag);
  }

  ~ContextWrap() override {
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
  }

  SSL_CTX* ctx() const { return ctx_; }
  int mtu() const { return mtu_; }
  bool server() const { return server_; }

  /** The context behind a JS object, or nullptr (after throwing) if it is not a DtlsContext. */
  static ContextWrap* From(const Napi::Value& v) {
    if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kCtxTag)) {
      ThrowTypeError(v.Env(), "expected a native DtlsContext");
      return nullptr;
    }
    return ContextWrap::Unwrap(v.As<Napi::Object>());
  }

 private:
  static SSL_CTX* Build(bool server, int mtu, const std::string& certPem, const std::string& keyPem,
                        const std::string& ciphers, std::string* err) {
    ClearErrors();
    SSL_CTX* ctx = SSL_CTX_new(DTLS_method());
    if (ctx == nullptr) {
      *err = "SSL_CTX_new: " + TakeErrors("failed");
      return nullptr;
    }
    auto fail = [&](const std::string& what) {
      *err = what + ": " + TakeErrors("failed");
      SSL_CTX_free(ctx);
      return nullptr;
    };
    if (SSL_CTX_set_min_proto_version(ctx, DTLS1_2_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, DTLS1_2_VERSION) != 1) {
      return fail("cannot restrict the context to DTLS 1.2");
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_QUERY_MTU | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
    SSL_CTX_set_max_send_fragment(ctx, static_cast<long>(MaxFragment(mtu)));
    SSL_CTX_set_read_ahead(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    // Every peer must authenticate with a certificate: never negotiate anonymous, PSK or SRP suites.
    std::string list = ciphers + ":!aNULL:!eNULL:!PSK:!SRP";
    if (SSL_CTX_set_cipher_list(ctx, list.c_str()) != 1) return fail("ciphers \"" + ciphers + "\"");
    if (SSL_CTX_set1_groups_list(ctx, "X25519:P-256") != 1) return fail("groups");

    // Certificate: leaf first, then any chain certificates.
    BIO* cb = BIO_new_mem_buf(certPem.data(), static_cast<int>(certPem.size()));
    if (cb == nullptr) return fail("certificate");
    X509* leaf = PEM_read_bio_X509(cb, nullptr, NoPassword, nullptr);
    if (leaf == nullptr) {
      BIO_free(cb);
      return fail("certificate: cannot read a PEM certificate");
    }
    int ok = SSL_CTX_use_certificate(ctx, leaf);
    X509_free(leaf);
    if (ok != 1) {
      BIO_free(cb);
      return fail("certificate unusable");
    }
    for (;;) {
      X509* extra = PEM_read_bio_X509(cb, nullptr, NoPassword, nullptr);
      if (extra == nullptr) break;
      if (SSL_CTX_add0_chain_cert(ctx, extra) != 1) {
        X509_free(extra);
        BIO_free(cb);
        return fail("certificate chain");
      }
    }
    BIO_free(cb);
    unsigned long last = ERR_peek_last_error();
    if (last != 0 && !(ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE)) {
      return fail("certificate chain: cannot read a PEM certificate");
    }
    ClearErrors();

    BIO* kb = BIO_new_mem_buf(keyPem.data(), static_cast<int>(keyPem.size()));
    if (kb == nullptr) return fail("private key");
    EVP_PKEY* key = PEM_read_bio_PrivateKey(kb, nullptr, NoPassword, nullptr);
    BIO_free(kb);
    if (key == nullptr) return fail("private key: cannot read an unencrypted PEM private key");
    ok = SSL_CTX_use_PrivateKey(ctx, key);
    EVP_PKEY_free(key);
    if (ok != 1 || SSL_CTX_check_private_key(ctx) != 1) return fail("private key does not match certificate");

    SSL_CTX_set_verify(ctx, server ? (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT) : SSL_VERIFY_PEER,
                       AcceptAnyCertificate);
    if (server) {
      SSL_CTX_set_cookie_generate_cb(ctx, GenerateCookie);
      SSL_CTX_set_cookie_verify_cb(ctx, VerifyCookie);
    }
    return ctx;
  }

  // newClient() -> External connection in connect state (for new DtlsSession(ext))
  Napi::Value NewClient(const Napi::CallbackInfo& info);

  SSL_CTX* ctx_ = nullptr;
  int mtu_ = 1400;
  bool server_ = false;
};

/** A connection in transit from the context/listener to a DtlsSession. */
struct ConnBox {
  std::unique_ptr<Conn> conn;
};

Napi::Value WrapConn(Napi::Env env, std::unique_ptr<Conn> c) {
  auto* box = new ConnBox{std::move(c)};
  Napi::External<ConnBox> ext = Napi::External<ConnBox>::New(env, box, [](Napi::Env, ConnBox* b) { delete b; });
  ext.TypeTag(&kConnTag);
  return ext;
}

Napi::Value ContextWrap::NewClient(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (server_) return ThrowError(env, "a server context cannot start client sessions");
  std::string err;
  std::unique_ptr<Conn> c = NewConn(ctx_, mtu_, false, &err);
  if (!c) return ThrowError(env, err);
  return WrapConn(env, std::move(c));
}

// ---------------------------------------------------------------------------------------------------------------
// DtlsListener

class ListenerWrap : public Napi::ObjectWrap<ListenerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DtlsListener",
                       {InstanceMethod<&ListenerWrap::Handle>("handle"),
                        InstanceMethod<&ListenerWrap::Rotate>("rotate")});
  }

  // new DtlsListener(ctx, meta, scratch)
  explicit ListenerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ListenerWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !meta_.Init(info[1], info[2])) {
      ThrowTypeError(env, "DtlsListener(ctx, meta: Uint32Array, scratch: Uint8Array)");
      return;
    }
    ContextWrap* cw = ContextWrap::From(info[0]);
    if (cw == nullptr) return;
    if (!cw->server()) {
      ThrowError(env, "a DtlsListener needs a server context");
      return;
    }
    ctx_ = cw->ctx();
    SSL_CTX_up_ref(ctx_);
    mtu_ = cw->mtu();
    addr_ = BIO_ADDR_new();
    if (RAND_bytes(cookies_.secret, kSecretLen) != 1 || addr_ == nullptr) {
      ThrowError(env, "cannot create the listener: " + TakeErrors("out of memory"));
      return;
    }
    std::string err;
    conn_ = NewConn(ctx_, mtu_, true, &err);
    if (!conn_) ThrowError(env, err);
  }

  ~ListenerWrap() override {
    conn_.reset();
    if (addr_ != nullptr) BIO_ADDR_free(addr_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    OPENSSL_cleanse(cookies_.secret, kSecretLen);
    OPENSSL_cleanse(cookies_.previous, kSecretLen);
  }

 private:
  // handle(datagram, peer, admit?) -> meta[0] verdict; drop, refused: undefined; reply: datagrams;
  // accept: [datagrams, external]
  Napi::Value Handle(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint8_t* data;
    size_t len;
    if (info.Length() < 2 || !BytesOf(info[0], &data, &len) || !info[1].IsString()) {
      return ThrowTypeError(env, "handle(datagram: Buffer, peer: string)");
    }
    meta_.p[0] = kDrop;
    if (!conn_) {
      std::string err;
      conn_ = NewConn(ctx_, mtu_, true, &err);
      if (!conn_) return ThrowError(env, err);
    }
    if (len == 0) return env.Undefined();
    tScratch.clear();
    Conn* c = conn_.get();
    SSL* ssl = c->ssl;
    cookies_.peer = info[1].As<Napi::String>().Utf8Value();
    ClearErrors();
    SSL_set_ex_data(ssl, CookieExIndex(), &cookies_);
    c->in = data;
    c->inLen = len;
    int lr = DTLSv1_listen(ssl, addr_);
    c->in = nullptr;
    c->inLen = 0;
    if (lr != 1) {
      SSL_set_ex_data(ssl, CookieExIndex(), nullptr);
      ClearErrors();
      if (lr < 0 || tScratch.outFailed) {
        // OpenSSL gave up on this object; start over with a fresh one for the next datagram.
        conn_.reset();
        tScratch.clear();
        return env.Undefined();
      }
      if (tScratch.outLens.empty()) return env.Undefined();
      return Emit(env, meta_, kReply);
    }
    // Cookie verified: the peer owns its address. The caller's admit() (its per-source rate limit) may still say
    // no, before any handshake work is done; admit must not call back into this listener.
    if (info.Length() >= 3 && info[2].IsFunction()) {
      Napi::Value ok = info[2].As<Napi::Function>().Call({});
      if (env.IsExceptionPending() || !ok.ToBoolean().Value()) {
        SSL_set_ex_data(ssl, CookieExIndex(), nullptr);
        conn_.reset();  // a fresh object for the next datagram
        tScratch.clear();
        ClearErrors();
        meta_.p[0] = kRefused;
        return env.Undefined();
      }
    }
    // Cookie verified: this SSL becomes the session. Continue the handshake now, while the cookie state is
    // still attached (OpenSSL checks the cookie again when it processes the buffered ClientHello).
    int hr = SSL_do_handshake(ssl);
    int he = hr == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl, hr);
    SSL_set_ex_data(ssl, CookieExIndex(), nullptr);
    std::unique_ptr<Conn> accepted = std::move(conn_);
    std::string err;
    conn_ = NewConn(ctx_, mtu_, true, &err);  // a failure here is retried on the next call
    ClearErrors();
    if (he != SSL_ERROR_NONE && he != SSL_ERROR_WANT_READ && he != SSL_ERROR_WANT_WRITE) {
      // E.g. no shared cipher. The peer proved its address with the cookie: pass it the alert, keep no state.
      if (tScratch.outLens.empty() || tScratch.outFailed) {
        tScratch.clear();
        return env.Undefined();
      }
      return Emit(env, meta_, kReply);
    }
    if (tScratch.outFailed) {
      tScratch.clear();
      return env.Undefined();
    }
    Rest(accepted.get());
    Napi::Array r = Napi::Array::New(env, 2);
    r.Set(0u, Emit(env, meta_, kAccept));
    r.Set(1u, WrapConn(env, std::move(accepted)));
    return r;
  }

  Napi::Value Rotate(const Napi::CallbackInfo& info) {
    uint8_t next[kSecretLen];
    if (RAND_bytes(next, kSecretLen) != 1) return ThrowError(info.Env(), "RAND_bytes: " + TakeErrors("failed"));
    std::memcpy(cookies_.previous, cookies_.secret, kSecretLen);
    std::memcpy(cookies_.secret, next, kSecretLen);
    OPENSSL_cleanse(next, kSecretLen);
    cookies_.hasPrevious = true;
    return info.Env().Undefined();
  }

  SSL_CTX* ctx_ = nullptr;
  int mtu_ = 1400;
  BIO_ADDR* addr_ = nullptr;
  CookieState cookies_;
  Meta meta_;
  std::unique_ptr<Conn> conn_;
};

// ---------------------------------------------------------------------------------------------------------------
// DtlsSession

class SessionWrap : public Napi::ObjectWrap<SessionWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DtlsSession",
                       {
                           InstanceMethod<&SessionWrap::Start>("start"),
                           InstanceMethod<&SessionWrap::Receive>("receive"),
                           InstanceMethod<&SessionWrap::Send>("send"),
                           InstanceMethod<&SessionWrap::TimeoutMs>("timeoutMs"),
                           InstanceMethod<&SessionWrap::OnTimeout>("onTimeout"),
                           InstanceMethod<&SessionWrap::PeerCertificate>("peerCertificate"),
                           InstanceMethod<&SessionWrap::TrimPeerCertificate>("trimPeerCertificate"),
                           InstanceMethod<&SessionWrap::ExportKeyingMaterial>("exportKeyingMaterial"),
                           InstanceMethod<&SessionWrap::Cipher>("cipher"),
                           InstanceMethod<&SessionWrap::Version>("version"),
                           InstanceMethod<&SessionWrap::Alpn>("alpn"),
                           InstanceMethod<&SessionWrap::Established>("established"),
                           InstanceMethod<&SessionWrap::MaxRecord>("maxRecord"),
                           InstanceMethod<&SessionWrap::Error>("error"),
                           InstanceMethod<&SessionWrap::Shutdown>("shutdown"),
                           InstanceMethod<&SessionWrap::Free>("free"),
                       });
  }

  // new DtlsSession(external, meta, scratch) — the external comes from DtlsContext.newClient() or DtlsListener.handle().
  explicit SessionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SessionWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsExternal() ||
        !info[0].As<Napi::External<ConnBox>>().CheckTypeTag(&kConnTag) || !meta_.Init(info[1], info[2])) {
      ThrowTypeError(env, "DtlsSession is created by DtlsSession.client() or a DtlsListener");
      return;
    }
    ConnBox* box = info[0].As<Napi::External<ConnBox>>().Data();
    if (!box->conn) {
      ThrowError(env, "this connection already belongs to a session");
      return;
    }
    conn_ = std::move(box->conn);
  }

 private:
  Conn* Live(Napi::Env env) {
    if (!conn_) ThrowError(env, "DtlsSession used after free()");
    return conn_.get();
  }

  uint32_t Flags(Conn* c) const {
    uint32_t f = 0;
    if (!c->failed && SSL_is_init_finished(c->ssl)) f |= kEstablished;
    if (c->failed) f |= kFailed | kClosed;
    if (SSL_get_shutdown(c->ssl) & SSL_RECEIVED_SHUTDOWN) f |= kClosed;
    return f;
  }

  /** Ends a call that may have produced datagrams: releases/keeps buffers, empties the error queue, emits. */
  Napi::Value Finish(Napi::Env env, Conn* c) {
    if (tScratch.outFailed) Fail(c, "out of memory");
    ClearErrors();
    Rest(c);
    return Emit(env, meta_, Flags(c));
  }

  // start() -> datagrams (the ClientHello)
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    tScratch.clear();
    if (!c->failed && !SSL_is_init_finished(c->ssl)) {
      Writable(c);
      ClearErrors();
      int r = SSL_do_handshake(c->ssl);
      if (r != 1) {
        int e = SSL_get_error(c->ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) Fail(c, TakeErrors("handshake failed"));
      }
    }
    return Finish(env, c);
  }

  // receive(datagram | datagram[]) -> datagrams to send, then records
  Napi::Value Receive(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    std::vector<std::pair<const uint8_t*, size_t>> many;
    std::pair<const uint8_t*, size_t> one;
    const std::pair<const uint8_t*, size_t>* grams = &one;
    size_t count = 1;
    size_t total = 0;
    if (info.Length() >= 1 && info[0].IsArray()) {
      Napi::Array a = info[0].As<Napi::Array>();
      uint32_t n = a.Length();
      many.reserve(n);
      for (uint32_t i = 0; i < n; i++) {
        const uint8_t* d;
        size_t l;
        if (!BytesOf(a.Get(i), &d, &l)) return ThrowTypeError(env, "receiveMany(datagrams: Buffer[])");
        many.emplace_back(d, l);
        total += l;
      }
      grams = many.data();
      count = many.size();
    } else {
      if (info.Length() < 1 || !BytesOf(info[0], &one.first, &one.second)) {
        return ThrowTypeError(env, "receive(datagram: Buffer)");
      }
      total = one.second;
    }
    tScratch.clear();
    ByteBuf& rec = tScratch.rec;
    bool closed = (SSL_get_shutdown(c->ssl) & SSL_RECEIVED_SHUTDOWN) != 0;
    if (c->failed || closed || total == 0) return Emit(env, meta_, Flags(c));
    // Plaintext never exceeds the ciphertext it came from: this reservation holds every record of the batch.
    if (!rec.reserve(total + 1)) return ThrowError(env, "out of memory");
    ClearErrors();
    c->released = false;  // SSL_read sets the record buffers up again
    for (size_t i = 0; i < count && !c->failed && !closed; i++) {
      if (grams[i].second == 0) continue;
      c->in = grams[i].first;
      c->inLen = grams[i].second;
      for (;;) {
        size_t room = std::min<size_t>(rec.cap - rec.len, INT32_MAX);
        int n = SSL_read(c->ssl, rec.p + rec.len, static_cast<int>(room));
        if (n > 0) {
          rec.len += static_cast<size_t>(n);
          tScratch.recLens.push_back(static_cast<uint32_t>(n));
          continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
        if (e == SSL_ERROR_ZERO_RETURN) {
          closed = true;
          break;
        }
        Fail(c, TakeErrors(e == SSL_ERROR_SSL ? "protocol error" : "I/O error"));
        break;
      }
      c->in = nullptr;
      c->inLen = 0;
    }
    return Finish(env, c);
  }

  // send(records: Buffer[]) -> datagrams, one per record
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsArray()) return ThrowTypeError(env, "send(records: Buffer[])");
    if (c->failed) return ThrowError(env, "session failed: " + c->error);
    if (!SSL_is_init_finished(c->ssl)) return ThrowError(env, "handshake not complete");
    int shut = SSL_get_shutdown(c->ssl);
    if (shut & SSL_SENT_SHUTDOWN) return ThrowError(env, "session is shut down");
    if (shut & SSL_RECEIVED_SHUTDOWN) return ThrowError(env, "peer closed the session");
    Napi::Array a = info[0].As<Napi::Array>();
    uint32_t n = a.Length();
    size_t max = MaxPlaintext(c->ssl, c->mtu);
    std::vector<std::pair<const uint8_t*, size_t>> recs;
    recs.reserve(n);
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
      const uint8_t* d;
      size_t l;
      if (!BytesOf(a.Get(i), &d, &l)) return ThrowTypeError(env, "send(records: Buffer[])");
      if (l == 0) return ThrowError(env, "record " + std::to_string(i) + " is empty");
      if (l > max) {
        return ThrowError(env, "record " + std::to_string(i) + " of " + std::to_string(l) +
                                   " bytes exceeds the maximum of " + std::to_string(max) + " for the MTU");
      }
      recs.emplace_back(d, l);
      total += l;
    }
    tScratch.clear();
    if (!tScratch.out.reserve(total + n * 64) ) return ThrowError(env, "out of memory");
    tScratch.outLens.reserve(n);
    Writable(c);
    ClearErrors();
    for (const auto& rr : recs) {
      int w = SSL_write(c->ssl, rr.first, static_cast<int>(rr.second));
      if (w != static_cast<int>(rr.second)) {
        std::string why = TakeErrors("SSL_write failed");
        tScratch.clear();
        Rest(c);
        return ThrowError(env, "send: " + why);
      }
    }
    return Finish(env, c);
  }

  Napi::Value TimeoutMs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    struct timeval tv = {0, 0};
    if (c->failed || DTLSv1_get_timeout(c->ssl, &tv) != 1) return Napi::Number::New(env, -1);
    double ms = static_cast<double>(tv.tv_sec) * 1000.0 + static_cast<double>((tv.tv_usec + 999) / 1000);
    return Napi::Number::New(env, ms);
  }

  // onTimeout() -> datagrams (a retransmitted flight, or none)
  Napi::Value OnTimeout(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    tScratch.clear();
    struct timeval tv = {0, 0};
    // Only touch OpenSSL when a timer runs: an idle session keeps its buffers released.
    if (!c->failed && DTLSv1_get_timeout(c->ssl, &tv) == 1) {
      Writable(c);
      ClearErrors();
      if (DTLSv1_handle_timeout(c->ssl) < 0) Fail(c, TakeErrors("retransmission failed"));
    }
    return Finish(env, c);
  }

  Napi::Value PeerCertificate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    if (c->peerTrimmed) return ThrowError(env, "peer certificate trimmed (trimPeerCertificate)");
    X509* x = SSL_get0_peer_certificate(c->ssl);
    if (x == nullptr) return env.Null();
    int len = i2d_X509(x, nullptr);
    if (len <= 0) {
      ClearErrors();
      return env.Null();
    }
    Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(len));
    unsigned char* p = b.Data();
    i2d_X509(x, &p);
    return b;
  }

  /**
   * Deletes the extensions of the peer certificate the session keeps until it is freed (X509_delete_ext on the
   * object SSL_get0_peer_certificate returns). OpenSSL has no call to release the certificate itself, and an RA-TLS
   * certificate's extensions (evidence, endorsements) are most of it: about 4 KB per session. Nothing in OpenSSL
   * reads the certificate after the handshake here (no renegotiation, no session cache or tickets). Returns the
   * number of extensions deleted; peerCertificate() throws from then on.
   */
  Napi::Value TrimPeerCertificate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    if (c->failed || !SSL_is_init_finished(c->ssl)) return ThrowError(env, "handshake not complete");
    c->peerTrimmed = true;
    X509* x = SSL_get0_peer_certificate(c->ssl);
    uint32_t n = 0;
    if (x != nullptr) {
      for (int i = X509_get_ext_count(x) - 1; i >= 0; i--) {
        X509_EXTENSION_free(X509_delete_ext(x, i));
        n++;
      }
    }
    ClearErrors();
    return Napi::Number::New(env, n);
  }

  // exportKeyingMaterial(label, length, context?)
  Napi::Value ExportKeyingMaterial(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
      return ThrowTypeError(env, "exportKeyingMaterial(label: string, length: number, context?: Buffer)");
    }
    const uint8_t* ctxData = nullptr;
    size_t ctxLen = 0;
    bool useCtx = false;
    if (info.Length() >= 3 && !info[2].IsUndefined()) {
      if (!BytesOf(info[2], &ctxData, &ctxLen)) return ThrowTypeError(env, "context must be a Buffer");
      useCtx = true;
    }
    if (c->failed || !SSL_is_init_finished(c->ssl)) return ThrowError(env, "handshake not complete");
    std::string label = info[0].As<Napi::String>().Utf8Value();
    int64_t length = info[1].As<Napi::Number>().Int64Value();
    if (length <= 0 || length > 65535) return ThrowError(env, "length must be 1..65535");
    Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(length));
    ClearErrors();
    static const uint8_t kEmpty = 0;
    if (SSL_export_keying_material(c->ssl, out.Data(), out.Length(), label.data(), label.size(),
                                   useCtx ? (ctxLen > 0 ? ctxData : &kEmpty) : nullptr, ctxLen,
                                   useCtx ? 1 : 0) != 1) {
      return ThrowError(env, "exportKeyingMaterial: " + TakeErrors("failed"));
    }
    return out;
  }

  Napi::Value Cipher(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    const SSL_CIPHER* ci = SSL_get_current_cipher(c->ssl);
    return Napi::String::New(env, ci != nullptr ? SSL_CIPHER_get_name(ci) : "");
  }

  /** The protocol ALPN selected ("" when none was negotiated). */
  Napi::Value Alpn(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    const unsigned char* p = nullptr;
    unsigned int n = 0;
    SSL_get0_alpn_selected(c->ssl, &p, &n);
    if (p == nullptr || n == 0) return Napi::String::New(env, "");
    return Napi::String::New(env, reinterpret_cast<const char*>(p), n);
  }

  Napi::Value Version(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    return Napi::String::New(env, SSL_get_version(c->ssl));
  }

  Napi::Value Established(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    return Napi::Boolean::New(env, !c->failed && SSL_is_init_finished(c->ssl));
  }

  /** Largest record send() accepts (DTLS_get_data_mtu), 0 before the handshake completes. */
  Napi::Value MaxRecord(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    size_t max = (!c->failed && SSL_is_init_finished(c->ssl)) ? MaxPlaintext(c->ssl, c->mtu) : 0;
    return Napi::Number::New(env, static_cast<double>(max));
  }

  /** The fatal error that ended the session, or undefined. */
  Napi::Value Error(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    if (!c->failed) return env.Undefined();
    return Napi::String::New(env, c->error);
  }

  // shutdown() -> datagrams (close_notify)
  Napi::Value Shutdown(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Conn* c = Live(env);
    if (c == nullptr) return env.Undefined();
    tScratch.clear();
    if (!c->failed && SSL_is_init_finished(c->ssl) && !(SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN)) {
      Writable(c);
      ClearErrors();
      SSL_shutdown(c->ssl);
    }
    return Finish(env, c);
  }

  Napi::Value Free(const Napi::CallbackInfo& info) {
    conn_.reset();
    return info.Env().Undefined();
  }

  Meta meta_;
  std::unique_ptr<Conn> conn_;
};

}  // namespace

void InitDtls(Napi::Env env, Napi::Object exports) {
  exports.Set("DtlsContext", ContextWrap::Define(env));
  exports.Set("DtlsListener", ListenerWrap::Define(env));
  exports.Set("DtlsSession", SessionWrap::Define(env));
}
