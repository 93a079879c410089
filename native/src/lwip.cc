// Userspace TCP/IP primitive: one lwIP stack per process (Debian's liblwip, 2.1.3, built with its threaded core) with
// one network interface whose input is fed from JavaScript (raw IPv4 and IPv6 packets) and whose output is handed
// back to JavaScript in batches. TCP, UDP and ICMP echo through lwIP's raw API. No policy: addresses, what to connect to and
// where packets go are decided in TypeScript (src/native/lwip.ts).
//
// Threads. lwIP runs a "tcpip" thread of its own (timers: retransmissions, delayed ACKs, TIME-WAIT). Every call into
// lwIP from JavaScript runs under LOCK_TCPIP_CORE (Debian's build asserts it and aborts otherwise). Input packets
// are processed synchronously in the JavaScript thread under that lock (ip4_input), so a batch costs one lock round.
// lwIP callbacks (recv, sent, err, accept, netif output) run with the core lock held, in either thread; they never
// call JavaScript: they append to a mutex-protected queue. What the JavaScript thread's own calls queue (input,
// writes...) is drained by flush(), which the TypeScript wrapper runs at the end of the current job (a microtask);
// what lwIP's thread queues (timers) wakes the event loop with uv_async_send(). A drain is one call for all output
// packets, then one call for all events. Lock order: core lock, then queue mutex.
//
// Sockets. Each socket has a numeric id; lwIP pcbs carry the id (not a pointer) as callback argument and the
// id → socket table is only touched under the core lock. Every id ends with exactly one "closed" event. A socket
// whose both directions are done (our FIN sent and theirs received, or tcpClose) is detached: lwIP finishes the
// close on its own (FIN retransmission, TIME-WAIT) without callbacks, because lwIP frees TIME-WAIT pcbs silently.
//
// Flow control. Received data is not acknowledged to lwIP until JavaScript calls tcpRecved(id, n), so the
// advertised window closes while JavaScript has not consumed it. tcpWrite accepts at most the free send buffer
// (kSndBuf per connection).
//
// IPv6. The interface is point-to-point inside the tunnel: the leased global address sits in address slot 1 and slot
// 0 (lwIP's link-local slot) stays empty, so there is no link-local address, no router solicitation (lwIP sends them
// only from a valid slot 0), no duplicate address detection (the address is set PREFERRED), no neighbour discovery
// (output_ip6 takes the packet as it is, no ND resolution) and no autoconfiguration. Input is filtered before lwIP:
// only TCP, UDP and ICMPv6 echo/errors addressed to the leased address (no extension headers, no ND/MLD/RA/redirect);
// output to or from link-local or multicast addresses is dropped and counted (tx6Filtered): nothing link-local goes
// into the tunnel. The checks themselves, and address parsing and writing, are in lwip_addr.cc.
//
// Memory. Packets and payloads are copied out of pbufs (which are freed at once) into queue storage, and from there
// into one Buffer per batch (output) or one Buffer per data event.
#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "addon.h"

// <netinet/tcp.h> (through uv.h) defines TCP_MSS as the legacy socket option value 512; lwIP's is the segment size.
#undef TCP_MSS
extern "C" {
#include "lwip/inet_chksum.h"
#include "lwip/init.h"
#include "lwip/ip4.h"
#include "lwip/ip6.h"
#include "lwip/ip6_addr.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/priv/tcp_priv.h"
#include "lwip/prot/icmp.h"
#include "lwip/raw.h"
#include "lwip/tcp.h"
#include "lwip/tcpip.h"
#include "lwip/udp.h"
}
#include "lwip_addr.h"  // after the #undef above: it includes lwIP's options

// ---- randomness: the OS's, or none --------------------------------------------------------------------------------
// Sequence numbers and local ports are the only secrets an off-path sender must guess to inject into a connection or
// spoof a DNS answer. Both come from getrandom(2). If the OS random source ever fails, nothing weaker stands in
// (no rand()/random(), which are predictable and process-wide): the stack fails closed for the rest of the process
// (g_entropyFailed): calls that need a port throw ERR_SENG_ENTROPY and nothing more is sent (NetifOutput drops).
// Nothing here touches libc's rand() state (no srand()): that generator belongs to the rest of the process.
std::atomic<bool> g_entropyFailed{false};
std::atomic<uint64_t> g_entropyFailures{0};

static bool OsRandom(void* buf, size_t len) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len > 0) {
    ssize_t r = getrandom(p, len, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      g_entropyFailures.fetch_add(1, std::memory_order_relaxed);
      g_entropyFailed.store(true);
      return false;
    }
    p += r;
    len -= static_cast<size_t>(r);
  }
  return true;
}

// lwIP 2.1.3 without LWIP_HOOK_TCP_ISN (Debian's build) computes ISNs as `iss += tcp_ticks`: predictable, which lets
// an off-path sender guess sequence numbers (RFC 6528). liblwip calls tcp_next_iss through its PLT, and this addon
// comes before liblwip in the lookup scope of its dlopen group, so this definition replaces lwIP's: a fresh random
// ISN per connection. stats().issHook counts calls, so a test can check the replacement took effect. lwIP cannot be
// told that an ISN failed: the SYN (or SYN-ACK) it is about to send is dropped by NetifOutput instead.
static std::atomic<uint64_t> g_issCalls{0};

extern "C" __attribute__((visibility("default"))) u32_t tcp_next_iss(struct tcp_pcb* pcb) {
  (void)pcb;
  g_issCalls.fetch_add(1, std::memory_order_relaxed);
  u32_t v = 0;
  if (!OsRandom(&v, sizeof v)) return 0;  // g_entropyFailed is set: the segment never leaves
  return v;
}

// Local ports are picked here, uniformly from the IANA dynamic range 49152..65535 (lwIP's own range), for every
// bind to port 0 and every outgoing connection: lwIP's tcp_new_port/udp_new_port count up from one start value, so
// after the first, every port is known. Retried on collision.
constexpr int kPortTries = 64;

// Calls tryBind(port) with random ports until one is free (ERR_USE: another), another error, or kPortTries. Sets
// *noEntropy (and returns ERR_VAL) when the OS random source failed.
template <typename TryBind>
err_t BindRandomPort(TryBind tryBind, bool* noEntropy) {
  *noEntropy = false;
  err_t e = ERR_USE;
  for (int i = 0; i < kPortTries && e == ERR_USE; i++) {
    uint16_t r = 0;
    if (!OsRandom(&r, sizeof r)) {
      *noEntropy = true;
      return ERR_VAL;
    }
    e = tryBind(static_cast<u16_t>(0xc000u | (r & 0x3fffu)));
  }
  return e;
}

