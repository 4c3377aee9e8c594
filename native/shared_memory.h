// Shared memory: memfd regions and mappings of received fds handed to JS as ArrayBuffers without copying.
#pragma once
#include <napi.h>

#include <memory>

namespace viommu {

// The mmap'd range; shared between the Mapping object and its ArrayBuffer's finalizer so that whichever ends
// last unmaps, and an explicit unmap() happens exactly once.
struct MappedRange {
  void* address = nullptr;
  size_t length = 0;
  bool mapped = false;
  void Unmap();
  ~MappedRange() { Unmap(); }
};

class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Mapping(const Napi::CallbackInfo& info);

  void Attach(std::shared_ptr<MappedRange> range, bool writable, bool shared);

 private:
  Napi::Value GetBuffer(const Napi::CallbackInfo& info);
  Napi::Value GetLength(const Napi::CallbackInfo& info);
  Napi::Value GetMapped(const Napi::CallbackInfo& info);
  Napi::Value GetWritable(const Napi::CallbackInfo& info);
  Napi::Value GetShared(const Napi::CallbackInfo& info);
  Napi::Value Unmap(const Napi::CallbackInfo& info);

  std::shared_ptr<MappedRange> range_;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
  bool writable_ = false;
  bool shared_ = false;
};

// Exposed functions: memfdCreate(name, size), mapFd(fd, offset, length, writable), pageSize().
void InitSharedMemory(Napi::Env env, Napi::Object exports);

}  // namespace viommu
