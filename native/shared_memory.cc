// memfd creation, mmap of fds with size checks, ArrayBuffers (windows) that are detached when their mapping goes
// away, and bounded pread/pwrite for files a peer could shrink under a mapping.
#include "shared_memory.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

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
                         InstanceAccessor<&Mapping::GetWindowCount>("windowCount"),
                         InstanceMethod<&Mapping::Window>("window"),
                         InstanceMethod<&Mapping::Unmap>("unmap"),
                     });
}

Mapping::Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {}

void Mapping::Attach(std::shared_ptr<MappedRange> range, bool writable, bool shared) {
  range_ = std::move(range);
  writable_ = writable;
  shared_ = shared;
  windows_.resize(WindowCount());
}

size_t Mapping::WindowCount() const { return range_ ? (range_->length + kWindowSize - 1) / kWindowSize : 0; }

Napi::Value Mapping::ExternalBuffer(Napi::Env env, size_t offset, size_t length) {
  // The finalizer's hint keeps the range alive as long as V8 holds the backing store, so a collected Mapping
  // cannot unmap memory that an ArrayBuffer still points at.
  auto* keep = new std::shared_ptr<MappedRange>(range_);
  napi_value value;
  napi_status status = napi_create_external_arraybuffer(
      env, static_cast<char*>(range_->address) + offset, length,
      [](napi_env, void*, void* hint) { delete static_cast<std::shared_ptr<MappedRange>*>(hint); }, keep, &value);
  if (status != napi_ok) {
    // Node runs the finalizer itself on some failures (lengths over its limit) and not on others, so `keep` is
    // neither used nor freed here: leaking one pointer beats the double free node-addon-api's wrapper commits.
    if (!env.IsExceptionPending()) ThrowSystemError(env, ENOMEM, "ArrayBuffer", "over a mapping");
    return env.Undefined();
  }
  return Napi::Value(env, value);
}

Napi::Value Mapping::GetBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!buffer_.IsEmpty()) return buffer_.Value();
  if (!range_ || !range_->mapped) {
    ThrowSystemError(env, EBADF, "buffer", "of an unmapped Mapping");
    return env.Undefined();
  }
  if (range_->length > kMaxBufferLength) {
    ThrowSystemError(env, EFBIG, "buffer",
                     "of a mapping of " + std::to_string(range_->length) +
                         " bytes (one ArrayBuffer holds at most 4 GiB: use window(index))");
    return env.Undefined();
  }
  Napi::Value buffer = ExternalBuffer(env, 0, range_->length);
  if (buffer.IsUndefined()) return buffer;
  buffer_ = Napi::Reference<Napi::ArrayBuffer>::New(buffer.As<Napi::ArrayBuffer>(), 1);
  return buffer;
}

Napi::Value Mapping::Window(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double requested = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(requested >= 0) || requested != static_cast<double>(static_cast<uint64_t>(requested))) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE", "window(index): index must be a non-negative integer");
    return env.Undefined();
  }
  if (!range_ || !range_->mapped) {
    ThrowSystemError(env, EBADF, "window", "of an unmapped Mapping");
    return env.Undefined();
  }
  if (requested >= static_cast<double>(windows_.size())) {
    ThrowSystemError(env, ERANGE, "window",
                     std::to_string(static_cast<uint64_t>(requested)) + " of a mapping with " +
                         std::to_string(windows_.size()) + " windows");
    return env.Undefined();
  }
  size_t index = static_cast<size_t>(requested);
  if (!windows_[index].IsEmpty()) return windows_[index].Value();
  size_t offset = index * kWindowSize;
  size_t length = std::min(kWindowSize, range_->length - offset);
  Napi::Value window = ExternalBuffer(env, offset, length);
  if (window.IsUndefined()) return window;
  windows_[index] = Napi::Reference<Napi::ArrayBuffer>::New(window.As<Napi::ArrayBuffer>(), 1);
  return window;
}

Napi::Value Mapping::GetWindowCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(windows_.size()));
}

Napi::Value Mapping::GetLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), range_ ? static_cast<double>(range_->length) : 0);
}

Napi::Value Mapping::GetMapped(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), range_ && range_->mapped);
}

