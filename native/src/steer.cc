// Steering of a multi-queue TUN by destination address (docs/DATAPATH.md): a BPF hash map address → queue and a
// sixteen-instruction socket-filter program that the kernel runs for every packet it sends into the TUN
// (TUNSETSTEERINGEBPF), so a packet for a leased address is read by the worker that owns its tunnel. Mechanism
// only: which address goes to which queue is decided in TypeScript (src/gateway/workers/pool.ts).
//
// The program is attached through a queue of our own (the ioctl needs a queue's file), which is detached at once
// (TUNSETQUEUE IFF_DETACH_QUEUE): it never receives packets and the workers' queue numbers stay 0..N-1.
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <napi.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <string>

#include "addon.h"

namespace {

long Bpf(int cmd, union bpf_attr* attr) { return ::syscall(__NR_bpf, cmd, attr, sizeof *attr); }

Napi::Error SysError(Napi::Env env, const char* what, int err, const std::string& extra = "") {
  Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + strerror(err) + extra);
  e.Set("syscall", Napi::String::New(env, what));
  e.Set("errno", Napi::Number::New(env, err));
  return e;
}

bpf_insn Insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  bpf_insn i;
  memset(&i, 0, sizeof i);
  i.code = code;
  i.dst_reg = dst;
  i.src_reg = src;
  i.off = off;
  i.imm = imm;
  return i;
}

class SteerHandle : public Napi::ObjectWrap<SteerHandle> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "SteerHandle",
                       {InstanceMethod<&SteerHandle::Set>("set"), InstanceMethod<&SteerHandle::Delete>("delete"),
                        InstanceMethod<&SteerHandle::Close>("close")});
  }

  // new SteerHandle(tunName: string, flags: number (the TUNSETIFF flags the queues were opened with), maxEntries)
  explicit SteerHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SteerHandle>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber()) {
      Napi::TypeError::New(env, "SteerHandle(name, flags, maxEntries)").ThrowAsJavaScriptException();
      return;
    }
    std::string name = info[0].As<Napi::String>().Utf8Value();
    if (name.empty() || name.size() >= IFNAMSIZ) {
      Napi::TypeError::New(env, "SteerHandle: bad interface name").ThrowAsJavaScriptException();
      return;
    }
    int flags = info[1].As<Napi::Number>().Int32Value();
    uint32_t maxEntries = info[2].As<Napi::Number>().Uint32Value();

    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_type = BPF_MAP_TYPE_HASH;
    a.key_size = 4;
    a.value_size = 4;
    a.max_entries = maxEntries ? maxEntries : 1;
    map_ = static_cast<int>(Bpf(BPF_MAP_CREATE, &a));
    if (map_ < 0) {
      SysError(env, "bpf(BPF_MAP_CREATE)", errno).ThrowAsJavaScriptException();
      return;
    }
    // IPv4 only: r0 = queue of map[ip.daddr] (host order), 0 when absent or not IPv4.
    bpf_insn prog[] = {
        Insn(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),       // r6 = skb (LD_ABS reads through r6)
        Insn(BPF_LD | BPF_ABS | BPF_B, 0, 0, 0, 0),          // r0 = version/IHL byte
        Insn(BPF_ALU64 | BPF_RSH | BPF_K, 0, 0, 0, 4),       // r0 >>= 4
        Insn(BPF_JMP | BPF_JNE | BPF_K, 0, 0, 10, 4),        // not IPv4 → queue 0
        Insn(BPF_LD | BPF_ABS | BPF_W, 0, 0, 0, 16),         // r0 = destination address
        Insn(BPF_STX | BPF_MEM | BPF_W, 10, 0, -4, 0),       // key on the stack
        Insn(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),      // r2 = &key
        Insn(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -4),
        Insn(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map_),  // r1 = map
        Insn(0, 0, 0, 0, 0),
        Insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        Insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 2, 0),         // absent → queue 0
        Insn(BPF_LDX | BPF_MEM | BPF_W, 0, 0, 0, 0),         // r0 = queue
        Insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        Insn(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0),
        Insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    static char license[] = "GPL";
    static char log[4096];
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
    a.insns = reinterpret_cast<uint64_t>(prog);
    a.insn_cnt = sizeof prog / sizeof prog[0];
    a.license = reinterpret_cast<uint64_t>(license);
    a.log_buf = reinterpret_cast<uint64_t>(log);
    a.log_size = sizeof log;
    a.log_level = 1;
    log[0] = 0;
    prog_ = static_cast<int>(Bpf(BPF_PROG_LOAD, &a));
    if (prog_ < 0) {
      int err = errno;
      Cleanup();
      SysError(env, "bpf(BPF_PROG_LOAD)", err, std::string(" (verifier: ") + log + ")")
          .ThrowAsJavaScriptException();
      return;
    }
    queue_ = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (queue_ < 0) {
      int err = errno;
      Cleanup();
      SysError(env, "open(/dev/net/tun)", err).ThrowAsJavaScriptException();
      return;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = static_cast<short>(flags | IFF_MULTI_QUEUE);
    memcpy(ifr.ifr_name, name.data(), name.size());
    const char* what = nullptr;
    if (::ioctl(queue_, TUNSETIFF, &ifr) < 0) what = "ioctl(TUNSETIFF)";
    else if (::ioctl(queue_, TUNSETSTEERINGEBPF, &prog_) < 0) what = "ioctl(TUNSETSTEERINGEBPF)";
    else {
      memset(&ifr, 0, sizeof ifr);
      ifr.ifr_flags = IFF_DETACH_QUEUE;
      if (::ioctl(queue_, TUNSETQUEUE, &ifr) < 0) what = "ioctl(TUNSETQUEUE)";
    }
    if (what) {
      int err = errno;
      Cleanup();
      SysError(env, what, err).ThrowAsJavaScriptException();
    }
  }

  ~SteerHandle() override { Cleanup(); }

 private:
  void Cleanup() {
    for (int* fd : {&queue_, &prog_, &map_})
      if (*fd >= 0) {
        ::close(*fd);
        *fd = -1;
      }
  }

  // set(address: number, queue: number): boolean
  Napi::Value Set(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (map_ < 0) return Napi::Boolean::New(env, false);
    uint32_t key = info[0].As<Napi::Number>().Uint32Value();
    uint32_t value = info[1].As<Napi::Number>().Uint32Value();
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_fd = map_;
    a.key = reinterpret_cast<uint64_t>(&key);
    a.value = reinterpret_cast<uint64_t>(&value);
    a.flags = BPF_ANY;
    return Napi::Boolean::New(env, Bpf(BPF_MAP_UPDATE_ELEM, &a) == 0);
  }

  // delete(address: number): boolean
  Napi::Value Delete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (map_ < 0) return Napi::Boolean::New(env, false);
    uint32_t key = info[0].As<Napi::Number>().Uint32Value();
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_fd = map_;
    a.key = reinterpret_cast<uint64_t>(&key);
    return Napi::Boolean::New(env, Bpf(BPF_MAP_DELETE_ELEM, &a) == 0);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Cleanup();
    return info.Env().Undefined();
  }

  int map_ = -1;
  int prog_ = -1;
  int queue_ = -1;
};

}  // namespace

void InitSteer(Napi::Env env, Napi::Object exports) { exports.Set("SteerHandle", SteerHandle::Define(env)); }
