// FileDescriptor: the single owner of one OS file descriptor, closed exactly once (by close(), a transfer of
// ownership into another native object, or, as a last resort, garbage collection).
#pragma once
#include <napi.h>

namespace viommu {

class FileDescriptor : public Napi::ObjectWrap<FileDescriptor> {
 public:
  static Napi::Function Define(Napi::Env env);
  // Wraps an fd that the caller owns; ownership moves to the new JS object.
  static Napi::Object Adopt(Napi::Env env, int fd);
  // Returns the wrapped object or throws a TypeError naming `what` when value is not an open FileDescriptor.
  static FileDescriptor* FromValue(Napi::Env env, Napi::Value value, const char* what);

  explicit FileDescriptor(const Napi::CallbackInfo& info);
  ~FileDescriptor() override;

  int fd() const { return fd_; }
  bool isOpen() const { return fd_ >= 0; }
  // Gives up ownership: the caller now closes the returned fd. The JS object reads as closed afterwards.
  int Release();
  // Borrowers (readiness watches) pin the fd open so it cannot be closed and its number reused under them.
  void AddBorrower() { borrowers_++; }
  void RemoveBorrower() { borrowers_--; }

 private:
  Napi::Value GetFd(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Dup(const Napi::CallbackInfo& info);
  Napi::Value Size(const Napi::CallbackInfo& info);
  Napi::Value Seals(const Napi::CallbackInfo& info);
  Napi::Value Identity(const Napi::CallbackInfo& info);
  Napi::Value Describe(const Napi::CallbackInfo& info);

  int fd_ = -1;
  int borrowers_ = 0;
};

// Exposed functions: adoptFd(n), liveFileDescriptors().
void InitFileDescriptorFunctions(Napi::Env env, Napi::Object exports);

}  // namespace viommu
