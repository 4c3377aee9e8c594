// eventfd: a counter in the kernel that other processes can signal (vfio-user IRQs) and the event loop can watch.
#include "event_fd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include "errors.h"
#include "file_descriptor.h"

namespace viommu {

namespace {

Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t initial = info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 0;
  int flags = EFD_CLOEXEC | EFD_NONBLOCK | (info[1].ToBoolean() ? EFD_SEMAPHORE : 0);
  int fd = eventfd(initial, flags);
  if (fd < 0) return ThrowSystemError(env, errno, "eventfd", ""), env.Undefined();
  return FileDescriptor::Adopt(env, fd);
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FileDescriptor* fd = FileDescriptor::FromValue(env, info[0], "eventfdWrite(fd, value): fd");
  if (!fd) return env.Undefined();
  double value = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : 1;
  if (!(value >= 1 && value <= 9007199254740991.0) || value != static_cast<double>(uint64_t(value))) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE", "eventfdWrite(fd, value): value must be an integer >= 1");
    return env.Undefined();
  }
  uint64_t add = static_cast<uint64_t>(value);
  ssize_t n;
  do {
    n = write(fd->fd(), &add, sizeof add);
  } while (n < 0 && errno == EINTR);
  // EAGAIN means the counter is saturated: the reader has not caught up, and the event is still pending for it.
  if (n < 0 && errno != EAGAIN) return ThrowSystemError(env, errno, "write", "eventfd " + std::to_string(fd->fd())),
                                        env.Undefined();
  return Napi::Boolean::New(env, n == sizeof add);
}

Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FileDescriptor* fd = FileDescriptor::FromValue(env, info[0], "eventfdRead(fd): fd");
  if (!fd) return env.Undefined();
  uint64_t value = 0;
  ssize_t n;
  do {
    n = read(fd->fd(), &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, 0);
    return ThrowSystemError(env, errno, "read", "eventfd " + std::to_string(fd->fd())), env.Undefined();
  }
  if (n != sizeof value) return ThrowSystemError(env, EIO, "read", "eventfd (short read)"), env.Undefined();
  return Napi::Number::New(env, static_cast<double>(value));
}

}  // namespace

void InitEventFd(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfdCreate", Napi::Function::New(env, EventfdCreate));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead));
}

}  // namespace viommu
