// FileDescriptor ownership and the small set of generic fd operations (dup, size, seals, identity, describe).
#include "file_descriptor.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>

#include "addon_data.h"
#include "errors.h"

namespace viommu {

namespace {
// Counts FileDescriptor objects holding an open fd, so tests can tell ownership leaks from other fds.
std::atomic<int64_t> liveCount{0};

std::string FdName(int fd) { return "fd " + std::to_string(fd); }
}  // namespace

Napi::Function FileDescriptor::Define(Napi::Env env) {
  return DefineClass(env, "FileDescriptor",
                     {
                         InstanceAccessor<&FileDescriptor::GetFd>("fd"),
                         InstanceAccessor<&FileDescriptor::GetClosed>("closed"),
                         InstanceMethod<&FileDescriptor::Close>("close"),
                         InstanceMethod<&FileDescriptor::Dup>("dup"),
                         InstanceMethod<&FileDescriptor::Size>("size"),
                         InstanceMethod<&FileDescriptor::Seals>("seals"),
                         InstanceMethod<&FileDescriptor::Identity>("identity"),
                         InstanceMethod<&FileDescriptor::Describe>("describe"),
                     });
}

Napi::Object FileDescriptor::Adopt(Napi::Env env, int fd) {
  Napi::Object object = GetAddonData(env).fileDescriptorConstructor.New({});
  FileDescriptor* self = Unwrap(object);
  self->fd_ = fd;
  liveCount++;
  return object;
}

FileDescriptor* FileDescriptor::FromValue(Napi::Env env, Napi::Value value, const char* what) {
  if (value.IsObject() &&
      value.As<Napi::Object>().InstanceOf(GetAddonData(env).fileDescriptorConstructor.Value())) {
    FileDescriptor* self = Unwrap(value.As<Napi::Object>());
    if (self->isOpen()) return self;
    ThrowSystemError(env, EBADF, "use", std::string(what) + " (already closed or handed over)");
    return nullptr;
  }
  ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", std::string(what) + " must be a FileDescriptor");
  return nullptr;
}

FileDescriptor::FileDescriptor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FileDescriptor>(info) {}

FileDescriptor::~FileDescriptor() {
  // Last resort: an fd whose JS owner was collected without close() is closed here, never leaked.
  if (fd_ >= 0) {
    ::close(fd_);
    liveCount--;
  }
}

int FileDescriptor::Release() {
  int fd = fd_;
  if (fd >= 0) liveCount--;
  fd_ = -1;
  return fd;
}

Napi::Value FileDescriptor::GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

Napi::Value FileDescriptor::GetClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), fd_ < 0);
}

Napi::Value FileDescriptor::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0) return Napi::Boolean::New(env, false);
  if (borrowers_ > 0) {
    ThrowSystemError(env, EBUSY, "close", FdName(fd_) + " (still watched: stop its watch first)");
    return env.Undefined();
  }
  int fd = Release();
  // close() releases the fd even when it reports EINTR/EIO on Linux, so it is never retried.
  ::close(fd);
  return Napi::Boolean::New(env, true);
}

Napi::Value FileDescriptor::Dup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0) return ThrowSystemError(env, EBADF, "dup", "closed FileDescriptor"), env.Undefined();
  int copy = fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return ThrowSystemError(env, errno, "dup", FdName(fd_)), env.Undefined();
  return Adopt(env, copy);
}

Napi::Value FileDescriptor::Size(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct stat st;
  if (fd_ < 0) return ThrowSystemError(env, EBADF, "fstat", "closed FileDescriptor"), env.Undefined();
  if (fstat(fd_, &st) != 0) return ThrowSystemError(env, errno, "fstat", FdName(fd_)), env.Undefined();
  return Napi::Number::New(env, static_cast<double>(st.st_size));
}

Napi::Value FileDescriptor::Seals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0) return ThrowSystemError(env, EBADF, "fcntl", "closed FileDescriptor"), env.Undefined();
  int seals = fcntl(fd_, F_GET_SEALS);
  // Files that cannot carry seals (anything but memfd/shmem) answer EINVAL: they have none.
  if (seals < 0 && errno == EINVAL) return Napi::Number::New(env, 0);
  if (seals < 0) return ThrowSystemError(env, errno, "fcntl(F_GET_SEALS)", FdName(fd_)), env.Undefined();
  return Napi::Number::New(env, seals);
}

Napi::Value FileDescriptor::Identity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0) return ThrowSystemError(env, EBADF, "fstat", "closed FileDescriptor"), env.Undefined();
  struct stat st;
  if (fstat(fd_, &st) != 0) return ThrowSystemError(env, errno, "fstat", FdName(fd_)), env.Undefined();
  // The status flags belong to the open file description (shared by every fd that SCM_RIGHTS or dup made of it).
  int flags = fcntl(fd_, F_GETFL);
  if (flags < 0) return ThrowSystemError(env, errno, "fcntl(F_GETFL)", FdName(fd_)), env.Undefined();
  Napi::Object identity = Napi::Object::New(env);
  identity.Set("device", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_dev)));
  identity.Set("inode", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_ino)));
  identity.Set("flags", Napi::Number::New(env, flags));
  return identity;
}

Napi::Value FileDescriptor::Describe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (fd_ < 0) return Napi::String::New(env, "closed");
  char link[64];
  char target[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd_);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 0) return Napi::String::New(env, "unknown");
  target[n] = 0;
  return Napi::String::New(env, target);
}

void InitFileDescriptorFunctions(Napi::Env env, Napi::Object exports) {
  exports.Set("adoptFd", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                Napi::Env env = info.Env();
                if (!info[0].IsNumber()) {
                  ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "adoptFd(fd): fd must be a number");
                  return env.Undefined();
                }
                int fd = info[0].As<Napi::Number>().Int32Value();
                if (fd < 0 || fcntl(fd, F_GETFD) < 0) {
                  ThrowSystemError(env, fd < 0 ? EBADF : errno, "adopt", FdName(fd));
                  return env.Undefined();
                }
                fcntl(fd, F_SETFD, FD_CLOEXEC);
                return FileDescriptor::Adopt(env, fd);
              }));
  exports.Set("liveFileDescriptors", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                return Napi::Number::New(info.Env(), static_cast<double>(liveCount.load()));
              }));
}

}  // namespace viommu