namespace {

using namespace seng_lwip;

constexpr size_t kMaxQueuedPackets = 65536;       // output packets waiting for the event loop
constexpr size_t kMaxQueuedBytes = 64u << 20;     // and their bytes; beyond: dropped (txDropped)
constexpr uint16_t kPingIdent = 0x5e6e;           // ICMP echo identifier of ping()
constexpr int kMinMtu = 576;
constexpr int kMaxMtu = 65535;
// Send buffer per connection. Debian's lwIP compiles TCP_SND_BUF as 64 KiB, which bounds one connection's upload to
// 64 KiB per round trip; the pcb's snd_buf is a run-time field (32 bits with window scaling), so it is raised here.
// The real bound is TCP_SND_QUEUELEN (180 pbufs, about one per full segment): 192 KiB stays below it at MSS 1360.
constexpr uint32_t kSndBuf = 192u << 10;

// EV_ERROR context, packed with the type: the same err_t means different things (ERR_RST before the connection was
// established is a refusal; ERR_ABRT is a timeout, an abort after shutdown(read), or an address change).
constexpr uint32_t kErrConnected = 0x400, kErrRdShut = 0x800, kErrReconfiguring = 0x1000;

enum EvType : uint8_t { EV_CONNECTED, EV_ACCEPT, EV_DATA, EV_SENT, EV_END, EV_ERROR, EV_CLOSED, EV_MESSAGE, EV_PONG };
const char* const kEvNames[] = {"connected", "accept", "data", "sent", "end", "error", "closed", "message", "pong"};

struct Event {
  uint32_t id = 0;
  EvType type = EV_CLOSED;
  uint32_t child = 0;
  uint32_t n = 0;
  bool hasN = false;
  std::string remote, local;
  int32_t err = 0;        // EV_ERROR: lwIP's err_t (mapped to a Node error code in TypeScript, src/native/lwip.ts)
  uint32_t errFlags = 0;  // EV_ERROR: what the socket was doing (kErr* below)
  uint32_t dataOff = 0, dataLen = 0;  // payload in Queue::evData
  bool hasData = false;
};

// A growable byte area without zero-filling.
struct Bytes {
  uint8_t* p = nullptr;
  size_t len = 0, cap = 0;
  uint8_t* Grow(size_t n) {
    if (len + n > cap) {
      size_t c = cap ? cap : 65536;
      while (c < len + n) c *= 2;
      auto* q = static_cast<uint8_t*>(realloc(p, c));
      if (!q) return nullptr;
      p = q;
      cap = c;
    }
    uint8_t* at = p + len;
    len += n;
    return at;
  }
  void Release() {
    free(p);
    p = nullptr;
    len = cap = 0;
  }
};

// Shared between lwIP callbacks (any thread, core lock held) and the event loop. Heap-allocated and never freed: the
// tcpip thread can run a timer after static destructors started at process exit.
struct Queue {
  std::mutex mu;
  bool open = false;  // a stack handle accepts output and events
  uv_async_t* async = nullptr;
  Bytes out;
  std::vector<uint32_t> outLens;
  std::vector<Event> events;
  Bytes evData;  // payloads of the queued events, back to back (a data event extended in place is the last one)
  uint64_t txPackets = 0, txBytes = 0, txDropped = 0;
  uint64_t asyncWakeups = 0;
};
Queue* const g_q = new Queue;

// True in the JavaScript thread while it calls into lwIP (CoreLock). What lwIP queues then is delivered by the
// flush() that the binding's wrapper schedules after every call (a microtask), not through the event loop's async
// handle: that saves a loop iteration and two syscalls per batch, and output leaves in the same turn.
thread_local bool t_jsCall = false;

void NotifyLocked() {
  if (t_jsCall) return;
  if (g_q->async) {
    g_q->asyncWakeups++;
    uv_async_send(g_q->async);
  }
}

// ---- lwIP-side state: touched only under the core lock -------------------------------------------------------------

enum Kind : uint8_t { K_TCP, K_LISTEN, K_UDP };

struct Sock {
  uint32_t id;
  Kind kind;
  tcp_pcb* tcp = nullptr;
  udp_pcb* udp = nullptr;
  uint32_t unrecved = 0;  // bytes delivered to JS and not yet tcpRecved
  bool connected = false, gotFin = false, wrShut = false, rdShut = false;
  bool finPending = false;  // shut for writing while still connecting: FIN once connected
};

// Heap-allocated and never destroyed, like the queue: the tcpip thread may run a timer callback during exit.
std::unordered_map<uint32_t, Sock*>& g_socks = *new std::unordered_map<uint32_t, Sock*>;
uint32_t g_nextId = 1;
struct netif g_netif;
bool g_netifAdded = false;
raw_pcb* g_ping = nullptr;
int g_mtu = 1500;
bool g_reconfiguring = false;
// Which families the lease has: the other family's packets are neither sent nor accepted.
bool g_has4 = false, g_has6 = false;
constexpr s8_t kSlot6 = 1;  // the leased IPv6 address's slot (slot 0, lwIP's link-local one, stays empty)
ip6_addr_t g_addr6;         // the leased IPv6 address (valid when g_has6)
std::atomic<uint64_t> g_tx6Filtered{0}, g_txNoFamily{0};

std::once_flag g_tcpipOnce;
std::atomic<bool> g_active{false};  // one open stack handle per process

// Taken by the JavaScript thread only (lwIP's own thread locks inside lwIP).
struct CoreLock {
  CoreLock() {
    LOCK_TCPIP_CORE();
    t_jsCall = true;
  }
  ~CoreLock() {
    t_jsCall = false;
    UNLOCK_TCPIP_CORE();
  }
  CoreLock(const CoreLock&) = delete;
  CoreLock& operator=(const CoreLock&) = delete;
};

void* IdArg(uint32_t id) { return reinterpret_cast<void*>(static_cast<uintptr_t>(id)); }

Sock* Find(void* arg) {
  auto it = g_socks.find(static_cast<uint32_t>(reinterpret_cast<uintptr_t>(arg)));
  return it == g_socks.end() ? nullptr : it->second;
}

Sock* FindId(uint32_t id) {
  auto it = g_socks.find(id);
  return it == g_socks.end() ? nullptr : it->second;
}

// ---- queue producers (core lock held) ------------------------------------------------------------------------------

void Push(Event&& ev) {
  std::lock_guard<std::mutex> g(g_q->mu);
  if (!g_q->open) return;
  if (ev.type == EV_SENT && !g_q->events.empty()) {
    Event& b = g_q->events.back();
    if (b.type == EV_SENT && b.id == ev.id) {
      b.n += ev.n;
      return;
    }
  }
  g_q->events.push_back(std::move(ev));
  NotifyLocked();
}

void PushSimple(uint32_t id, EvType t) {
  Event ev;
  ev.id = id;
  ev.type = t;
  Push(std::move(ev));
}

void PushData(uint32_t id, pbuf* p) {
  std::lock_guard<std::mutex> g(g_q->mu);
  if (!g_q->open) return;
  Event* target = nullptr;
  if (!g_q->events.empty()) {
    Event& b = g_q->events.back();
    if (b.type == EV_DATA && b.id == id) target = &b;  // consecutive data of one socket: one event
  }
  uint8_t* at = g_q->evData.Grow(p->tot_len);
  if (!at) return;  // out of memory: lost like a dropped segment would be, but it was acknowledged (see OnRecv)
  if (!target) {
    g_q->events.emplace_back();
    target = &g_q->events.back();
    target->id = id;
    target->type = EV_DATA;
    target->hasData = true;
    target->dataOff = static_cast<uint32_t>(at - g_q->evData.p);
  }
  target->dataLen += p->tot_len;
  pbuf_copy_partial(p, at, p->tot_len, 0);
  NotifyLocked();
}

// A whole IP packet (LWIP_NETIF_TX_SINGLE_PBUF) for JavaScript. Copied out; the pbuf stays lwIP's.
err_t QueueOutput(struct pbuf* p) {
  std::lock_guard<std::mutex> g(g_q->mu);
  if (!g_q->open) return ERR_IF;
  if (g_entropyFailed.load()) {  // a segment may carry an ISN that is not random: nothing leaves any more
    g_q->txDropped++;
    return ERR_IF;
  }
  size_t len = p->tot_len;
  if (g_q->outLens.size() >= kMaxQueuedPackets || g_q->out.len + len > kMaxQueuedBytes) {
    g_q->txDropped++;
    return ERR_MEM;  // TCP keeps the segment and retries; UDP/ICMP senders see the error
  }
  uint8_t* at = g_q->out.Grow(len);
  if (!at) {
    g_q->txDropped++;
    return ERR_MEM;
  }
  pbuf_copy_partial(p, at, static_cast<u16_t>(len), 0);
  g_q->outLens.push_back(static_cast<uint32_t>(len));
  g_q->txPackets++;
  g_q->txBytes += len;
  NotifyLocked();
  return ERR_OK;
}

err_t NetifOutput(struct netif* nif, struct pbuf* p, const ip4_addr_t* nexthop) {
  (void)nif;
  (void)nexthop;
  if (!g_has4) {  // an IPv6-only lease: no IPv4 source address to send from
    g_txNoFamily++;
    return ERR_RTE;
  }
  return QueueOutput(p);
}

// IPv6 output: only unicast from the leased address to a routable one (see the top of the file).
err_t NetifOutput6(struct netif* nif, struct pbuf* p, const ip6_addr_t* addr) {
  (void)nif;
  (void)addr;
  if (!g_has6) {
    g_txNoFamily++;
    return ERR_RTE;
  }
  uint8_t h[40];
  if (p->tot_len < 40 || pbuf_copy_partial(p, h, 40, 0) != 40 ||
      !CheckOutput6(h, reinterpret_cast<const uint8_t*>(g_addr6.addr))) {
    g_tx6Filtered++;
    return ERR_RTE;
  }
  return QueueOutput(p);
}

err_t NetifInit(struct netif* nif) {
  nif->name[0] = 's';
  nif->name[1] = 'g';
  nif->output = NetifOutput;
  nif->output_ip6 = NetifOutput6;
  nif->mtu = static_cast<u16_t>(g_mtu);
  nif->mtu6 = static_cast<u16_t>(g_mtu);  // TCP's IPv6 MSS is mtu6 - 60; 0 would mean no limit
  nif->flags = 0;  // point-to-point IP: no ARP, no broadcast
  return ERR_OK;
}

// ---- socket teardown (core lock held) ------------------------------------------------------------------------------

void DetachTcp(tcp_pcb* pcb, bool listener) {
  tcp_arg(pcb, nullptr);
  if (listener) {
    tcp_accept(pcb, nullptr);
    return;
  }
  tcp_recv(pcb, nullptr);
  tcp_sent(pcb, nullptr);
  tcp_err(pcb, nullptr);
  tcp_poll(pcb, nullptr, 0);
}

void Forget(Sock* s, bool emitClosed) {
  g_socks.erase(s->id);
  if (emitClosed) PushSimple(s->id, EV_CLOSED);
  delete s;
}

// Give back the receive window JS has not acknowledged: tcp_close() resets a connection whose window is not whole.
void RecvedAll(Sock* s) {
  if (!s->tcp || s->tcp->state == LISTEN) return;
  while (s->unrecved > 0) {
    u16_t n = static_cast<u16_t>(s->unrecved > 0xffff ? 0xffff : s->unrecved);
    tcp_recved(s->tcp, n);
    s->unrecved -= n;
  }
}

// Graceful close: FIN after queued data; lwIP owns the pcb from here (no more callbacks).
void CloseSock(Sock* s, bool emitClosed) {
  if (s->kind == K_UDP) {
    if (s->udp) udp_remove(s->udp);
    s->udp = nullptr;
  } else if (s->tcp) {
    tcp_pcb* pcb = s->tcp;
    RecvedAll(s);
    DetachTcp(pcb, s->kind == K_LISTEN);
    s->tcp = nullptr;
    if (tcp_close(pcb) != ERR_OK) tcp_abort(pcb);  // FIN could not be queued: reset instead
  }
  Forget(s, emitClosed);
}

void AbortSock(Sock* s, bool emitClosed) {
  if (s->kind == K_TCP && s->tcp) {
    tcp_pcb* pcb = s->tcp;
    DetachTcp(pcb, false);
    s->tcp = nullptr;
    tcp_abort(pcb);  // sends RST, frees the pcb
    Forget(s, emitClosed);
  } else {
    CloseSock(s, emitClosed);
  }
}

// ---- lwIP callbacks (core lock held, tcpip thread or JS thread) ----------------------------------------------------

// Slow start up to the whole send buffer (lwIP starts with ssthresh = 64 KiB, then grows one MSS per round trip).
void RaiseSsthresh(tcp_pcb* pcb) {
  if (pcb->ssthresh < kSndBuf) pcb->ssthresh = kSndBuf;
}

err_t OnRecv(void* arg, tcp_pcb* pcb, pbuf* p, err_t err) {
  (void)err;
  Sock* s = Find(arg);
  if (!s) {
    if (p) {
      tcp_recved(pcb, p->tot_len);
      pbuf_free(p);
    }
    return ERR_OK;
  }
  if (!p) {  // the peer's FIN
    s->gotFin = true;
    PushSimple(s->id, EV_END);
    // Both directions done: detach now. lwIP frees TIME-WAIT (and CLOSING → TIME-WAIT) pcbs without a callback.
    if (s->wrShut) CloseSock(s, true);
    return ERR_OK;
  }
  s->unrecved += p->tot_len;
  PushData(s->id, p);
  pbuf_free(p);
  return ERR_OK;
}

err_t OnSent(void* arg, tcp_pcb* pcb, u16_t len) {
  (void)pcb;
  Sock* s = Find(arg);
  if (!s) return ERR_OK;
  Event ev;
  ev.id = s->id;
  ev.type = EV_SENT;
  ev.n = len;
  ev.hasN = true;
  Push(std::move(ev));
  return ERR_OK;
}

// The pcb is already freed when this runs.
void OnErr(void* arg, err_t err) {
  Sock* s = Find(arg);
  if (!s) return;
  s->tcp = nullptr;
  if (err != ERR_CLSD) {  // ERR_CLSD: closed normally after our FIN was acknowledged (LAST-ACK done)
    Event ev;
    ev.id = s->id;
    ev.type = EV_ERROR;
    ev.err = err;
    ev.errFlags = (s->connected ? kErrConnected : 0) | (s->rdShut ? kErrRdShut : 0) |
                  (g_reconfiguring ? kErrReconfiguring : 0);
    Push(std::move(ev));
  }
  Forget(s, true);
}

err_t OnConnected(void* arg, tcp_pcb* pcb, err_t err) {
  (void)err;
  Sock* s = Find(arg);
  if (!s) return ERR_OK;
  s->connected = true;
  RaiseSsthresh(pcb);
  if (s->finPending) {
    s->finPending = false;
    tcp_shutdown(pcb, 0, 1);
  }
  Event ev;
  ev.id = s->id;
  ev.type = EV_CONNECTED;
  ev.local = AddrText(&pcb->local_ip, pcb->local_port);
  ev.remote = AddrText(&pcb->remote_ip, pcb->remote_port);
  Push(std::move(ev));
  return ERR_OK;
}

void Attach(Sock* s) {
  tcp_arg(s->tcp, IdArg(s->id));
  tcp_recv(s->tcp, OnRecv);
  tcp_sent(s->tcp, OnSent);
  tcp_err(s->tcp, OnErr);
}

err_t OnAccept(void* arg, tcp_pcb* newpcb, err_t err) {
  Sock* l = Find(arg);
  if (!l || l->kind != K_LISTEN || err != ERR_OK || !newpcb) return ERR_VAL;  // lwIP aborts newpcb
  auto* s = new Sock{g_nextId++, K_TCP};
  s->tcp = newpcb;
  s->connected = true;
  newpcb->snd_buf = kSndBuf;  // nothing written yet: the whole buffer is free
  RaiseSsthresh(newpcb);
  g_socks[s->id] = s;
  Attach(s);
  Event ev;
  ev.id = l->id;
  ev.type = EV_ACCEPT;
  ev.child = s->id;
  ev.local = AddrText(&newpcb->local_ip, newpcb->local_port);
  ev.remote = AddrText(&newpcb->remote_ip, newpcb->remote_port);
  Push(std::move(ev));
  return ERR_OK;
}

void OnUdpRecv(void* arg, udp_pcb* pcb, pbuf* p, const ip_addr_t* addr, u16_t port) {
  (void)pcb;
  Sock* s = Find(arg);
  if (s && p) {
    Event ev;
    ev.id = s->id;
    ev.type = EV_MESSAGE;
    ev.remote = AddrText(addr, port);
    ev.hasData = true;
    // Payload and event in one critical section: JavaScript takes payloads in event order, and this can run on
    // lwIP's own thread (loopback) while the JS thread swaps the queue out.
    std::lock_guard<std::mutex> g(g_q->mu);
    uint8_t* at = g_q->open ? g_q->evData.Grow(p->tot_len) : nullptr;
    if (at || (g_q->open && p->tot_len == 0)) {
      ev.dataOff = at ? static_cast<uint32_t>(at - g_q->evData.p) : 0;
      ev.dataLen = p->tot_len;
      if (p->tot_len) pbuf_copy_partial(p, at, p->tot_len, 0);
      g_q->events.push_back(std::move(ev));
      NotifyLocked();
    }
  }
  if (p) pbuf_free(p);
}

// Raw ICMP: sees every ICMP packet with its IP header; eats only echo replies to ping().
u8_t OnRawIcmp(void* arg, raw_pcb* pcb, pbuf* p, const ip_addr_t* addr) {
  (void)arg;
  (void)pcb;
  if (p->tot_len < 20) return 0;
  uint8_t vhl = 0;
  pbuf_copy_partial(p, &vhl, 1, 0);
  u16_t hlen = static_cast<u16_t>((vhl & 0x0f) * 4);
  if (hlen < 20 || p->tot_len < hlen + 8) return 0;
  struct icmp_echo_hdr h;
  pbuf_copy_partial(p, &h, sizeof h, hlen);
  if (h.type != ICMP_ER || h.code != 0 || lwip_ntohs(h.id) != kPingIdent) return 0;
  Event ev;
  ev.id = 0;
  ev.type = EV_PONG;
  ev.n = lwip_ntohs(h.seqno);
  ev.hasN = true;
  char buf[48];
  const char* txt = ipaddr_ntoa_r(addr, buf, sizeof buf);
  ev.remote = txt ? txt : "?";
  Push(std::move(ev));
  pbuf_free(p);
  return 1;
}

// ---- setup ---------------------------------------------------------------------------------------------------------

void StartTcpip() {
  struct Ctx {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
  } ctx;
  tcpip_init(
      [](void* a) {
        auto* c = static_cast<Ctx*>(a);
        std::lock_guard<std::mutex> g(c->m);
        c->done = true;
        c->cv.notify_all();
      },
      &ctx);
  std::unique_lock<std::mutex> lk(ctx.m);
  ctx.cv.wait(lk, [&] { return ctx.done; });
}

struct Config {
  bool has4 = false, has6 = false;
  ip_addr_t addr, mask, gw;
  ip_addr_t addr6;
  int mtu;
};

// Puts the lease's addresses on the interface (core lock held). An IPv4-less lease leaves 0.0.0.0 (nothing is sent:
// NetifOutput); a changed or removed IPv6 address is invalidated first, which aborts the pcbs bound to it.
void ApplyAddresses(const Config& cfg) {
  ip4_addr_t any4;
  ip4_addr_set_zero(&any4);
  g_has4 = cfg.has4;
  netif_set_addr(&g_netif, cfg.has4 ? ip_2_ip4(&cfg.addr) : &any4, cfg.has4 ? ip_2_ip4(&cfg.mask) : &any4,
                 cfg.has4 ? ip_2_ip4(&cfg.gw) : &any4);
  bool same = g_has6 && cfg.has6 && memcmp(g_addr6.addr, ip_2_ip6(&cfg.addr6)->addr, 16) == 0;
  if (g_has6 && !same) {
    netif_ip6_addr_set_state(&g_netif, kSlot6, IP6_ADDR_INVALID);
    g_has6 = false;
  }
  if (cfg.has6 && !same) {
    ip6_addr_copy(g_addr6, *ip_2_ip6(&cfg.addr6));
    ip6_addr_clear_zone(&g_addr6);
    netif_ip6_addr_set(&g_netif, kSlot6, &g_addr6);
    netif_ip6_addr_set_state(&g_netif, kSlot6, IP6_ADDR_PREFERRED);  // no DAD: the gateway leased it to us alone
    g_has6 = true;
  }
}

// An lwIP error thrown to JavaScript: lwIP's own text, and its err_t as `lwipErr` (src/native/lwip.ts maps it to a
// Node error code through a table).
Napi::Error CodeError(Napi::Env env, const std::string& what, err_t e) {
  Napi::Error err = Napi::Error::New(env, what + ": " + lwip_strerr(e));
  err.Set("lwipErr", Napi::Number::New(env, e));
  return err;
}

// The OS random source failed (see OsRandom): no port or sequence number can be picked safely.
Napi::Error EntropyError(Napi::Env env, const std::string& what) {
  Napi::Error err = Napi::Error::New(
      env, what + ": the OS random source (getrandom) failed; the stack refuses to use predictable ports and "
                  "sequence numbers");
  err.Set("code", Napi::String::New(env, "ERR_SENG_ENTROPY"));
  return err;
}

bool GetBytes(napi_env env, napi_value v, const uint8_t** data, size_t* len) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  size_t length = 0;
  void* ptr = nullptr;
  if (napi_get_typedarray_info(env, v, &type, &length, &ptr, nullptr, nullptr) != napi_ok) return false;
  if (type != napi_uint8_array) return false;
  *data = static_cast<const uint8_t*>(ptr);
  *len = length;
  return true;
}

