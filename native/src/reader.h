// The one uv_poll reader of the native I/O handles (TUN devices in tun.cc, batched UDP sockets in udp.cc): the fd,
// its poll handle, pause/resume, ref/unref, close, environment teardown and the calls into JavaScript. What a
// readable fd means (read() and offload splitting, recvmmsg() and GRO) and the batch hand-off stay in the handle.
//
// CRTP: `class TunHandle : public seng_io::PollReader<TunHandle>`. The handle provides
//   static constexpr const char* kJsName;      // "Tun": prefix of error messages ("Tun.pause: ...")
//   static constexpr const char* kClosedText;  // "the TUN handle is closed"
//   static constexpr const char* kStartName;   // "onPackets": the JS method that starts the reader
//   static constexpr const char* kAsyncName;   // async resource name of the callbacks ("SengTun")
//   bool AcceptStart(const Napi::CallbackInfo&);  // checks start()'s arguments and keeps what it needs; false
//                                                 // after throwing
//   void ReadReady(Napi::Env);                     // the fd is readable: read, deliver through CallJs(onBatch_)
//   void PollError(Napi::Env, int status);         // optional: libuv reported an error (default: Fail)
//   void ReleaseStart();                           // optional: close() drops what AcceptStart kept
// and calls Opened(fd) once its fd is set up. start(onBatch, onError, ...) takes the callbacks as its first two
// arguments.
#pragma once
#include <errno.h>
#include <napi.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include <cstdint>
#include <string>
#include <vector>

namespace seng_io {

inline std::string ErrnoText(int err) {
  const char* name = strerrorname_np(err);
  return std::string(strerror(err)) + " (" + (name ? name : std::to_string(err)) + ")";
}

// An Error shaped like Node's system errors: message "syscall: text (CODE)", plus code, errno and syscall.
inline Napi::Error SysError(Napi::Env env, const char* syscall, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + ErrnoText(err));
  const char* name = strerrorname_np(err);
  e.Set("code", Napi::String::New(env, name ? name : "UNKNOWN"));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

// Errors that mean "the kernel has no room now": counted as drops, not as refusals.
inline bool IsDropErrno(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS || err == ENOMEM; }

// Bytes of a Uint8Array (Buffer included). False when v is anything else.
inline bool GetBytes(napi_env env, napi_value v, const uint8_t** data, size_t* len) {
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

template <typename T>
class PollReader : public Napi::ObjectWrap<T> {
 public:
  using Wrap = Napi::ObjectWrap<T>;

  // The reader's JS members: closed, start, pause, resume, ref, unref, close. The handle adds its own.
  static void AddReaderProps(std::vector<typename Wrap::PropertyDescriptor>& props) {
    props.push_back(Wrap::InstanceAccessor("closed", &T::GetClosed, nullptr));
    props.push_back(Wrap::InstanceMethod("start", &T::Start));
    props.push_back(Wrap::InstanceMethod("pause", &T::Pause));
    props.push_back(Wrap::InstanceMethod("resume", &T::Resume));
    props.push_back(Wrap::InstanceMethod("ref", &T::JsRef));
    props.push_back(Wrap::InstanceMethod("unref", &T::JsUnref));
    props.push_back(Wrap::InstanceMethod("close", &T::Close));
  }

 protected:
  explicit PollReader(const Napi::CallbackInfo& info) : Wrap(info), env_(info.Env()) {}

  ~PollReader() override {
    Teardown();
    if (hookAdded_) napi_remove_env_cleanup_hook(env_, &PollReader::EnvCleanup, this);
    if (asyncCtx_) napi_async_destroy(env_, asyncCtx_);
  }

  // The handle's fd is ready: from now on the reader owns it (closed by close(), GC or environment teardown).
  void Opened(int fd) {
    fd_ = fd;
    napi_add_env_cleanup_hook(env_, &PollReader::EnvCleanup, this);
    hookAdded_ = true;
  }

  bool CheckOpen(Napi::Env env, const char* what) {
    if (fd_ >= 0) return true;
    Napi::Error::New(env, std::string(T::kJsName) + "." + what + ": " + T::kClosedText).ThrowAsJavaScriptException();
    return false;
  }

  // A fatal reader error: stop reading and tell JS through onError (the handle stays open for writes and close()).
  void Fail(Napi::Env env, const char* syscall, int err) {
    StopPolling();
    paused_ = true;
    if (onError_.IsEmpty()) return;
    napi_value argv[1] = {SysError(env, syscall, err).Value()};
    CallJs(env, onError_, 1, argv);
  }

  // Calls into JS as a libuv callback would (async context, microtasks); an exception becomes uncaught.
  void CallJs(Napi::Env env, Napi::FunctionReference& fn, size_t argc, napi_value* argv) {
    if (fn.IsEmpty()) return;
    napi_value result;
    napi_value fnv = fn.Value();
    napi_make_callback(env, asyncCtx_, this->Value(), fnv, argc, argv, &result);
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      napi_fatal_exception(env, e.Value());
    }
  }

  // Defaults of the optional hooks.
  void PollError(Napi::Env env, int status) { Fail(env, "uv_poll", -status); }
  void ReleaseStart() {}

  Napi::Env env_;
  int fd_ = -1;
  bool polling_ = false;
  bool paused_ = false;
  Napi::FunctionReference onBatch_;
  Napi::FunctionReference onError_;

 private:
  friend T;

  static void EnvCleanup(void* arg) {
    auto* self = static_cast<PollReader*>(arg);
    self->hookAdded_ = false;
    self->Teardown();
  }

  // Releases the fd and the poll handle. Touches no JS (safe from finalizers and env cleanup).
  void Teardown() {
    if (poll_) {
      uv_poll_stop(poll_);
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
    polling_ = false;
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

  Napi::Value GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), fd_ < 0); }

