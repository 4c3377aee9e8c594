// Readiness notification for fds that JS reads itself (eventfds).
#include "fd_watch.h"

#include "errors.h"
#include "file_descriptor.h"

namespace viommu {

Napi::Function FdWatch::Define(Napi::Env env) {
  return DefineClass(env, "FdWatch", {InstanceMethod<&FdWatch::Stop>("stop")});
}

FdWatch::FdWatch(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatch>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  FileDescriptor* target = FileDescriptor::FromValue(env, info[0], "new FdWatch(fd, onReadable): fd");
  if (!target) return;
  if (!info[1].IsFunction()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "new FdWatch(fd, onReadable): onReadable must be a function");
    return;
  }
  int err = 0;
  handle_ = StartPoll(env, target->fd(), this, UV_READABLE, OnPoll, &err);
  if (!handle_) {
    ThrowSystemError(env, err, "uv_poll_start", "fd " + std::to_string(target->fd()));
    return;
  }
  target_ = target;
  target_->AddBorrower();
  targetRef_ = Napi::Persistent(info[0].As<Napi::Object>());
  onReadable_ = Napi::Persistent(info[1].As<Napi::Function>());
  asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "viommu:FdWatch");
  Ref();
}

FdWatch::~FdWatch() {
  if (!handle_) return;
  ClosePoll(handle_);
  target_->RemoveBorrower();
}

void FdWatch::OnPoll(uv_poll_t* handle, int, int) {
  auto* self = static_cast<FdWatch*>(static_cast<PollHandle*>(handle->data)->owner);
  if (!self) return;
  Napi::HandleScope scope(self->env_);
  self->onReadable_.MakeCallback(self->Value(), {}, *self->asyncContext_);
  ReportPendingException(self->env_);
}

void FdWatch::StopWatching() {
  if (!handle_) return;
  ClosePoll(handle_);
  handle_ = nullptr;
  target_->RemoveBorrower();
  target_ = nullptr;
  targetRef_.Reset();
  Unref();
}

Napi::Value FdWatch::Stop(const Napi::CallbackInfo& info) {
  bool wasActive = handle_ != nullptr;
  StopWatching();
  return Napi::Boolean::New(info.Env(), wasActive);
}

}  // namespace viommu
