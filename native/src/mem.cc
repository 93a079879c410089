// The C heap (glibc malloc): how much is in use and free, and a way to hand free memory back to the kernel.
// glibc keeps memory freed in the middle of its heaps mapped (only the top of the main heap is trimmed on free), so
// after a burst of transient allocations the process's RSS overstates what is live until malloc_trim runs.
#include <napi.h>

#include "addon.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace {

/** {inUse, free, mmapped} bytes of the C heap (all arenas), or null where the C library cannot tell. */
Napi::Value MallocInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  struct mallinfo2 m = mallinfo2();
  Napi::Object o = Napi::Object::New(env);
  o.Set("inUse", Napi::Number::New(env, static_cast<double>(m.uordblks + m.hblkhd)));
  o.Set("free", Napi::Number::New(env, static_cast<double>(m.fordblks)));
  o.Set("mmapped", Napi::Number::New(env, static_cast<double>(m.hblkhd)));
  return o;
#else
  return env.Null();
#endif
}

/**
 * malloc_trim(0): returns the free pages of every arena to the kernel (madvise), keeping the mappings. Returns
 * whether anything was released, or null where the C library has no such call. Its cost grows with the heap
 * (it walks the free lists of every arena).
 */
Napi::Value TrimMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#ifdef __GLIBC__
  return Napi::Boolean::New(env, malloc_trim(0) == 1);
#else
  return env.Null();
#endif
}

}  // namespace

void InitMem(Napi::Env env, Napi::Object exports) {
  exports.Set("mallocInfo", Napi::Function::New(env, MallocInfo, "mallocInfo"));
  exports.Set("trimMemory", Napi::Function::New(env, TrimMemory, "trimMemory"));
}
