// Turns a failed system call into a JS Error that carries the errno name, the call and what it was done to.
#pragma once
#include <napi.h>
#include <string>

namespace viommu {

// Builds an Error with properties code ("EBADF"), errno (number), syscall and target.
Napi::Error SystemError(Napi::Env env, int err, const char* syscall, const std::string& target);

// Throws SystemError for errno, returning nothing so callers can `return ThrowSystemError(...), value;`.
void ThrowSystemError(Napi::Env env, int err, const char* syscall, const std::string& target);

// Throws a TypeError whose code is ERR_INVALID_ARG_TYPE / ERR_INVALID_ARG_VALUE, as Node's own APIs do.
void ThrowArgumentError(Napi::Env env, const char* code, const std::string& message);

// Hands an exception thrown by a JS callback invoked from the event loop to Node's uncaught-exception handling.
void ReportPendingException(Napi::Env env);

}  // namespace viommu
