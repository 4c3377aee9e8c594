// memfd creation, mmap of fds with size checks, and ArrayBuffers that are detached when their mapping goes away.
#include "shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "addon_data.h"
#include "errors.h"
#include "file_descriptor.h"

namespace viommu {

namespace {
const long kPageSize = sysconf(_SC_PAGESIZE);
// Larger than any guest RAM region we expect, and below what a double represents exactly.
const double kMaxLength = static_cast<double>(1ull << 46);

bool ReadLength(Napi::Env env, Napi::Value value, const char* name, bool allowZero, size_t* out) {
  if (!value.IsNumber()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", std::string(name) + " must be a number");
    return false;
  }
  double v = value.As<Napi::Number>().DoubleValue();
  if (!(v >= (allowZero ? 0 : 1)) || v > kMaxLength || v != static_cast<double>(static_cast<uint64_t>(v))) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE",
                       std::string(name) + " must be an integer in [" + (allowZero ? "0" : "1") + ", 2^46]");
    return false;
  }
  *out = static_cast<size_t>(v);
  return true;
}
}  // namespace

void MappedRange::Unmap() {
  if (!mapped) return;
  munmap(address, length);
  mapped = false;
  address = nullptr;
}

Napi::Function Mapping::Define(Napi::Env env) {
  return DefineClass(env, "Mapping",
                     {
                         InstanceAccessor<&Mapping::GetBuffer>("buffer"),
                         InstanceAccessor<&Mapping::GetLength>("length"),
                         InstanceAccessor<&Mapping::GetMapped>("mapped"),
                         InstanceAccessor<&Mapping::GetWritable>("writable"),
                         InstanceAccessor<&Mapping::GetShared>("shared"),
                         InstanceMethod<&Mapping::Unmap>("unmap"),
                     });
}

Mapping::Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {}

void Mapping::Attach(std::shared_ptr<MappedRange> range, bool writable, bool shared) {
  range_ = std::move(range);
  writable_ = writable;
  shared_ = shared;
}

Napi::Value Mapping::GetBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!buffer_.IsEmpty()) return buffer_.Value();
  if (!range_ || !range_->mapped) {
    ThrowSystemError(env, EBADF, "buffer", "of an unmapped Mapping");
    return env.Undefined();
  }
  // The finalizer's hint keeps the range alive as long as V8 holds the backing store, so a collected Mapping
  // cannot unmap memory that an ArrayBuffer still points at.
  auto* hint = new std::shared_ptr<MappedRange>(range_);
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
      env, range_->address, range_->length,
      [](Napi::Env, void*, std::shared_ptr<MappedRange>* keep) { delete keep; }, hint);
  buffer_ = Napi::Reference<Napi::ArrayBuffer>::New(buffer, 1);
  return buffer;
}

Napi::Value Mapping::GetLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), range_ ? static_cast<double>(range_->length) : 0);
}

Napi::Value Mapping::GetMapped(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), range_ && range_->mapped);
}

Napi::Value Mapping::GetWritable(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), writable_); }

Napi::Value Mapping::GetShared(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), shared_); }

Napi::Value Mapping::Unmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!range_ || !range_->mapped) return Napi::Boolean::New(env, false);
  // Detach first: every view of the buffer reads as length 0 from now on, so JS can never reach freed memory.
  if (!buffer_.IsEmpty()) {
    Napi::ArrayBuffer buffer = buffer_.Value();
    if (!buffer.IsDetached()) buffer.Detach();
    buffer_.Reset();
  }
  range_->Unmap();
  return Napi::Boolean::New(env, true);
}

namespace {

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "memfdCreate(name, size): name must be a string");
    return env.Undefined();
  }
  std::string name = info[0].As<Napi::String>().Utf8Value();
  size_t size;
  if (!ReadLength(env, info[1], "size", true, &size)) return env.Undefined();
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return ThrowSystemError(env, errno, "memfd_create", "'" + name + "'"), env.Undefined();
  // Sealed against shrinking, so no process that maps it can ever see SIGBUS from a truncation.
  if (ftruncate(fd, static_cast<off_t>(size)) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0) {
    int err = errno;
    close(fd);
    return ThrowSystemError(env, err, "ftruncate", "memfd '" + name + "'"), env.Undefined();
  }
  return FileDescriptor::Adopt(env, fd);
}

Napi::Value MapFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FileDescriptor* owner = FileDescriptor::FromValue(env, info[0], "mapFd(fd, offset, length, writable): fd");
  if (!owner) return env.Undefined();
  size_t offset, length;
  if (!ReadLength(env, info[1], "offset", true, &offset) || !ReadLength(env, info[2], "length", false, &length))
    return env.Undefined();
  bool writable = info[3].ToBoolean();
  std::string target = "fd " + std::to_string(owner->fd()) + " at offset " + std::to_string(offset) + " length " +
                       std::to_string(length);
  if (offset % kPageSize != 0) return ThrowSystemError(env, EINVAL, "mmap", target + " (offset not page aligned)"),
                                      env.Undefined();
  struct stat st;
  if (fstat(owner->fd(), &st) != 0) return ThrowSystemError(env, errno, "fstat", target), env.Undefined();
  // Touching a page past the end of a file raises SIGBUS: refuse such ranges up front.
  if (!S_ISREG(st.st_mode)) return ThrowSystemError(env, ENODEV, "mmap", target + " (not a regular file or memfd)"),
                                   env.Undefined();
  if (offset + length > static_cast<uint64_t>(st.st_size))
    return ThrowSystemError(env, ENXIO, "mmap", target + " (beyond the file's " + std::to_string(st.st_size) +
                                                    " bytes)"),
           env.Undefined();
  // Node has no read-only ArrayBuffer; a JS write to a PROT_READ page would crash the process. A read-only
  // mapping is therefore private copy-on-write: the peer's memory is never modified and JS can never fault.
  int flags = writable ? MAP_SHARED : MAP_PRIVATE;
  void* address = mmap(nullptr, length, PROT_READ | PROT_WRITE, flags, owner->fd(), static_cast<off_t>(offset));
  if (address == MAP_FAILED) return ThrowSystemError(env, errno, "mmap", target), env.Undefined();
  auto range = std::make_shared<MappedRange>();
  range->address = address;
  range->length = length;
  range->mapped = true;
  Napi::Object object = GetAddonData(env).mappingConstructor.New({});
  Mapping::Unwrap(object)->Attach(std::move(range), writable, writable);
  return object;
}

}  // namespace

void InitSharedMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("mapFd", Napi::Function::New(env, MapFd));
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(kPageSize)));
}

}  // namespace viommu
