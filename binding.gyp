{
  "targets": [
    {
      "target_name": "seng_native",
      "sources": ["native/src/addon.cc", "native/src/dtls.cc", "native/src/tun.cc", "native/src/offload.cc", "native/src/offload_hooks.cc", "native/src/udp.cc", "native/src/lwip.cc", "native/src/lwip_addr.cc", "native/src/mem.cc"],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")", "/usr/include/lwip"],
      "libraries": ["-llwip"],
      "dependencies": ["<!(node -p \"require('node-addon-api').gyp\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