class LwipHandle : public Napi::ObjectWrap<LwipHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "LwipHandle",
                       {
                           InstanceAccessor<&LwipHandle::GetClosed>("closed"),
                           InstanceMethod<&LwipHandle::Reconfigure>("reconfigure"),
                           InstanceMethod<&LwipHandle::Input>("input"),
                           InstanceMethod<&LwipHandle::TcpConnect>("tcpConnect"),
                           InstanceMethod<&LwipHandle::TcpListen>("tcpListen"),
                           InstanceMethod<&LwipHandle::TcpWrite>("tcpWrite"),
                           InstanceMethod<&LwipHandle::TcpShutdown>("tcpShutdown"),
                           InstanceMethod<&LwipHandle::TcpClose>("tcpClose"),
                           InstanceMethod<&LwipHandle::TcpAbort>("tcpAbort"),
                           InstanceMethod<&LwipHandle::TcpRecved>("tcpRecved"),
                           InstanceMethod<&LwipHandle::TcpNoDelay>("tcpNoDelay"),
                           InstanceMethod<&LwipHandle::LocalAddress>("localAddress"),
                           InstanceMethod<&LwipHandle::UdpBind>("udpBind"),
                           InstanceMethod<&LwipHandle::UdpSend>("udpSend"),
                           InstanceMethod<&LwipHandle::UdpClose>("udpClose"),
                           InstanceMethod<&LwipHandle::Ping>("ping"),
                           InstanceMethod<&LwipHandle::Ref>("ref"),
                           InstanceMethod<&LwipHandle::Unref>("unref"),
                           InstanceMethod<&LwipHandle::Stats>("stats"),
                           InstanceMethod<&LwipHandle::Close>("close"),
                           InstanceMethod<&LwipHandle::Flush>("flush"),
                       });
  }

  // new LwipHandle(cfg: {address, prefix, gateway, mtu}, onOutput(data, lengths), onEvents(events[]))
  explicit LwipHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LwipHandle>(info), env_(info.Env()) {
    Napi::Env env = info.Env();
    Config cfg;
    if (info.Length() < 3 || !info[1].IsFunction() || !info[2].IsFunction()) {
      Napi::TypeError::New(env, "LwipHandle(cfg, onOutput, onEvents)").ThrowAsJavaScriptException();
      return;
    }
    if (!ParseConfig(env, info[0], &cfg, "LwipStack.create")) return;
    bool expected = false;
    if (!g_active.compare_exchange_strong(expected, true)) {
      Napi::Error::New(env, "LwipStack.create: an lwIP stack is already open in this process (lwIP is global)")
          .ThrowAsJavaScriptException();
      return;
    }
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
      g_active = false;
      Napi::Error::New(env, "LwipStack.create: no event loop").ThrowAsJavaScriptException();
      return;
    }
    uint32_t probe = 0;
    if (g_entropyFailed.load() || !OsRandom(&probe, sizeof probe)) {
      g_active = false;
      EntropyError(env, "LwipStack.create").ThrowAsJavaScriptException();
      return;
    }
    std::call_once(g_tcpipOnce, StartTcpip);
    onOutput_ = Napi::Persistent(info[1].As<Napi::Function>());
    onEvents_ = Napi::Persistent(info[2].As<Napi::Function>());
    napi_value resName = Napi::String::New(env, "SengLwip");
    napi_async_init(env, Value(), resName, &asyncCtx_);
    async_ = new uv_async_t;
    uv_async_init(loop, async_, &LwipHandle::OnAsync);
    async_->data = this;
    {
      std::lock_guard<std::mutex> g(g_q->mu);
      g_q->open = true;
      g_q->async = async_;
      g_q->out.len = 0;
      g_q->outLens.clear();
      g_q->events.clear();
      g_q->evData.len = 0;
    }
    {
      CoreLock lock;
      g_mtu = cfg.mtu;
      memset(&g_netif, 0, sizeof g_netif);
      g_has4 = g_has6 = false;
      netif_add(&g_netif, nullptr, nullptr, nullptr, nullptr, NetifInit, ip4_input);  // addresses: ApplyAddresses
      netif_set_ip6_autoconfig_enabled(&g_netif, 0);
      ApplyAddresses(cfg);
      netif_set_default(&g_netif);
      netif_set_link_up(&g_netif);
      netif_set_up(&g_netif);
      g_netif.rs_count = 0;  // no router solicitations (there is no slot-0 address to send them from anyway)
      g_netifAdded = true;
    }
    open_ = true;
    Napi::ObjectWrap<LwipHandle>::Ref();  // alive while the async handle points at it
    napi_add_env_cleanup_hook(env, &LwipHandle::EnvCleanup, this);
    hookAdded_ = true;
  }

  ~LwipHandle() override {
    Teardown();
    if (hookAdded_) napi_remove_env_cleanup_hook(env_, &LwipHandle::EnvCleanup, this);
    if (asyncCtx_) napi_async_destroy(env_, asyncCtx_);
    spare_.Release();
    spareData_.Release();
  }

 private:
  static void EnvCleanup(void* arg) {
    auto* self = static_cast<LwipHandle*>(arg);
    self->hookAdded_ = false;
    self->Teardown();
  }

  // Closes every socket (RST), removes the interface, stops deliveries. Touches no JS.
  void Teardown() {
    if (!open_) return;
    open_ = false;
    {
      CoreLock lock;
      std::vector<Sock*> all;
      all.reserve(g_socks.size());
      for (auto& kv : g_socks) all.push_back(kv.second);
      for (Sock* s : all) AbortSock(s, false);
      if (g_ping) {
        raw_remove(g_ping);
        g_ping = nullptr;
      }
      if (g_netifAdded) {
        netif_set_down(&g_netif);
        netif_remove(&g_netif);
        g_netifAdded = false;
        g_has4 = g_has6 = false;
      }
    }
    {
      std::lock_guard<std::mutex> g(g_q->mu);
      g_q->open = false;
      g_q->async = nullptr;
      g_q->events.clear();
      g_q->evData.Release();
      g_q->events.shrink_to_fit();
      g_q->outLens.clear();
      g_q->outLens.shrink_to_fit();
      g_q->out.Release();
    }
    if (async_) {
      uv_close(reinterpret_cast<uv_handle_t*>(async_), [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
      async_ = nullptr;
    }
    g_active = false;
  }

  bool CheckOpen(Napi::Env env, const char* what) {
    if (open_) return true;
    Napi::Error::New(env, std::string("LwipStack.") + what + ": the stack is closed").ThrowAsJavaScriptException();
    return false;
  }

  static bool ParseConfig(Napi::Env env, Napi::Value v, Config* cfg, const char* what) {
    if (!v.IsObject()) {
      Napi::TypeError::New(env, std::string(what) + ": cfg must be an object").ThrowAsJavaScriptException();
      return false;
    }
    Napi::Object o = v.As<Napi::Object>();
    Napi::Value a = o.Get("address"), p = o.Get("prefix"), g = o.Get("gateway"), m = o.Get("mtu");
    Napi::Value a6 = o.Get("address6"), p6 = o.Get("prefix6");
    if (env.IsExceptionPending()) return false;
    auto fail = [&](const std::string& msg, bool range = false) {
      if (range) Napi::RangeError::New(env, std::string(what) + ": " + msg).ThrowAsJavaScriptException();
      else Napi::TypeError::New(env, std::string(what) + ": " + msg).ThrowAsJavaScriptException();
      return false;
    };
    cfg->has4 = !a.IsUndefined() && !a.IsNull();
    cfg->has6 = !a6.IsUndefined() && !a6.IsNull();
    if (!cfg->has4 && !cfg->has6) return fail("cfg needs an address (IPv4) or address6 (IPv6), or both");
    if (cfg->has4) {
      if (!a.IsString() || !ParseIp4(a.As<Napi::String>().Utf8Value(), &cfg->addr))
        return fail("cfg.address must be an IPv4 address");
      if (!g.IsString() || !ParseIp4(g.As<Napi::String>().Utf8Value(), &cfg->gw))
        return fail("cfg.gateway must be an IPv4 address");
      double pd = p.IsNumber() ? p.As<Napi::Number>().DoubleValue() : -1;
      if (!(pd >= 0 && pd <= 32) || pd != static_cast<double>(static_cast<int>(pd)))
        return fail("cfg.prefix must be an integer from 0 to 32", true);
      int prefix = static_cast<int>(pd);
      uint32_t mask = prefix == 0 ? 0 : (0xffffffffu << (32 - prefix));
      memset(&cfg->mask, 0, sizeof cfg->mask);
      IP_SET_TYPE_VAL(cfg->mask, IPADDR_TYPE_V4);
      ip_2_ip4(&cfg->mask)->addr = htonl(mask);
    }
    if (cfg->has6) {
      if (!a6.IsString() || !ParseIp6(a6.As<Napi::String>().Utf8Value(), &cfg->addr6))
        return fail("cfg.address6 must be an IPv6 address");
      if (!UsableAddress6(reinterpret_cast<const uint8_t*>(ip_2_ip6(&cfg->addr6)->addr)))
        return fail("cfg.address6 must be a global or unique-local unicast IPv6 address");
      double pd = p6.IsNumber() ? p6.As<Napi::Number>().DoubleValue() : -1;
      if (!(pd >= 1 && pd <= 128) || pd != static_cast<double>(static_cast<int>(pd)))
        return fail("cfg.prefix6 must be an integer from 1 to 128", true);
    }
    double md = m.IsNumber() ? m.As<Napi::Number>().DoubleValue() : -1;
    int minMtu = cfg->has6 ? 1280 : kMinMtu;  // IPv6's minimum link MTU (RFC 8200)
    if (!(md >= minMtu && md <= kMaxMtu) || md != static_cast<double>(static_cast<int>(md)))
      return fail("cfg.mtu must be an integer from " + std::to_string(minMtu) + " to " + std::to_string(kMaxMtu),
                  true);
    cfg->mtu = static_cast<int>(md);
    return true;
  }

  // info[at] true: "::" means both families (IPADDR_TYPE_ANY: a dual-stack pcb, as a Linux socket bound to [::]
  // without IPV6_V6ONLY). Returns whether it is.
  static bool DualStack(const Napi::CallbackInfo& info, size_t at, ip_addr_t* ip) {
    if (info.Length() <= at || !info[at].ToBoolean().Value()) return false;
    if (!IP_IS_V6(ip) || !ip_addr_isany(ip)) return false;
    *ip = *IP_ANY_TYPE;
    return true;
  }

  static bool GetIpPort(Napi::Env env, const Napi::CallbackInfo& info, size_t at, ip_addr_t* ip, u16_t* port,
                        const char* what) {
    if (info.Length() <= at + 1 || !info[at].IsString() ||
        !ParseIp(info[at].As<Napi::String>().Utf8Value(), ip)) {
      Napi::TypeError::New(env, std::string(what) + ": ip must be an IPv4 or IPv6 address string")
          .ThrowAsJavaScriptException();
      return false;
    }
    double p = info[at + 1].IsNumber() ? info[at + 1].As<Napi::Number>().DoubleValue() : -1;
    if (!(p >= 0 && p <= 65535) || p != static_cast<double>(static_cast<int>(p))) {
      Napi::RangeError::New(env, std::string(what) + ": port must be an integer from 0 to 65535")
          .ThrowAsJavaScriptException();
      return false;
    }
    *port = static_cast<u16_t>(p);
    return true;
  }

  static bool GetId(Napi::Env env, const Napi::CallbackInfo& info, uint32_t* id, const char* what) {
    double d = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 1 && d <= 4294967295.0) || d != static_cast<double>(static_cast<uint32_t>(d))) {
      Napi::TypeError::New(env, std::string(what) + ": id must be a socket id").ThrowAsJavaScriptException();
      return false;
    }
    *id = static_cast<uint32_t>(d);
    return true;
  }

  Napi::Value GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !open_); }

  Napi::Value Reconfigure(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Config cfg;
    if (!ParseConfig(env, info.Length() > 0 ? info[0] : env.Undefined(), &cfg, "LwipStack.reconfigure")) {
      return env.Undefined();
    }
    if (!CheckOpen(env, "reconfigure")) return env.Undefined();
    CoreLock lock;
    g_mtu = cfg.mtu;
    g_netif.mtu = static_cast<u16_t>(cfg.mtu);
    g_netif.mtu6 = static_cast<u16_t>(cfg.mtu);
    g_reconfiguring = true;  // connections bound to a changed address are aborted: EADDRNOTAVAIL
    ApplyAddresses(cfg);
    g_reconfiguring = false;
    return env.Undefined();
  }

  // input(packets: Uint8Array[]): number of packets handed to lwIP (the others were not IPv4, too short/long, or not
