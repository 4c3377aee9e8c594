// FdWatch: calls back when a borrowed fd becomes readable, on the libuv loop. The fd cannot be closed meanwhile.
#pragma once
#include <napi.h>

#include <memory>

#include "message_socket.h"

namespace viommu {

class FileDescriptor;

class FdWatch : public Napi::ObjectWrap<FdWatch> {
 public:
  static Napi::Function Define(Napi::Env env);
  // new FdWatch(fd, onReadable)
  explicit FdWatch(const Napi::CallbackInfo& info);
  ~FdWatch() override;

 private:
  static void OnPoll(uv_poll_t* handle, int status, int events);
  Napi::Value Stop(const Napi::CallbackInfo& info);
  void StopWatching();

  Napi::Env env_;
  PollHandle* handle_ = nullptr;
  FileDescriptor* target_ = nullptr;
  Napi::ObjectReference targetRef_;
  Napi::FunctionReference onReadable_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
};

}  // namespace viommu
