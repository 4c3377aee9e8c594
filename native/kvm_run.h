// KvmVcpuRunner: KVM_RUN for one vCPU on a thread of its own, each exit handed to a JS callback on the event loop
// and resumed when JS answers, so the loop keeps serving sockets while the guest runs. It decodes the kvm_run
// exit fields into plain values and nothing more: what a port or an address means is JS's business.
#pragma once
#include <napi.h>

namespace viommu {

// Starts the thread for the vCPU fd (KVM_GET_VCPU_MMAP_SIZE is asked of systemFd) and returns the runner object.
// The runner never closes the fds: its owner must call StopVcpuRunner before closing them.
Napi::Value StartVcpuRunner(Napi::Env env, int systemFd, int vcpuFd, uint32_t vcpuIndex, Napi::Function onExit);

// Stops the runner's thread (kicking it out of KVM_RUN) and waits for it; harmless on a runner already stopped.
void StopVcpuRunner(Napi::Object runner);

// Registers the KvmVcpuRunner class (not constructible from JS: KvmVm.runVcpu makes them).
void InitKvmRun(Napi::Env env, Napi::Object exports);

}  // namespace viommu
