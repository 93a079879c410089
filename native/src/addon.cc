#include "addon.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitDtls(env, exports);
  InitTun(env, exports);
  InitUdp(env, exports);
  InitLwip(env, exports);
  InitOffload(env, exports);
  InitMem(env, exports);
  InitSteer(env, exports);
  return exports;
}

NODE_API_MODULE(seng_native, Init)