  // While polling, the JS object is held so that a reader nobody references keeps delivering.
  void HoldJs(bool hold) {
    if (hold && !jsHeld_) {
      Wrap::Ref();
      jsHeld_ = true;
    } else if (!hold && jsHeld_) {
      Wrap::Unref();
      jsHeld_ = false;
    }
  }

  // start(onBatch, onError, ...the handle's own arguments)
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, T::kStartName)) return env.Undefined();
    if (poll_) {
      Napi::Error::New(env, std::string(T::kJsName) + "." + T::kStartName + ": a reader is already started")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (!static_cast<T*>(this)->AcceptStart(info)) return env.Undefined();
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
      Napi::Error::New(env, std::string(T::kJsName) + "." + T::kStartName + ": no event loop")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    auto* poll = new uv_poll_t;
    int rc = uv_poll_init(loop, poll, fd_);
    if (rc != 0) {
      delete poll;
      SysError(env, "uv_poll_init", -rc).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    poll->data = this;
    poll_ = poll;
    onBatch_ = Napi::Persistent(info[0].As<Napi::Function>());
    onError_ = Napi::Persistent(info[1].As<Napi::Function>());
    if (!asyncCtx_) {
      napi_value resName = Napi::String::New(env, T::kAsyncName);
      napi_async_init(env, this->Value(), resName, &asyncCtx_);
    }
    if (!refed_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    if (!paused_) StartPolling(env);
    return env.Undefined();
  }

  void StartPolling(Napi::Env env) {
    if (!poll_ || polling_) return;
    int rc = uv_poll_start(poll_, UV_READABLE, &PollReader::OnPoll);
    if (rc != 0) {
      SysError(env, "uv_poll_start", -rc).ThrowAsJavaScriptException();
      return;
    }
    polling_ = true;
    HoldJs(true);
  }

  void StopPolling() {
    if (poll_ && polling_) uv_poll_stop(poll_);
    polling_ = false;
    HoldJs(false);
  }

  Napi::Value Pause(const Napi::CallbackInfo& info) {
    if (!CheckOpen(info.Env(), "pause")) return info.Env().Undefined();
    paused_ = true;
    StopPolling();
    return info.Env().Undefined();
  }

  Napi::Value Resume(const Napi::CallbackInfo& info) {
    if (!CheckOpen(info.Env(), "resume")) return info.Env().Undefined();
    paused_ = false;
    StartPolling(info.Env());
    return info.Env().Undefined();
  }

  Napi::Value JsRef(const Napi::CallbackInfo& info) {
    refed_ = true;
    if (poll_) uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }

  Napi::Value JsUnref(const Napi::CallbackInfo& info) {
    refed_ = false;
    if (poll_) uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) return env.Undefined();  // closing twice is harmless
    StopPolling();
    Teardown();
    onBatch_.Reset();
    onError_.Reset();
    static_cast<T*>(this)->ReleaseStart();
    return env.Undefined();
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<PollReader*>(handle->data);
    if (self && self->poll_ == handle) self->OnReadable(status);
  }

  void OnReadable(int status) {
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    Napi::Object keepAlive = this->Value();  // a local handle keeps this object alive through the JS callbacks
    (void)keepAlive;
    if (status < 0) {
      static_cast<T*>(this)->PollError(env, status);
    } else {
      static_cast<T*>(this)->ReadReady(env);
    }
  }

  uv_poll_t* poll_ = nullptr;
  bool refed_ = true;
  bool jsHeld_ = false;
  bool hookAdded_ = false;
  napi_async_context asyncCtx_ = nullptr;
};

}  // namespace seng_io
