// Error objects for failed system calls and bad arguments.
#include "errors.h"

#include <string.h>

namespace viommu {

namespace {
std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  return name ? std::string(name) : "E" + std::to_string(err);
}
}  // namespace

Napi::Error SystemError(Napi::Env env, int err, const char* syscall, const std::string& target) {
  std::string code = ErrnoName(err);
  std::string message = std::string(syscall) + (target.empty() ? "" : " " + target) + ": " + code + " (" +
                        strerror(err) + ")";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (!target.empty()) error.Set("target", Napi::String::New(env, target));
  return error;
}

void ThrowSystemError(Napi::Env env, int err, const char* syscall, const std::string& target) {
  SystemError(env, err, syscall, target).ThrowAsJavaScriptException();
}

void ThrowArgumentError(Napi::Env env, const char* code, const std::string& message) {
  Napi::TypeError error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.ThrowAsJavaScriptException();
}

void ReportPendingException(Napi::Env env) {
  if (!env.IsExceptionPending()) return;
  Napi::Error error = env.GetAndClearPendingException();
  napi_fatal_exception(env, error.Value());
}

}  // namespace viommu