// ICMP/TCP/UDP).
  Napi::Value Input(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsArray()) {
      Napi::TypeError::New(env, "LwipStack.input: packets must be an array of Buffers").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (!CheckOpen(env, "input")) return env.Undefined();
    Napi::Array arr = info[0].As<Napi::Array>();
    uint32_t n = arr.Length();
    pending_.resize(n);
    for (uint32_t i = 0; i < n; i++) {
      napi_value el;
      if (napi_get_element(env, arr, i, &el) != napi_ok || !GetBytes(env, el, &pending_[i].data, &pending_[i].len)) {
        if (env.IsExceptionPending()) return env.Undefined();
        Napi::TypeError::New(env, "LwipStack.input: packets[" + std::to_string(i) + "] is not a Buffer or Uint8Array")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    uint32_t accepted = 0;
    {
      CoreLock lock;
      for (uint32_t i = 0; i < n; i++) {
        const uint8_t* d = pending_[i].data;
        size_t len = pending_[i].len;
        rxPackets_++;
        rxBytes_ += len;
        if (len >= 1 && (d[0] >> 4) == 6) {
          if (!Accept6(d, len)) {
            rxDropped_++;
            continue;
          }
          pbuf* p = pbuf_alloc(PBUF_LINK, static_cast<u16_t>(len), PBUF_RAM);
          if (!p) {
            rxDropped_++;
            continue;
          }
          memcpy(p->payload, d, len);
          ip6_input(p, &g_netif);  // takes the pbuf in every case
          accepted++;
          continue;
        }
        if (len < 20 || len > 0xffff || (d[0] >> 4) != 4 || !g_has4) {
          rxDropped_++;
          continue;
        }
        // Only the protocols this API serves reach lwIP. Debian's lwIP aborts the process on one UDP-Lite packet
        // whose checksum coverage exceeds its length (udp_input does not check it; an assertion in
        // inet_cksum_pseudo_partial_base fires). Reassembled datagrams take the header of the offset-0 fragment,
        // which passed this same check.
        if (d[9] != IP_PROTO_ICMP && d[9] != IP_PROTO_TCP && d[9] != IP_PROTO_UDP) {
          rxDropped_++;
          rxProtoDropped_++;
          continue;
        }
        pbuf* p = pbuf_alloc(PBUF_LINK, static_cast<u16_t>(len), PBUF_RAM);
        if (!p) {
          rxDropped_++;
          continue;
        }
        memcpy(p->payload, d, len);
        ip4_input(p, &g_netif);  // takes the pbuf in every case
        accepted++;
      }
    }
    return Napi::Number::New(env, accepted);
  }

  // Whether an IPv6 packet may reach lwIP (core lock held): see CheckInput6. Counted in rx6Filtered.
  bool Accept6(const uint8_t* d, size_t len) {
    Input6 v = g_has6 ? CheckInput6(d, len, reinterpret_cast<const uint8_t*>(g_addr6.addr)) : Input6::kNotOurs;
    if (v == Input6::kAccept) return true;
    rx6Filtered_++;
    if (v == Input6::kProtocol) rxProtoDropped_++;
    return false;
  }

  // A family the lease does not have cannot be used: no source address for it.
  static bool FamilyLeased(const ip_addr_t* ip) { return IP_IS_V6(ip) ? g_has6 : g_has4; }

  Napi::Value TcpConnect(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ip_addr_t ip;
    u16_t port;
    if (!GetIpPort(env, info, 0, &ip, &port, "LwipStack.tcpConnect")) return env.Undefined();
    if (!CheckOpen(env, "tcpConnect")) return env.Undefined();
    err_t e = ERR_OK;
    bool noEntropy = g_entropyFailed.load();
    uint32_t id = 0;
    if (!noEntropy) {
      CoreLock lock;
      bool v6 = IP_IS_V6(&ip);
      tcp_pcb* pcb = FamilyLeased(&ip) ? tcp_new_ip_type(v6 ? IPADDR_TYPE_V6 : IPADDR_TYPE_V4) : nullptr;
      if (!FamilyLeased(&ip)) {
        e = ERR_RTE;
      } else if (!pcb) {
        e = ERR_MEM;
      } else {
        // A random local port (lwIP's own would be the previous one + 1); the address is the interface's.
        e = BindRandomPort([&](u16_t p) { return tcp_bind(pcb, v6 ? IP6_ADDR_ANY : IP4_ADDR_ANY, p); },
                           &noEntropy);
        if (e != ERR_OK) {
          tcp_close(pcb);  // never connected: frees it
        } else {
          auto* s = new Sock{g_nextId++, K_TCP};
          s->tcp = pcb;
          pcb->snd_buf = kSndBuf;  // fresh pcb: nothing written yet
          id = s->id;
          g_socks[id] = s;
          Attach(s);
          e = tcp_connect(pcb, &ip, port, OnConnected);
          if (e == ERR_OK && g_entropyFailed.load()) {  // the ISN was not random: the SYN was dropped
            noEntropy = true;
            e = ERR_VAL;
          }
          if (e != ERR_OK) {
            DetachTcp(pcb, false);
            tcp_abort(pcb);  // frees it (an RST, if anything, is dropped like the SYN)
            Forget(s, false);
          }
        }
      }
    }
    if (noEntropy) {
      EntropyError(env, "LwipStack.tcpConnect").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (e != ERR_OK) {
      CodeError(env, "LwipStack.tcpConnect", e).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, id);
  }

  Napi::Value TcpListen(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ip_addr_t ip;
    u16_t port;
    if (!GetIpPort(env, info, 0, &ip, &port, "LwipStack.tcpListen")) return env.Undefined();
    int backlog = TCP_DEFAULT_LISTEN_BACKLOG;
    if (info.Length() > 2 && !info[2].IsUndefined()) {
      double b = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : -1;
      if (!(b >= 1 && b <= 255) || b != static_cast<double>(static_cast<int>(b))) {
        Napi::RangeError::New(env, "LwipStack.tcpListen: backlog must be an integer from 1 to 255")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
      backlog = static_cast<int>(b);
    }
    DualStack(info, 3, &ip);
    if (!CheckOpen(env, "tcpListen")) return env.Undefined();
    err_t e = ERR_OK;
    bool noEntropy = port == 0 && g_entropyFailed.load();
    uint32_t id = 0;
    if (!noEntropy) {
      CoreLock lock;
      tcp_pcb* pcb = tcp_new_ip_type(IP_GET_TYPE(&ip));
      if (!pcb) {
        e = ERR_MEM;
      } else {
        // SOF_REUSEADDR lets a listener come back while connections of its port are in TIME-WAIT; lwIP would then
        // also allow a second listener on the port, which Linux refuses: refuse it here.
        ip_set_option(pcb, SOF_REUSEADDR);
        auto bind = [&](u16_t p) {
          for (tcp_pcb_listen* l = tcp_listen_pcbs.listen_pcbs; l; l = l->next) {
            if (l->local_port == p && FamiliesOverlap(&l->local_ip, &ip) &&
                (ip_addr_isany(&l->local_ip) || ip_addr_isany(&ip) || ip_addr_cmp(&l->local_ip, &ip))) {
              return static_cast<err_t>(ERR_USE);
            }
          }
          return tcp_bind(pcb, &ip, p);
        };
        e = port != 0 ? bind(port) : BindRandomPort(bind, &noEntropy);
        tcp_pcb* lpcb = nullptr;
        if (e == ERR_OK) lpcb = tcp_listen_with_backlog_and_err(pcb, static_cast<u8_t>(backlog), &e);
        if (!lpcb) {
          if (e == ERR_OK) e = ERR_MEM;
          tcp_close(pcb);  // not listening: frees it
        } else {
          auto* s = new Sock{g_nextId++, K_LISTEN};
          s->tcp = lpcb;
          g_socks[s->id] = s;
          tcp_arg(lpcb, IdArg(s->id));
          tcp_accept(lpcb, OnAccept);
          id = s->id;
        }
      }
    }
    if (noEntropy) {
      EntropyError(env, "LwipStack.tcpListen").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (e != ERR_OK) {
      CodeError(env, "LwipStack.tcpListen", e).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, id);
  }

  // tcpWrite(id, data): bytes accepted (0 when the send buffer is full or the socket cannot send any more).
  Napi::Value TcpWrite(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!GetId(env, info, &id, "LwipStack.tcpWrite")) return env.Undefined();
    const uint8_t* data;
    size_t len;
    if (info.Length() < 2 || !GetBytes(env, info[1], &data, &len)) {
      Napi::TypeError::New(env, "LwipStack.tcpWrite: data must be a Buffer or Uint8Array").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (!CheckOpen(env, "tcpWrite")) return env.Undefined();
    size_t done = 0;
    {
      CoreLock lock;
      Sock* s = FindId(id);
      if (s && s->kind == K_TCP && s->tcp && !s->wrShut) {
        // snd_buf, not tcp_sndbuf(): the latter is capped at 64 KiB; tcp_write takes at most 64 KiB per call.
        size_t want = std::min<size_t>(len, s->tcp->snd_buf);
        while (want > 0) {
          u16_t n = static_cast<u16_t>(want > 0xffff ? 0xffff : want);
          err_t e = tcp_write(s->tcp, data + done, n, TCP_WRITE_FLAG_COPY);
          if (e == ERR_OK) {
            done += n;
            want -= n;
          } else if (e == ERR_MEM) {
            want = n / 2;  // the segment queue is full (TCP_SND_QUEUELEN): try less
          } else {
            break;
          }
        }
        if (done > 0) tcp_output(s->tcp);
      }
    }
    return Napi::Number::New(env, static_cast<double>(done));
  }

  Napi::Value TcpShutdown(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!GetId(env, info, &id, "LwipStack.tcpShutdown")) return env.Undefined();
    bool rd = info.Length() > 1 && info[1].ToBoolean().Value();
    bool wr = info.Length() > 2 && info[2].ToBoolean().Value();
    if (!CheckOpen(env, "tcpShutdown")) return env.Undefined();
    CoreLock lock;
    Sock* s = FindId(id);
    if (!s || s->kind != K_TCP || !s->tcp) return env.Undefined();
    // Done in both directions: close. (lwIP frees TIME-WAIT pcbs, and LAST-ACK pcbs whose rx side was shut,
    // without a callback: they must not stay attached.)
    if ((s->rdShut || rd) && (s->wrShut || wr)) {
      CloseSock(s, true);
      return env.Undefined();
    }
    if (rd && !s->rdShut) {
      s->rdShut = true;
      RecvedAll(s);
      tcp_shutdown(s->tcp, 1, 0);  // further data from the peer resets the connection (lwIP's behaviour)
    }
    if (wr && !s->wrShut) {
      s->wrShut = true;
      if (s->tcp->state == SYN_SENT) s->finPending = true;
      else tcp_shutdown(s->tcp, 0, 1);  // FIN after queued data. From CLOSE-WAIT (LAST-ACK) lwIP reports the end.
    }
    return env.Undefined();
  }

  Napi::Value TcpClose(const Napi::CallbackInfo& info) { return CloseOrAbort(info, false, "LwipStack.tcpClose"); }
  Napi::Value TcpAbort(const Napi::CallbackInfo& info) { return CloseOrAbort(info, true, "LwipStack.tcpAbort"); }
  Napi::Value UdpClose(const Napi::CallbackInfo& info) { return CloseOrAbort(info, false, "LwipStack.udpClose"); }

  Napi::Value CloseOrAbort(const Napi::CallbackInfo& info, bool abort, const char* what) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!GetId(env, info, &id, what)) return env.Undefined();
    if (!open_) return env.Undefined();  // everything is closed already
    CoreLock lock;
    Sock* s = FindId(id);
    if (!s) return env.Undefined();
    if (abort) AbortSock(s, true);
    else CloseSock(s, true);
    return env.Undefined();
  }

  Napi::Value TcpRecved(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!GetId(env, info, &id, "LwipStack.tcpRecved")) return env.Undefined();
    double d = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d <= 4294967295.0) || d != static_cast<double>(static_cast<uint32_t>(d))) {
      Napi::RangeError::New(env, "LwipStack.tcpRecved: n must be a non-negative integer").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (!CheckOpen(env, "tcpRecved")) return env.Undefined();
    CoreLock lock;
    Sock* s = FindId(id);
    if (!s || s->kind != K_TCP || !s->tcp) return env.Undefined();
    uint32_t n = static_cast<uint32_t>(d);
    if (n > s->unrecved) n = s->unrecved;
    s->unrecved -= n;
    while (n > 0) {
      u16_t c = static_cast<u16_t>(n > 0xffff ? 0xffff : n);
      tcp_recved(s->tcp, c);
      n -= c;
    }
    return env.Undefined();
  }

  Napi::Value TcpNoDelay(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!GetId(env, info, &id, "LwipStack.tcpNoDelay")) return env.Undefined();
    bool on = info.Length() < 2 || info[1].ToBoolean().Value();
    if (!CheckOpen(env, "tcpNoDelay")) return env.Undefined();
    CoreLock lock;
    Sock* s = FindId(id);
    if (s && s->kind == K_TCP && s->tcp) {
      if (on) tcp_nagle_disable(s->tcp);
      else tcp_nagle_enable(s->tcp);
    }
    return env.Undefined();
  }

  Napi::Value LocalAddress(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!GetId(env, info, &id, "LwipStack.localAddress")) return env.Undefined();
    if (!open_) return env.Undefined();
    std::string text;
    {
      CoreLock lock;
      Sock* s = FindId(id);
      if (s && s->tcp) text = AddrText(&s->tcp->local_ip, s->tcp->local_port);
      else if (s && s->udp) text = AddrText(&s->udp->local_ip, s->udp->local_port);
    }
    if (text.empty()) return env.Undefined();
    return Napi::String::New(env, text);
  }

  Napi::Value UdpBind(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ip_addr_t ip;
    u16_t port;
    if (!GetIpPort(env, info, 0, &ip, &port, "LwipStack.udpBind")) return env.Undefined();
    DualStack(info, 2, &ip);
    if (!CheckOpen(env, "udpBind")) return env.Undefined();
    err_t e = ERR_OK;
    bool noEntropy = port == 0 && g_entropyFailed.load();
    uint32_t id = 0;
    if (!noEntropy) {
      CoreLock lock;
      udp_pcb* pcb = udp_new_ip_type(IP_GET_TYPE(&ip));
      if (!pcb) {
        e = ERR_MEM;
      } else {
        // Port 0: a random port, so that e.g. each DNS query (dns.ts binds a fresh socket per query) has its own.
        auto bind = [&](u16_t p) { return udp_bind(pcb, &ip, p); };
        e = port != 0 ? bind(port) : BindRandomPort(bind, &noEntropy);
        if (e != ERR_OK) {
          udp_remove(pcb);
        } else {
          auto* s = new Sock{g_nextId++, K_UDP};
          s->udp = pcb;
          g_socks[s->id] = s;
          udp_recv(pcb, OnUdpRecv, IdArg(s->id));
          id = s->id;
        }
      }
    }
    if (noEntropy) {
      EntropyError(env, "LwipStack.udpBind").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (e != ERR_OK) {
      CodeError(env, "LwipStack.udpBind", e).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, id);
  }

  // udpSend(id, data, ip, port): true when lwIP took the datagram.
  Napi::Value UdpSend(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    if (!GetId(env, info, &id, "LwipStack.udpSend")) return env.Undefined();
    const uint8_t* data;
    size_t len;
    if (info.Length() < 2 || !GetBytes(env, info[1], &data, &len)) {
      Napi::TypeError::New(env, "LwipStack.udpSend: data must be a Buffer or Uint8Array").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (len > 0xffff - 28) {
      Napi::RangeError::New(env, "LwipStack.udpSend: datagram larger than 65507 bytes").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    ip_addr_t ip;
    u16_t port;
    if (!GetIpPort(env, info, 2, &ip, &port, "LwipStack.udpSend")) return env.Undefined();
    if (!CheckOpen(env, "udpSend")) return env.Undefined();
    bool ok = false;
    {
      CoreLock lock;
      Sock* s = FindId(id);
      if (s && s->kind == K_UDP && s->udp && FamilyLeased(&ip)) {
        pbuf* p = pbuf_alloc(PBUF_TRANSPORT, static_cast<u16_t>(len), PBUF_RAM);
        if (p) {
          memcpy(p->payload, data, len);
          ok = udp_sendto(s->udp, p, &ip, port) == ERR_OK;
          pbuf_free(p);
        }
      }
    }
    if (!ok) udpTxErrors_++;
    return Napi::Boolean::New(env, ok);
  }

  // ping(ip, seq, size = 56): sends an ICMP echo request; replies arrive as "pong" events (id 0, n = seq).
  Napi::Value Ping(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    ip_addr_t ip;
    if (info.Length() < 2 || !info[0].IsString() || !ParseIp4(info[0].As<Napi::String>().Utf8Value(), &ip)) {
      Napi::TypeError::New(env, "LwipStack.ping: ip must be an IPv4 address string").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    double seq = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
    if (!(seq >= 0 && seq <= 65535) || seq != static_cast<double>(static_cast<int>(seq))) {
      Napi::RangeError::New(env, "LwipStack.ping: seq must be an integer from 0 to 65535").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    double size = 56;
    if (info.Length() > 2 && !info[2].IsUndefined()) {
      size = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : -1;
      if (!(size >= 0 && size <= 1400) || size != static_cast<double>(static_cast<int>(size))) {
        Napi::RangeError::New(env, "LwipStack.ping: size must be an integer from 0 to 1400")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    if (!CheckOpen(env, "ping")) return env.Undefined();
    bool ok = false;
    {
      CoreLock lock;
      if (!g_ping) {
        g_ping = raw_new_ip_type(IPADDR_TYPE_V4, IP_PROTO_ICMP);
        if (g_ping) {
          raw_recv(g_ping, OnRawIcmp, nullptr);
          raw_bind(g_ping, IP4_ADDR_ANY);
        }
      }
      u16_t total = static_cast<u16_t>(sizeof(struct icmp_echo_hdr) + static_cast<size_t>(size));
      pbuf* p = g_ping ? pbuf_alloc(PBUF_IP, total, PBUF_RAM) : nullptr;
      if (p) {
        auto* h = static_cast<struct icmp_echo_hdr*>(p->payload);
        h->type = ICMP_ECHO;
        h->code = 0;
        h->chksum = 0;
        h->id = lwip_htons(kPingIdent);
        h->seqno = lwip_htons(static_cast<u16_t>(seq));
        auto* body = static_cast<uint8_t*>(p->payload) + sizeof(struct icmp_echo_hdr);
        for (size_t i = 0; i < static_cast<size_t>(size); i++) body[i] = static_cast<uint8_t>(i);
        h->chksum = inet_chksum(p->payload, total);
        ok = raw_sendto(g_ping, p, &ip) == ERR_OK;
        pbuf_free(p);
      }
    }
    return Napi::Boolean::New(env, ok);
  }

  Napi::Value Ref(const Napi::CallbackInfo& info) {
    refed_ = true;
    if (async_) uv_ref(reinterpret_cast<uv_handle_t*>(async_));
    return info.Env().Undefined();
  }

  Napi::Value Unref(const Napi::CallbackInfo& info) {
    refed_ = false;
    if (async_) uv_unref(reinterpret_cast<uv_handle_t*>(async_));
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    auto set = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
    set("rxPackets", static_cast<double>(rxPackets_));
    set("rxBytes", static_cast<double>(rxBytes_));
    set("rxDropped", static_cast<double>(rxDropped_));
    set("rxProtoDropped", static_cast<double>(rxProtoDropped_));
    set("rx6Filtered", static_cast<double>(rx6Filtered_));
    set("tx6Filtered", static_cast<double>(g_tx6Filtered.load()));
    set("txNoFamily", static_cast<double>(g_txNoFamily.load()));
    {
      std::lock_guard<std::mutex> g(g_q->mu);
      set("txPackets", static_cast<double>(g_q->txPackets));
      set("txBytes", static_cast<double>(g_q->txBytes));
      set("txDropped", static_cast<double>(g_q->txDropped));
      set("queuedPackets", static_cast<double>(g_q->outLens.size()));
      set("queuedEvents", static_cast<double>(g_q->events.size()));
      set("asyncWakeups", static_cast<double>(g_q->asyncWakeups));
    }
    set("outputBatches", static_cast<double>(outputBatches_));
    set("eventBatches", static_cast<double>(eventBatches_));
    set("events", static_cast<double>(events_));
    set("udpTxErrors", static_cast<double>(udpTxErrors_));
    set("flushes", static_cast<double>(flushes_));
    set("issHook", static_cast<double>(g_issCalls.load()));
    set("entropyFailures", static_cast<double>(g_entropyFailures.load()));
    if (open_) {
      CoreLock lock;
      double tcp = 0, listen = 0, udp = 0, active = 0, tw = 0, lpcbs = 0, upcbs = 0;
      for (auto& kv : g_socks) {
        if (kv.second->kind == K_TCP) tcp++;
        else if (kv.second->kind == K_LISTEN) listen++;
        else udp++;
      }
      for (tcp_pcb* p = tcp_active_pcbs; p; p = p->next) active++;
      for (tcp_pcb* p = tcp_tw_pcbs; p; p = p->next) tw++;
      for (tcp_pcb_listen* p = tcp_listen_pcbs.listen_pcbs; p; p = p->next) lpcbs++;
      for (udp_pcb* p = udp_pcbs; p; p = p->next) upcbs++;
      set("tcpSockets", tcp);
      set("tcpListeners", listen);
      set("udpSockets", udp);
      set("pcbActive", active);
      set("pcbTimeWait", tw);
      set("pcbListen", lpcbs);
      set("pcbUdp", upcbs);
      set("mtu", g_netif.mtu);
      set("mss", std::min<int>(TCP_MSS, g_netif.mtu - 40));
      set("mss6", std::min<int>(TCP_MSS, g_netif.mtu6 - 60));
    }
    struct mallinfo2 mi = mallinfo2();
    set("mallocInUse", static_cast<double>(mi.uordblks));  // whole process (lwIP allocates with malloc)
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!open_) return env.Undefined();
    // Abort every connection (their RSTs are handed to onOutput right away), then tear down.
    {
      CoreLock lock;
      std::vector<Sock*> all;
      for (auto& kv : g_socks) all.push_back(kv.second);
      for (Sock* s : all) AbortSock(s, false);
    }
    {
      std::lock_guard<std::mutex> g(g_q->mu);
      g_q->events.clear();
      g_q->evData.len = 0;
    }
    {
      Napi::HandleScope scope(env);
      DeliverOutput(env);
    }
    Teardown();
    onOutput_.Reset();
    onEvents_.Reset();
    Napi::ObjectWrap<LwipHandle>::Unref();
    return env.Undefined();
  }

  // flush(): delivers what is queued now (output, then events), as the event loop would on its next turn.
  Napi::Value Flush(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (open_) {
      flushes_++;
      Drain();
    }
    return env.Undefined();
  }

  static void OnAsync(uv_async_t* h) {
    auto* self = static_cast<LwipHandle*>(h->data);
    if (self && self->async_ == h) self->Drain();
  }

  // Raw N-API with every status checked: the async handle can fire while Node tears the environment down (at exit,
  // before cleanup hooks run), when JS can no longer be called; then nothing is delivered and nothing throws.
  // Not re-entrant: a JS callback (or the microtasks Node runs when the outermost callback returns) may call flush();
  // that inner call only asks the running Drain to go round once more, so the spare areas are never overwritten.
  void Drain() {
    if (draining_) {
      drainAgain_ = true;
      return;
    }
    draining_ = true;
    napi_env env = env_;
    do {
      drainAgain_ = false;
      napi_handle_scope scope;
      if (napi_open_handle_scope(env, &scope) != napi_ok) break;
      napi_value self;
      if (napi_get_reference_value(env, SelfRef(), &self) == napi_ok && self) {
        if (DeliverOutput(env) && open_) DeliverEvents(env);
      }
      napi_close_handle_scope(env, scope);
    } while (drainAgain_ && open_);
    draining_ = false;
  }
  bool draining_ = false, drainAgain_ = false;

  napi_ref SelfRef() { return static_cast<napi_ref>(static_cast<Napi::Reference<Napi::Object>&>(*this)); }

  static bool Ok(napi_env env, napi_status st) {
    if (st == napi_ok) return true;
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value ignored;
      napi_get_and_clear_last_exception(env, &ignored);
    }
    return false;
  }

  bool SetProp(napi_env env, napi_value obj, const char* key, napi_value v) {
    return Ok(env, napi_set_named_property(env, obj, key, v));
  }

  // Hands every queued event to onEvents(meta, data, strings) in one call, packed rather than as objects (building
  // objects property by property through N-API cost more than the events' handling): meta holds 4 numbers per
  // event: id, type (| kHasData, | kHasStrings, | kErr* for errors), n (sent, pong), child (accept) or err_t (error),
  // payload length; the payloads are back to back in `data` (one Buffer, or undefined); events flagged kHasStrings
  // take the next two entries of `strings` (remote, local; "" when absent).
  static constexpr uint32_t kHasData = 0x100, kHasStrings = 0x200;
  bool DeliverEvents(napi_env env) {
    std::vector<Event> evs;
    Bytes data;
    {
      std::lock_guard<std::mutex> g(g_q->mu);
      evs.swap(g_q->events);
      g_q->events.swap(spareEvents_);
      data = g_q->evData;
      g_q->evData = spareData_;
      g_q->evData.len = 0;
      spareData_ = Bytes{};
    }
    bool ok = true;
    if (!evs.empty() && !onEvents_.IsEmpty()) {
      eventBatches_++;
      events_ += evs.size();
      ok = DeliverPacked(env, evs, data);
    }
    evs.clear();
    if (!open_) {  // closed from the callback
      data.Release();
      return false;
    }
    data.len = 0;
    spareData_ = data;
    spareEvents_.swap(evs);
    return ok;
  }

  bool DeliverPacked(napi_env env, std::vector<Event>& evs, const Bytes& data) {
    napi_value meta, ab, buf, strs, argv[3];
    void* m = nullptr;
    size_t n = evs.size();
    if (!Ok(env, napi_create_arraybuffer(env, n * 4 * sizeof(uint32_t), &m, &ab)) ||
        !Ok(env, napi_create_typedarray(env, napi_uint32_array, n * 4, ab, 0, &meta))) {
      return false;
    }
    auto* u = static_cast<uint32_t*>(m);
    uint32_t nStr = 0;
    for (size_t i = 0; i < n; i++) {
      const Event& e = evs[i];
      bool str = !e.remote.empty() || !e.local.empty();
      u[4 * i] = e.id;
      u[4 * i + 1] = static_cast<uint32_t>(e.type) | (e.hasData ? kHasData : 0) | (str ? kHasStrings : 0) |
                     (e.type == EV_ERROR ? e.errFlags : 0);
      u[4 * i + 2] = e.type == EV_ACCEPT ? e.child : e.type == EV_ERROR ? static_cast<uint32_t>(e.err) : e.n;
      u[4 * i + 3] = e.hasData ? e.dataLen : 0;
      if (str) nStr += 2;
    }
    if (data.len > 0) {
      // Payloads are in event order: the first data event's offset is 0 and each follows the previous.
      void* ignored;
      if (!Ok(env, napi_create_buffer_copy(env, data.len, data.p, &ignored, &buf))) return false;
    } else if (!Ok(env, napi_get_undefined(env, &buf))) {
      return false;
    }
    if (nStr == 0) {
      if (!Ok(env, napi_get_undefined(env, &strs))) return false;
    } else {
      if (!Ok(env, napi_create_array_with_length(env, nStr, &strs))) return false;
      uint32_t k = 0;
      for (const Event& e : evs) {
        if (e.remote.empty() && e.local.empty()) continue;
        for (const std::string* t : {&e.remote, &e.local}) {
          napi_value v;
          if (!Ok(env, napi_create_string_utf8(env, t->data(), t->size(), &v)) ||
              !Ok(env, napi_set_element(env, strs, k++, v))) {
            return false;
          }
        }
      }
    }
    argv[0] = meta;
    argv[1] = buf;
    argv[2] = strs;
    return CallJs(env, onEvents_, 3, argv);
  }

  // Hands every queued output packet to onOutput: one Buffer and one Uint32Array of lengths.
  bool DeliverOutput(napi_env env) {
    Bytes out;
    std::vector<uint32_t> lens;
    {
      std::lock_guard<std::mutex> g(g_q->mu);
      if (g_q->outLens.empty()) return true;
      // ping-pong between two areas so that neither is reallocated every batch
      out = g_q->out;
      g_q->out = spare_;
      g_q->out.len = 0;
      spare_ = Bytes{};
      lens.swap(g_q->outLens);
      g_q->outLens.swap(spareLens_);
      g_q->outLens.clear();
    }
    bool ok = true;
    if (!onOutput_.IsEmpty()) {
      outputBatches_++;
      napi_value buf, ab, la;
      void* data = nullptr;
      void* ignored = nullptr;
      ok = Ok(env, napi_create_buffer_copy(env, out.len, out.p, &ignored, &buf)) &&
           Ok(env, napi_create_arraybuffer(env, lens.size() * sizeof(uint32_t), &data, &ab));
      if (ok) {
        memcpy(data, lens.data(), lens.size() * sizeof(uint32_t));
        ok = Ok(env, napi_create_typedarray(env, napi_uint32_array, lens.size(), ab, 0, &la));
      }
      if (ok) {
        napi_value argv[2] = {buf, la};
        ok = CallJs(env, onOutput_, 2, argv);
      }
    }
    if (!open_) {  // closed from the callback
      out.Release();
      return false;
    }
    out.len = 0;
    spare_ = out;
    lens.clear();
    spareLens_.swap(lens);
    return ok;
  }

  // False when JS could not be called (environment going away). An exception thrown by the callback is reported
  // like an uncaught exception.
  bool CallJs(napi_env env, Napi::FunctionReference& fn, size_t argc, napi_value* argv) {
    if (fn.IsEmpty()) return true;
    napi_value fnv, recv, result;
    if (!Ok(env, napi_get_reference_value(env, fn, &fnv)) || !fnv) return false;
    if (!Ok(env, napi_get_reference_value(env, SelfRef(), &recv)) || !recv) {
      return false;
    }
    napi_status st = napi_make_callback(env, asyncCtx_, recv, fnv, argc, argv, &result);
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value e;
      if (napi_get_and_clear_last_exception(env, &e) == napi_ok) napi_fatal_exception(env, e);
      return false;
    }
    return st == napi_ok;
  }

  struct Slice {
    const uint8_t* data;
    size_t len;
  };

  napi_env env_;
  napi_async_context asyncCtx_ = nullptr;
  uv_async_t* async_ = nullptr;
  bool open_ = false;
  bool refed_ = true;
  bool hookAdded_ = false;
  Napi::FunctionReference onOutput_, onEvents_;
  std::vector<Slice> pending_;
  Bytes spare_, spareData_;
  std::vector<uint32_t> spareLens_;
  std::vector<Event> spareEvents_;
  uint64_t rxPackets_ = 0, rxBytes_ = 0, rxDropped_ = 0, rxProtoDropped_ = 0, rx6Filtered_ = 0;
  uint64_t outputBatches_ = 0, eventBatches_ = 0, events_ = 0, udpTxErrors_ = 0, flushes_ = 0;
};

// The options Debian compiled liblwip with (from its lwipopts.h, which this addon is built against).
Napi::Value BuildOptions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", Napi::String::New(env, LWIP_VERSION_STRING));
  auto set = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
  set("NO_SYS", NO_SYS);
  set("LWIP_TCPIP_CORE_LOCKING", LWIP_TCPIP_CORE_LOCKING);
  set("MEM_LIBC_MALLOC", MEM_LIBC_MALLOC);
  set("MEMP_MEM_MALLOC", MEMP_MEM_MALLOC);
  set("MEM_SIZE", MEM_SIZE);
  set("TCP_MSS", TCP_MSS);
  set("TCP_WND", TCP_WND);
  set("TCP_SND_BUF", TCP_SND_BUF);
  set("TCP_SND_QUEUELEN", TCP_SND_QUEUELEN);
  set("LWIP_WND_SCALE", LWIP_WND_SCALE);
  set("TCP_RCV_SCALE", TCP_RCV_SCALE);
  set("TCP_QUEUE_OOSEQ", TCP_QUEUE_OOSEQ);
  set("LWIP_TCP_SACK_OUT", LWIP_TCP_SACK_OUT);
  set("TCP_LISTEN_BACKLOG", TCP_LISTEN_BACKLOG);
  set("TCP_MAXRTX", TCP_MAXRTX);
  set("TCP_SYNMAXRTX", TCP_SYNMAXRTX);
  set("IP_REASSEMBLY", IP_REASSEMBLY);
  set("IP_FRAG", IP_FRAG);
  set("IP_FORWARD", IP_FORWARD);
  set("LWIP_IPV6", LWIP_IPV6);
  set("LWIP_NETIF_TX_SINGLE_PBUF", LWIP_NETIF_TX_SINGLE_PBUF);
  set("CHECKSUM_CHECK_TCP", CHECKSUM_CHECK_TCP);
  return o;
}

}  // namespace

void InitLwip(Napi::Env env, Napi::Object exports) {
  exports.Set("LwipHandle", LwipHandle::Define(env));
  exports.Set("lwipBuildOptions", Napi::Function::New(env, BuildOptions, "lwipBuildOptions"));
}
