// Per-environment state of the addon: the constructors that native code needs to create JS objects.
#pragma once
#include <napi.h>

namespace viommu {

struct AddonData {
  Napi::FunctionReference fileDescriptorConstructor;
  Napi::FunctionReference mappingConstructor;
  Napi::FunctionReference kvmVcpuRunnerConstructor;
};

inline AddonData& GetAddonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace viommu
