// Two test hooks that run the offload code (offload.cc) on plain buffers without a device: offloadSplit and
// offloadCoalesce.
#include <string.h>
#include <sys/uio.h>

#include <string>
#include <vector>

#include "addon.h"
#include "offload.h"

// ---- test hooks: the same code on plain buffers ----

namespace {

using seng_offload::kVnetHdrLen;

bool BytesOf(Napi::Value v, const uint8_t** data, size_t* len) {
  if (!v.IsTypedArray()) return false;
  Napi::TypedArray t = v.As<Napi::TypedArray>();
  if (t.TypedArrayType() != napi_uint8_array) return false;
  Napi::Uint8Array u = v.As<Napi::Uint8Array>();
  *data = u.Data();
  *len = u.ByteLength();
  return true;
}

class VectorSink : public seng_offload::Sink {
 public:
  std::vector<std::vector<uint8_t>> packets;
  uint8_t* Reserve(size_t len) override {
    packets.emplace_back(len);
    return packets.back().data();
  }
};

// offloadSplit(read: Uint8Array): Buffer[] — what the TUN reader makes of one read (virtio_net_hdr + packet).
// Throws an Error with the drop reason when the read would be dropped.
Napi::Value OffloadSplit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint8_t* data;
  size_t len;
  if (info.Length() < 1 || !BytesOf(info[0], &data, &len)) {
    Napi::TypeError::New(env, "offloadSplit(read: Uint8Array)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<uint8_t> copy(data, data + len);  // Split may modify its input
  VectorSink sink;
  seng_offload::SplitError e = seng_offload::Split(copy.data(), copy.size(), sink);
  if (e != seng_offload::SplitError::kNone) {
    Napi::Error::New(env, std::string("dropped: ") + seng_offload::SplitErrorText(e)).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array out = Napi::Array::New(env, sink.packets.size());
  for (size_t i = 0; i < sink.packets.size(); i++)
    out.Set(static_cast<uint32_t>(i), Napi::Buffer<uint8_t>::Copy(env, sink.packets[i].data(), sink.packets[i].size()));
  return out;
}

// offloadCoalesce(packets: Uint8Array[]): {data: Buffer, count: number}[] — the writes the TUN writer would make of
// the batch, each virtio_net_hdr + packet, with how many input packets went into it.
Napi::Value OffloadCoalesce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) {
    Napi::TypeError::New(env, "offloadCoalesce(packets: Uint8Array[])").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array arr = info[0].As<Napi::Array>();
  uint32_t n = arr.Length();
  std::vector<const uint8_t*> ptrs(n);
  std::vector<size_t> lens(n);
  for (uint32_t i = 0; i < n; i++) {
    if (!BytesOf(arr.Get(i), &ptrs[i], &lens[i])) {
      Napi::TypeError::New(env, "offloadCoalesce: packets[" + std::to_string(i) + "] is not a Uint8Array")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  seng_offload::Coalescer c;
  const auto& writes = c.Plan(ptrs.data(), lens.data(), n);
  Napi::Array out = Napi::Array::New(env, writes.size());
  for (size_t k = 0; k < writes.size(); k++) {
    const auto& w = writes[k];
    std::vector<uint8_t> bytes;
    for (size_t j = 0; j < w.iovCnt; j++) {
      const iovec& v = c.iovs()[w.iovOff + j];
      const uint8_t* b = static_cast<const uint8_t*>(v.iov_base);
      bytes.insert(bytes.end(), b, b + v.iov_len);
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("data", Napi::Buffer<uint8_t>::Copy(env, bytes.data(), bytes.size()));
    o.Set("count", Napi::Number::New(env, w.count));
    out.Set(static_cast<uint32_t>(k), o);
  }
  return out;
}

}  // namespace

void InitOffload(Napi::Env env, Napi::Object exports) {
  exports.Set("offloadSplit", Napi::Function::New(env, OffloadSplit, "offloadSplit"));
  exports.Set("offloadCoalesce", Napi::Function::New(env, OffloadCoalesce, "offloadCoalesce"));
}
