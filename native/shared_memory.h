// Shared memory: memfd regions and mappings of received fds handed to JS as ArrayBuffers without copying.
#pragma once
#include <napi.h>

#include <memory>
#include <vector>

namespace viommu {

// The mmap'd range; shared between the Mapping object and its ArrayBuffers' finalizers so that whichever ends
// last unmaps, and an explicit unmap() happens exactly once.
struct MappedRange {
  void* address = nullptr;
  size_t length = 0;
  bool mapped = false;
  void Unmap();
  ~MappedRange() { Unmap(); }
};

// Node 20 cannot back one ArrayBuffer with more than 4 GiB (node::Buffer::kMaxLength), and asking for more
// aborts the process. A mapping is therefore reached through windows of at most kWindowSize bytes each; `buffer`
// (the whole range in one ArrayBuffer) exists only for mappings that fit the limit.
class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static constexpr size_t kWindowSize = size_t{1} << 30;
  static constexpr size_t kMaxBufferLength = size_t{1} << 32;

  static Napi::Function Define(Napi::Env env);
  explicit Mapping(const Napi::CallbackInfo& info);

  void Attach(std::shared_ptr<MappedRange> range, bool writable, bool shared);

 private:
  Napi::Value GetBuffer(const Napi::CallbackInfo& info);
  Napi::Value GetLength(const Napi::CallbackInfo& info);
  Napi::Value GetMapped(const Napi::CallbackInfo& info);
  Napi::Value GetWritable(const Napi::CallbackInfo& info);
  Napi::Value GetShared(const Napi::CallbackInfo& info);
  Napi::Value GetWindowCount(const Napi::CallbackInfo& info);
  Napi::Value Window(const Napi::CallbackInfo& info);
  Napi::Value Unmap(const Napi::CallbackInfo& info);

  size_t WindowCount() const;
  // A zero-copy ArrayBuffer over [offset, offset + length) of the range that keeps the range alive.
  Napi::Value ExternalBuffer(Napi::Env env, size_t offset, size_t length);

  std::shared_ptr<MappedRange> range_;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
  // Created on first use and held until unmap() detaches them, so each window has exactly one ArrayBuffer.
  std::vector<Napi::Reference<Napi::ArrayBuffer>> windows_;
  bool writable_ = false;
  bool shared_ = false;
};

// Exposed: memfdCreate(name, size), mapFd(fd, offset, length, writable), readFile(fd, position, into),
// writeFile(fd, position, data), pageSize, mappingWindowSize, maxMappingLength.
void InitSharedMemory(Napi::Env env, Napi::Object exports);

}  // namespace viommu
