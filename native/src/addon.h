// The SENG native addon: primitives Node lacks (DTLS on Node's own OpenSSL, TUN devices, batched UDP I/O, a
// userspace TCP/IP stack on Debian's liblwip, C heap statistics and trimming).
// No policy or protocol logic lives here; see src/native/*.ts for the typed wrappers and docs.
#pragma once
#include <napi.h>

void InitDtls(Napi::Env env, Napi::Object exports);
void InitTun(Napi::Env env, Napi::Object exports);
void InitUdp(Napi::Env env, Napi::Object exports);
void InitLwip(Napi::Env env, Napi::Object exports);
void InitOffload(Napi::Env env, Napi::Object exports);
void InitMem(Napi::Env env, Napi::Object exports);
void InitSteer(Napi::Env env, Napi::Object exports);
