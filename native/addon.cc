// Entry point of the native addon: registers the OS-edge classes and functions. No protocol or VT-d logic lives here.
#include <napi.h>

#include "addon_data.h"
#include "event_fd.h"
#include "fd_watch.h"
#include "file_descriptor.h"
#include "ioctl.h"
#include "kvm.h"
#include "kvm_run.h"
#include "message_socket.h"
#include "shared_memory.h"

namespace viommu {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData(data);
  Napi::Function fileDescriptor = FileDescriptor::Define(env);
  Napi::Function mapping = Mapping::Define(env);
  data->fileDescriptorConstructor = Napi::Persistent(fileDescriptor);
  data->mappingConstructor = Napi::Persistent(mapping);
  exports.Set("FileDescriptor", fileDescriptor);
  exports.Set("Mapping", mapping);
  exports.Set("MessageSocket", MessageSocket::Define(env));
  exports.Set("Listener", Listener::Define(env));
  exports.Set("FdWatch", FdWatch::Define(env));
  InitFileDescriptorFunctions(env, exports);
  InitSharedMemory(env, exports);
  InitSockets(env, exports);
  InitEventFd(env, exports);
  InitKvm(env, exports);
  InitKvmRun(env, exports);
  InitIoctl(env, exports);
  return exports;
}

}  // namespace viommu

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return viommu::Init(env, exports); }

NODE_API_MODULE(viommu_native, InitAddon)
