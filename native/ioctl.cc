// A generic ioctl for uAPIs described in JS (iommufd, VFIO cdevs): open a device node, and pass a byte buffer as
// the ioctl argument, with the addresses of extra buffers written into the struct's pointer fields first. It moves
// bytes only: what the struct means is JS's business. It takes and returns plain fd numbers, which JS owns through
// FileDescriptor (adoptFd).
#include <errno.h>
#include <fcntl.h>
#include <napi.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "errors.h"
#include "ioctl.h"

namespace viommu {

namespace {

const double kMaxRequest = 4294967295.0;

struct PointerPatch {
  size_t offset;
  uint64_t address;
};

bool ReadBytes(Napi::Env env, Napi::Value value, const std::string& name, uint8_t** data, size_t* length) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", name + " must be a Uint8Array");
    return false;
  }
  Napi::Uint8Array array = value.As<Napi::Uint8Array>();
  *data = array.Data();
  *length = array.ByteLength();
  return true;
}

// openDevice(path): the fd number of `path` opened read-write and close-on-exec; throws a SystemCallError.
Napi::Value OpenDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "openDevice(path): path must be a string");
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd;
  do {
    fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ThrowSystemError(env, errno, "open", path), env.Undefined();
  return Napi::Number::New(env, fd);
}

// ioctl(fd, request, argument, pointers?): 0 or the ioctl's non-negative result, or -errno. `pointers` is an array
// of {offset, buffer}: the address of buffer's first byte is written as a native u64 at argument[offset] before the
// call. Every buffer stays referenced by this call's arguments until the synchronous ioctl returns.
Napi::Value Ioctl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || info[0].As<Napi::Number>().Int32Value() < 0) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "ioctl(fd, request, argument, pointers): fd must be an fd number");
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  double request = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -1;
  if (!(request >= 0) || request > kMaxRequest || request != static_cast<double>(static_cast<uint32_t>(request))) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE", "ioctl: request must be an integer in [0, 2^32)");
    return env.Undefined();
  }
  uint8_t* argument;
  size_t argumentLength;
  if (!ReadBytes(env, info[2], "ioctl: argument", &argument, &argumentLength)) return env.Undefined();

  std::vector<PointerPatch> patches;
  if (info.Length() > 3 && !info[3].IsUndefined()) {
    if (!info[3].IsArray()) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "ioctl: pointers must be an array of {offset, buffer}");
      return env.Undefined();
    }
    Napi::Array pointers = info[3].As<Napi::Array>();
    for (uint32_t i = 0; i < pointers.Length(); i++) {
      std::string where = "ioctl: pointers[" + std::to_string(i) + "]";
      Napi::Value entry = pointers.Get(i);
      if (!entry.IsObject()) {
        ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", where + " must be {offset, buffer}");
        return env.Undefined();
      }
      Napi::Value offsetValue = entry.As<Napi::Object>().Get("offset");
      double offset = offsetValue.IsNumber() ? offsetValue.As<Napi::Number>().DoubleValue() : -1;
      if (!(offset >= 0) || offset != static_cast<double>(static_cast<size_t>(offset)) ||
          static_cast<size_t>(offset) + sizeof(uint64_t) > argumentLength) {
        ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE",
                           where + ".offset must leave 8 bytes inside the argument (" +
                               std::to_string(argumentLength) + " bytes)");
        return env.Undefined();
      }
      uint8_t* data;
      size_t length;
      if (!ReadBytes(env, entry.As<Napi::Object>().Get("buffer"), where + ".buffer", &data, &length))
        return env.Undefined();
      patches.push_back({static_cast<size_t>(offset), reinterpret_cast<uint64_t>(length > 0 ? data : nullptr)});
    }
  }
  for (const PointerPatch& patch : patches) memcpy(argument + patch.offset, &patch.address, sizeof patch.address);

  int result;
  do {
    result = ioctl(fd, static_cast<unsigned long>(request), argumentLength > 0 ? argument : nullptr);
  } while (result < 0 && errno == EINTR);
  return Napi::Number::New(env, result < 0 ? -errno : result);
}

}  // namespace

void InitIoctl(Napi::Env env, Napi::Object exports) {
  exports.Set("openDevice", Napi::Function::New(env, OpenDevice));
  exports.Set("ioctl", Napi::Function::New(env, Ioctl));
}

}  // namespace viommu
