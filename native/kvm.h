// KvmVm: a KVM virtual machine: guest memory slots over JS-owned mappings, vCPUs with registers JS sets,
// KVM_TRANSLATE, a split irqchip, KVM_SIGNAL_MSI, and runner threads (kvm_run.h). x86-64 hosts only.
#pragma once
#include <napi.h>

namespace viommu {

// Exposed: the KvmVm class (`new KvmVm(devicePath?)`), on x86-64 builds only.
void InitKvm(Napi::Env env, Napi::Object exports);

}  // namespace viommu