Napi::Value Mapping::GetWritable(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), writable_); }

Napi::Value Mapping::GetShared(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), shared_); }

namespace {
void DetachAndForget(Napi::Reference<Napi::ArrayBuffer>& reference) {
  if (reference.IsEmpty()) return;
  Napi::ArrayBuffer buffer = reference.Value();
  if (!buffer.IsDetached()) buffer.Detach();
  reference.Reset();
}
}  // namespace

Napi::Value Mapping::Unmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!range_ || !range_->mapped) return Napi::Boolean::New(env, false);
  // Detach first: every view of every buffer reads as length 0 from now on, so JS can never reach freed memory.
  DetachAndForget(buffer_);
  for (auto& window : windows_) DetachAndForget(window);
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

// The arguments of readFile/writeFile, once checked.
struct FileRange {
  int fd;
  size_t position;
  uint8_t* bytes;
  size_t length;
  std::string target;
};

// A file a peer shares without sealing it can shrink at any moment; pread/pwrite past its end come up short or
// grow it, where an access through a mapping would raise SIGBUS. Both refuse, before moving anything, a range
// that leaves the file's current size (ENXIO), and anything but a regular file (ENODEV).
bool ReadFileRange(const Napi::CallbackInfo& info, const char* call, FileRange* out) {
  Napi::Env env = info.Env();
  std::string usage = std::string(call) + "(fd, position, bytes)";
  FileDescriptor* owner = FileDescriptor::FromValue(env, info[0], (usage + ": fd").c_str());
  if (!owner) return false;
  if (!ReadLength(env, info[1], "position", true, &out->position)) return false;
  if (!info[2].IsTypedArray()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", usage + ": bytes must be a Uint8Array");
    return false;
  }
  Napi::TypedArray array = info[2].As<Napi::TypedArray>();
  Napi::ArrayBuffer buffer = array.ArrayBuffer();
  out->fd = owner->fd();
  out->length = array.ByteLength();
  out->bytes = out->length == 0 ? nullptr : static_cast<uint8_t*>(buffer.Data()) + array.ByteOffset();
  out->target = "fd " + std::to_string(out->fd) + " at " + std::to_string(out->position) + " length " +
                std::to_string(out->length);
  struct stat st;
  if (fstat(out->fd, &st) != 0) return ThrowSystemError(env, errno, "fstat", out->target), false;
  if (!S_ISREG(st.st_mode)) return ThrowSystemError(env, ENODEV, call, out->target + " (not a regular file)"), false;
  if (out->position + out->length > static_cast<uint64_t>(st.st_size)) {
    ThrowSystemError(env, ENXIO, call, out->target + " (past the file's " + std::to_string(st.st_size) + " bytes)");
    return false;
  }
  return true;
}

Napi::Value ReadFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FileRange range;
  if (!ReadFileRange(info, "readFile", &range)) return env.Undefined();
  size_t done = 0;
  while (done < range.length) {
    ssize_t n = pread(range.fd, range.bytes + done, range.length - done, static_cast<off_t>(range.position + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ThrowSystemError(env, errno, "pread", range.target), env.Undefined();
    // The file shrank after the size check: the caller sees a short count.
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return Napi::Number::New(env, static_cast<double>(done));
}

Napi::Value WriteFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FileRange range;
  if (!ReadFileRange(info, "writeFile", &range)) return env.Undefined();
  size_t done = 0;
  while (done < range.length) {
    ssize_t n = pwrite(range.fd, range.bytes + done, range.length - done, static_cast<off_t>(range.position + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ThrowSystemError(env, errno, "pwrite", range.target), env.Undefined();
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return Napi::Number::New(env, static_cast<double>(done));
}

}  // namespace

void InitSharedMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("mapFd", Napi::Function::New(env, MapFd));
  exports.Set("readFile", Napi::Function::New(env, ReadFile));
  exports.Set("writeFile", Napi::Function::New(env, WriteFile));
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(kPageSize)));
  exports.Set("mappingWindowSize", Napi::Number::New(env, static_cast<double>(Mapping::kWindowSize)));
  exports.Set("maxMappingLength", Napi::Number::New(env, kMaxLength));
}

}  // namespace viommu
