// eventfd creation, signalling and reading; readiness comes from FdWatch.
#pragma once
#include <napi.h>

namespace viommu {
// Exposed functions: eventfdCreate(initial, semaphore), eventfdWrite(fd, value), eventfdRead(fd).
void InitEventFd(Napi::Env env, Napi::Object exports);
}  // namespace viommu
