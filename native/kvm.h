// KvmVm: a KVM virtual machine used only as an address-translation oracle: guest memory slots over JS-owned
// mappings, vCPUs whose registers JS sets, and KVM_TRANSLATE. No guest code ever runs. x86-64 hosts only.
#pragma once
#include <napi.h>

namespace viommu {

// Exposed: the KvmVm class (`new KvmVm(devicePath?)`), on x86-64 builds only.
void InitKvm(Napi::Env env, Napi::Object exports);

}  // namespace viommu
