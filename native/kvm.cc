// KVM ioctls for the translation oracle and the machine: open /dev/kvm, create a VM and vCPUs, give the VM guest
// memory that JS owns, get/set registers and CPUID, KVM_TRANSLATE, a split irqchip, KVM_SIGNAL_MSI, and a runner
// thread per vCPU (kvm_run.cc). It knows nothing about paging or devices: JS decides what registers and exits mean.
#include "kvm.h"

#if defined(__x86_64__)

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "errors.h"
#include "kvm_run.h"

namespace viommu {

namespace {

const long kPageSize = sysconf(_SC_PAGESIZE);
// Guest-physical addresses are at most 52 bits on x86; JS numbers hold them exactly.
const double kMaxGuestPhysical = static_cast<double>(1ull << 52);
// Far more than the oracle needs; KVM itself allows a few hundred per address space.
const uint32_t kMaxSlots = 512;
// KVM_GET_SUPPORTED_CPUID answers E2BIG until the array is large enough; current CPUs need well under 100.
const uint32_t kMaxCpuidEntries = 4096;

// <linux/kvm.h> ends kvm_cpuid2 in a flexible array that C++ lays out with 12 bytes instead of C's 8, and that
// size is encoded in the ioctl numbers: the header and the two numbers are spelled here with the C layout.
struct CpuidHeader {
  uint32_t nent;
  uint32_t padding;
};
const unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
const unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
// The other structures have fixed layouts; these sizes are the kernel's (checked against a C compile).
static_assert(sizeof(CpuidHeader) == 8 && sizeof(kvm_cpuid_entry2) == 40, "kvm_cpuid2 layout");
static_assert(sizeof(kvm_sregs) == 312 && sizeof(kvm_segment) == 24, "kvm_sregs layout");
static_assert(sizeof(kvm_translation) == 24 && sizeof(kvm_userspace_memory_region) == 32, "kvm layouts");

// A CPUID array as the ioctls take it: the header, then `count` entries.
class CpuidArray {
 public:
  explicit CpuidArray(uint32_t count)
      : bytes_(sizeof(CpuidHeader) + count * sizeof(kvm_cpuid_entry2), 0) {
    header()->nent = count;
  }
  CpuidHeader* header() { return reinterpret_cast<CpuidHeader*>(bytes_.data()); }
  kvm_cpuid_entry2* entries() { return reinterpret_cast<kvm_cpuid_entry2*>(bytes_.data() + sizeof(CpuidHeader)); }

 private:
  std::vector<unsigned char> bytes_;
};

int IoctlRetry(int fd, unsigned long request, unsigned long argument) {
  int result;
  do {
    result = ioctl(fd, request, argument);
  } while (result < 0 && errno == EINTR);
  return result;
}

int IoctlRetry(int fd, unsigned long request, void* argument) {
  return IoctlRetry(fd, request, reinterpret_cast<unsigned long>(argument));
}

bool ReadInteger(Napi::Env env, Napi::Value value, const std::string& name, double max, double* out) {
  if (!value.IsNumber()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", name + " must be a number");
    return false;
  }
  double v = value.As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > max || v != static_cast<double>(static_cast<uint64_t>(v))) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE", name + " must be an integer in [0, " +
                                                         std::to_string(static_cast<uint64_t>(max)) + "]");
    return false;
  }
  *out = v;
  return true;
}

// A 64-bit register or address: a bigint (any u64), or a safe-integer number for convenience.
bool ReadU64(Napi::Env env, Napi::Value value, const std::string& name, uint64_t* out) {
  if (value.IsBigInt()) {
    bool lossless = false;
    uint64_t v = value.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE", name + " must fit in 64 unsigned bits");
      return false;
    }
    *out = v;
    return true;
  }
  double v;
  if (!ReadInteger(env, value, name + " (a bigint or a safe integer)", 9007199254740991.0, &v)) return false;
  *out = static_cast<uint64_t>(v);
  return true;
}

bool ReadField(Napi::Env env, Napi::Object object, const char* key, const std::string& where, double max,
               double* out) {
  return ReadInteger(env, object.Get(key), where + "." + key, max, out);
}

bool ReadFlag(Napi::Env env, Napi::Object object, const char* key, const std::string& where, uint8_t* out) {
  Napi::Value value = object.Get(key);
  if (value.IsBoolean()) {
    *out = value.As<Napi::Boolean>().Value() ? 1 : 0;
    return true;
  }
  double v;
  if (!ReadInteger(env, value, where + "." + key + " (a boolean or 0/1)", 1, &v)) return false;
  *out = static_cast<uint8_t>(v);
  return true;
}

Napi::Object SegmentToJs(Napi::Env env, const kvm_segment& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(s.base)));
  o.Set("limit", Napi::Number::New(env, s.limit));
  o.Set("selector", Napi::Number::New(env, s.selector));
  o.Set("type", Napi::Number::New(env, s.type));
  o.Set("present", Napi::Boolean::New(env, s.present));
  o.Set("dpl", Napi::Number::New(env, s.dpl));
  o.Set("db", Napi::Boolean::New(env, s.db));
  o.Set("s", Napi::Boolean::New(env, s.s));
  o.Set("l", Napi::Boolean::New(env, s.l));
  o.Set("g", Napi::Boolean::New(env, s.g));
  o.Set("avl", Napi::Boolean::New(env, s.avl));
  o.Set("unusable", Napi::Boolean::New(env, s.unusable));
  return o;
}

bool SegmentFromJs(Napi::Env env, Napi::Value value, const std::string& where, kvm_segment* s) {
  if (!value.IsObject()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", where + " must be an object");
    return false;
  }
  Napi::Object o = value.As<Napi::Object>();
  uint64_t base;
  double limit, selector, type, dpl;
  if (!ReadU64(env, o.Get("base"), where + ".base", &base) ||
      !ReadField(env, o, "limit", where, 4294967295.0, &limit) ||
      !ReadField(env, o, "selector", where, 65535, &selector) || !ReadField(env, o, "type", where, 15, &type) ||
      !ReadField(env, o, "dpl", where, 3, &dpl) || !ReadFlag(env, o, "present", where, &s->present) ||
      !ReadFlag(env, o, "db", where, &s->db) || !ReadFlag(env, o, "s", where, &s->s) ||
      !ReadFlag(env, o, "l", where, &s->l) || !ReadFlag(env, o, "g", where, &s->g) ||
      !ReadFlag(env, o, "avl", where, &s->avl) || !ReadFlag(env, o, "unusable", where, &s->unusable))
    return false;
  s->base = base;
  s->limit = static_cast<uint32_t>(limit);
  s->selector = static_cast<uint16_t>(selector);
  s->type = static_cast<uint8_t>(type);
  s->dpl = static_cast<uint8_t>(dpl);
  return true;
}

Napi::Object TableToJs(Napi::Env env, const kvm_dtable& t) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(t.base)));
  o.Set("limit", Napi::Number::New(env, t.limit));
  return o;
}

bool TableFromJs(Napi::Env env, Napi::Value value, const std::string& where, kvm_dtable* t) {
  if (!value.IsObject()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", where + " must be an object");
    return false;
  }
  Napi::Object o = value.As<Napi::Object>();
  uint64_t base;
  double limit;
  if (!ReadU64(env, o.Get("base"), where + ".base", &base) || !ReadField(env, o, "limit", where, 65535, &limit))
    return false;
  t->base = base;
  t->limit = static_cast<uint16_t>(limit);
  return true;
}

struct SegmentName {
  const char* name;
  kvm_segment kvm_sregs::*member;
};
const SegmentName kSegments[] = {
    {"cs", &kvm_sregs::cs}, {"ds", &kvm_sregs::ds}, {"es", &kvm_sregs::es},  {"fs", &kvm_sregs::fs},
    {"gs", &kvm_sregs::gs}, {"ss", &kvm_sregs::ss}, {"tr", &kvm_sregs::tr}, {"ldt", &kvm_sregs::ldt},
};

struct RegisterName {
  const char* name;
  __u64 kvm_sregs::*member;
};
const RegisterName kRegisters[] = {
    {"cr0", &kvm_sregs::cr0}, {"cr2", &kvm_sregs::cr2},   {"cr3", &kvm_sregs::cr3},
    {"cr4", &kvm_sregs::cr4}, {"cr8", &kvm_sregs::cr8},   {"efer", &kvm_sregs::efer},
    {"apicBase", &kvm_sregs::apic_base},
};

struct GeneralRegisterName {
  const char* name;
  __u64 kvm_regs::*member;
};
const GeneralRegisterName kGeneralRegisters[] = {
    {"rax", &kvm_regs::rax}, {"rbx", &kvm_regs::rbx}, {"rcx", &kvm_regs::rcx},       {"rdx", &kvm_regs::rdx},
    {"rsi", &kvm_regs::rsi}, {"rdi", &kvm_regs::rdi}, {"rsp", &kvm_regs::rsp},       {"rbp", &kvm_regs::rbp},
    {"r8", &kvm_regs::r8},   {"r9", &kvm_regs::r9},   {"r10", &kvm_regs::r10},       {"r11", &kvm_regs::r11},
    {"r12", &kvm_regs::r12}, {"r13", &kvm_regs::r13}, {"r14", &kvm_regs::r14},       {"r15", &kvm_regs::r15},
    {"rip", &kvm_regs::rip}, {"rflags", &kvm_regs::rflags},
};

class KvmVm : public Napi::ObjectWrap<KvmVm> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "KvmVm",
                       {
                           InstanceAccessor<&KvmVm::GetApiVersion>("apiVersion"),
                           InstanceAccessor<&KvmVm::GetClosed>("closed"),
                           InstanceAccessor<&KvmVm::GetVcpuCount>("vcpuCount"),
                           InstanceMethod<&KvmVm::SupportedCpuid>("supportedCpuid"),
                           InstanceMethod<&KvmVm::SetUserMemoryRegion>("setUserMemoryRegion"),
                           InstanceMethod<&KvmVm::CreateVcpu>("createVcpu"),
                           InstanceMethod<&KvmVm::SetCpuid>("setCpuid"),
                           InstanceMethod<&KvmVm::GetSregs>("getSregs"),
                           InstanceMethod<&KvmVm::SetSregs>("setSregs"),
                           InstanceMethod<&KvmVm::Translate>("translate"),
                           InstanceMethod<&KvmVm::GetRegs>("getRegs"),
                           InstanceMethod<&KvmVm::SetRegs>("setRegs"),
                           InstanceMethod<&KvmVm::EnableSplitIrqchip>("enableSplitIrqchip"),
                           InstanceMethod<&KvmVm::SetTssAddress>("setTssAddress"),
                           InstanceMethod<&KvmVm::SignalMsi>("signalMsi"),
                           InstanceMethod<&KvmVm::RunVcpu>("runVcpu"),
                           InstanceMethod<&KvmVm::Close>("close"),
                       });
  }

  // new KvmVm(devicePath = "/dev/kvm"): opens the device, checks the API version and creates an empty VM.
  explicit KvmVm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<KvmVm>(info) {
    Napi::Env env = info.Env();
    std::string path = "/dev/kvm";
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      if (!info[0].IsString()) {
        ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "new KvmVm(devicePath): devicePath must be a string");
        return;
      }
      path = info[0].As<Napi::String>().Utf8Value();
    }
    int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      ThrowSystemError(env, errno, "open", path);
      return;
    }
    system_ = fd;
    int version = IoctlRetry(system_, KVM_GET_API_VERSION, 0ul);
    if (version < 0) {
      int err = errno;
      CloseAll();
      ThrowSystemError(env, err, "ioctl(KVM_GET_API_VERSION)", path);
      return;
    }
    if (version != KVM_API_VERSION) {
      CloseAll();
      ThrowSystemError(env, EPROTONOSUPPORT, "ioctl(KVM_GET_API_VERSION)",
                              path + " (API version " + std::to_string(version) + ", this addon speaks " +
                                  std::to_string(KVM_API_VERSION) + ")");
      return;
    }
    apiVersion_ = version;
    int vm = IoctlRetry(system_, KVM_CREATE_VM, 0ul);
    if (vm < 0) {
      int err = errno;
      CloseAll();
      ThrowSystemError(env, err, "ioctl(KVM_CREATE_VM)", path);
      return;
    }
    vm_ = vm;
  }

  // Last resort when JS never called close(): the fds go, and so do the references that kept guest memory mapped.
  ~KvmVm() override { CloseAll(true); }

 private:
  bool CheckOpen(Napi::Env env, const char* operation) {
    if (vm_ >= 0) return true;
    ThrowSystemError(env, EBADF, operation, "closed KvmVm");
    return false;
  }

  // The vCPU fd named by argument `index`, or -1 after throwing.
  int VcpuFd(const Napi::CallbackInfo& info, size_t index, const char* operation) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, operation)) return -1;
    double id;
    if (!ReadInteger(env, info[index], std::string(operation) + ": vcpu", 1e6, &id)) return -1;
    if (id >= vcpus_.size()) {
      ThrowSystemError(env, ENOENT, operation, "vCPU " + std::to_string(static_cast<uint64_t>(id)) +
                                                   " (this VM has " + std::to_string(vcpus_.size()) + ")");
      return -1;
    }
    return vcpus_[static_cast<size_t>(id)];
  }

  void CloseAll(bool finalizing = false) {
    // A runner thread may be inside KVM_RUN on these fds: it leaves the guest before they close. (While one runs it
    // holds this VM, so finalization only ever finds runners that have ended.)
    if (!finalizing)
      for (auto& runner : runners_)
        if (!runner.IsEmpty() && !runner.Value().IsEmpty()) StopVcpuRunner(runner.Value());
    runners_.clear();
    for (int fd : vcpus_) close(fd);
    vcpus_.clear();
    if (vm_ >= 0) close(vm_);
    if (system_ >= 0) close(system_);
    vm_ = system_ = -1;
    // Only now that the VM is gone may the memory it was given be unmapped.
    memory_.clear();
  }

  Napi::Value GetApiVersion(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), apiVersion_); }

  Napi::Value GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), vm_ < 0); }

  Napi::Value GetVcpuCount(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(vcpus_.size()));
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    bool wasOpen = vm_ >= 0;
    CloseAll();
    return Napi::Boolean::New(info.Env(), wasOpen);
  }

  Napi::Value SupportedCpuid(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "ioctl(KVM_GET_SUPPORTED_CPUID)")) return env.Undefined();
    for (uint32_t capacity = 64; capacity <= kMaxCpuidEntries; capacity *= 2) {
      CpuidArray cpuid(capacity);
      if (IoctlRetry(system_, kGetSupportedCpuid, cpuid.header()) < 0) {
        if (errno == E2BIG) continue;
        return ThrowSystemError(env, errno, "ioctl(KVM_GET_SUPPORTED_CPUID)", "/dev/kvm"), env.Undefined();
      }
      uint32_t count = cpuid.header()->nent;
      Napi::Array entries = Napi::Array::New(env, count);
      for (uint32_t i = 0; i < count; i++) {
        const kvm_cpuid_entry2& e = cpuid.entries()[i];
        Napi::Object o = Napi::Object::New(env);
        o.Set("function", Napi::Number::New(env, e.function));
        o.Set("index", Napi::Number::New(env, e.index));
        o.Set("flags", Napi::Number::New(env, e.flags));
        o.Set("eax", Napi::Number::New(env, e.eax));
        o.Set("ebx", Napi::Number::New(env, e.ebx));
        o.Set("ecx", Napi::Number::New(env, e.ecx));
        o.Set("edx", Napi::Number::New(env, e.edx));
        entries.Set(i, o);
      }
      return entries;
    }
    return ThrowSystemError(env, E2BIG, "ioctl(KVM_GET_SUPPORTED_CPUID)", "/dev/kvm"), env.Undefined();
  }

  // setUserMemoryRegion(slot, guestPhysicalAddress, buffer): the VM sees `buffer` at that address. The VM holds
  // the buffer until close, so collection cannot unmap it; a buffer detached later (its mapping unmapped) makes
  // translate refuse rather than let KVM read whatever the address space holds there by then.
  Napi::Value SetUserMemoryRegion(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* op = "ioctl(KVM_SET_USER_MEMORY_REGION)";
    if (!CheckOpen(env, op)) return env.Undefined();
    double slot, address;
    if (!ReadInteger(env, info[0], "setUserMemoryRegion(slot, guestPhysicalAddress, buffer): slot", kMaxSlots - 1,
                     &slot) ||
        !ReadInteger(env, info[1], "setUserMemoryRegion: guestPhysicalAddress", kMaxGuestPhysical - 1, &address))
      return env.Undefined();
    if (!info[2].IsArrayBuffer()) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "setUserMemoryRegion: buffer must be an ArrayBuffer");
      return env.Undefined();
    }
    Napi::ArrayBuffer buffer = info[2].As<Napi::ArrayBuffer>();
    std::string target = "slot " + std::to_string(static_cast<uint32_t>(slot));
    if (buffer.IsDetached())
      return ThrowSystemError(env, EFAULT, op, target + " (the buffer's mapping was unmapped)"), env.Undefined();
    uintptr_t data = reinterpret_cast<uintptr_t>(buffer.Data());
    size_t length = buffer.ByteLength();
    if (length == 0 || length % kPageSize != 0 || data % kPageSize != 0 ||
        static_cast<uint64_t>(address) % kPageSize != 0)
      return ThrowSystemError(env, EINVAL, op,
                              target + " (buffer start, length and guest address must be page aligned, length > 0)"),
             env.Undefined();
    uint32_t slotId = static_cast<uint32_t>(slot);
    // KVM refuses to change an existing slot's memory in place: delete it first.
    auto existing = memory_.find(slotId);
    if (existing != memory_.end()) {
      kvm_userspace_memory_region removal = {};
      removal.slot = slotId;
      if (IoctlRetry(vm_, KVM_SET_USER_MEMORY_REGION, &removal) < 0)
        return ThrowSystemError(env, errno, op, target + " (removing the old memory)"), env.Undefined();
      memory_.erase(existing);
    }
    kvm_userspace_memory_region region = {};
    region.slot = slotId;
    region.guest_phys_addr = static_cast<uint64_t>(address);
    region.memory_size = length;
    region.userspace_addr = data;
    if (IoctlRetry(vm_, KVM_SET_USER_MEMORY_REGION, &region) < 0)
      return ThrowSystemError(env, errno, op, target), env.Undefined();
    memory_.emplace(slotId, Napi::Reference<Napi::ArrayBuffer>::New(buffer, 1));
    return env.Undefined();
  }

  Napi::Value CreateVcpu(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "ioctl(KVM_CREATE_VCPU)")) return env.Undefined();
    unsigned long id = vcpus_.size();
    int fd = IoctlRetry(vm_, KVM_CREATE_VCPU, id);
    if (fd < 0) return ThrowSystemError(env, errno, "ioctl(KVM_CREATE_VCPU)", "vCPU " + std::to_string(id)),
                       env.Undefined();
    // KVM creates vCPU fds close-on-exec already; make sure of it whatever the kernel.
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    vcpus_.push_back(fd);
    return Napi::Number::New(env, static_cast<double>(id));
  }

  Napi::Value SetCpuid(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* op = "ioctl(KVM_SET_CPUID2)";
    int fd = VcpuFd(info, 0, op);
    if (fd < 0) return env.Undefined();
    if (!info[1].IsArray()) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "setCpuid(vcpu, entries): entries must be an array");
      return env.Undefined();
    }
    Napi::Array entries = info[1].As<Napi::Array>();
    uint32_t count = entries.Length();
    if (count > kMaxCpuidEntries) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE", "setCpuid: at most 4096 entries");
      return env.Undefined();
    }
    CpuidArray cpuid(count);
    const double u32 = 4294967295.0;
    for (uint32_t i = 0; i < count; i++) {
      Napi::Value value = entries.Get(i);
      std::string where = "setCpuid: entries[" + std::to_string(i) + "]";
      if (!value.IsObject()) {
        ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", where + " must be an object");
        return env.Undefined();
      }
      Napi::Object o = value.As<Napi::Object>();
      double function, index, flags, eax, ebx, ecx, edx;
      if (!ReadField(env, o, "function", where, u32, &function) || !ReadField(env, o, "index", where, u32, &index) ||
          !ReadField(env, o, "flags", where, u32, &flags) || !ReadField(env, o, "eax", where, u32, &eax) ||
          !ReadField(env, o, "ebx", where, u32, &ebx) || !ReadField(env, o, "ecx", where, u32, &ecx) ||
          !ReadField(env, o, "edx", where, u32, &edx))
        return env.Undefined();
      kvm_cpuid_entry2& e = cpuid.entries()[i];
      e.function = static_cast<uint32_t>(function);
      e.index = static_cast<uint32_t>(index);
      e.flags = static_cast<uint32_t>(flags);
      e.eax = static_cast<uint32_t>(eax);
      e.ebx = static_cast<uint32_t>(ebx);
      e.ecx = static_cast<uint32_t>(ecx);
      e.edx = static_cast<uint32_t>(edx);
    }
    if (IoctlRetry(fd, kSetCpuid2, cpuid.header()) < 0)
      return ThrowSystemError(env, errno, op, "vCPU fd " + std::to_string(fd)), env.Undefined();
    return env.Undefined();
  }

  Napi::Value GetSregs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = VcpuFd(info, 0, "ioctl(KVM_GET_SREGS)");
    if (fd < 0) return env.Undefined();
    kvm_sregs sregs;
    if (IoctlRetry(fd, KVM_GET_SREGS, &sregs) < 0)
      return ThrowSystemError(env, errno, "ioctl(KVM_GET_SREGS)", "vCPU fd " + std::to_string(fd)), env.Undefined();
    Napi::Object o = Napi::Object::New(env);
    for (const SegmentName& s : kSegments) o.Set(s.name, SegmentToJs(env, sregs.*(s.member)));
    o.Set("gdt", TableToJs(env, sregs.gdt));
    o.Set("idt", TableToJs(env, sregs.idt));
    for (const RegisterName& r : kRegisters) o.Set(r.name, Napi::BigInt::New(env, static_cast<uint64_t>(sregs.*(r.member))));
    return o;
  }

  // setSregs(vcpu, sregs): every field getSregs returns must be present; the pending-interrupt bitmap, which JS
  // never sees, keeps its current value.
  Napi::Value SetSregs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* op = "ioctl(KVM_SET_SREGS)";
    int fd = VcpuFd(info, 0, op);
    if (fd < 0) return env.Undefined();
    if (!info[1].IsObject()) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "setSregs(vcpu, sregs): sregs must be an object");
      return env.Undefined();
    }
    Napi::Object o = info[1].As<Napi::Object>();
    kvm_sregs sregs;
    if (IoctlRetry(fd, KVM_GET_SREGS, &sregs) < 0)
      return ThrowSystemError(env, errno, "ioctl(KVM_GET_SREGS)", "vCPU fd " + std::to_string(fd)), env.Undefined();
    for (const SegmentName& s : kSegments)
      if (!SegmentFromJs(env, o.Get(s.name), std::string("sregs.") + s.name, &(sregs.*(s.member))))
        return env.Undefined();
    if (!TableFromJs(env, o.Get("gdt"), "sregs.gdt", &sregs.gdt) ||
        !TableFromJs(env, o.Get("idt"), "sregs.idt", &sregs.idt))
      return env.Undefined();
    for (const RegisterName& r : kRegisters) {
      uint64_t value;
      if (!ReadU64(env, o.Get(r.name), std::string("sregs.") + r.name, &value)) return env.Undefined();
      sregs.*(r.member) = value;
    }
    if (IoctlRetry(fd, KVM_SET_SREGS, &sregs) < 0)
      return ThrowSystemError(env, errno, op, "vCPU fd " + std::to_string(fd)), env.Undefined();
    return env.Undefined();
  }

  // translate(vcpu, linearAddress): KVM's own walk of the guest's tables for that vCPU's current registers.
  Napi::Value Translate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* op = "ioctl(KVM_TRANSLATE)";
    int fd = VcpuFd(info, 0, op);
    if (fd < 0) return env.Undefined();
    uint64_t linear;
    if (!ReadU64(env, info[1], "translate(vcpu, linearAddress): linearAddress", &linear)) return env.Undefined();
    for (auto& entry : memory_) {
      if (entry.second.Value().IsDetached())
        return ThrowSystemError(env, EFAULT, op,
                                "guest memory slot " + std::to_string(entry.first) + " (its mapping was unmapped)"),
               env.Undefined();
    }
    kvm_translation translation = {};
    translation.linear_address = linear;
    if (IoctlRetry(fd, KVM_TRANSLATE, &translation) < 0)
      return ThrowSystemError(env, errno, op, "vCPU fd " + std::to_string(fd)), env.Undefined();
    Napi::Object o = Napi::Object::New(env);
    o.Set("physicalAddress", Napi::BigInt::New(env, static_cast<uint64_t>(translation.physical_address)));
    o.Set("valid", Napi::Boolean::New(env, translation.valid != 0));
    o.Set("writeable", Napi::Boolean::New(env, translation.writeable != 0));
    o.Set("usermode", Napi::Boolean::New(env, translation.usermode != 0));
    return o;
  }

  Napi::Value GetRegs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = VcpuFd(info, 0, "ioctl(KVM_GET_REGS)");
    if (fd < 0) return env.Undefined();
    kvm_regs regs;
    if (IoctlRetry(fd, KVM_GET_REGS, &regs) < 0)
      return ThrowSystemError(env, errno, "ioctl(KVM_GET_REGS)", "vCPU fd " + std::to_string(fd)), env.Undefined();
    Napi::Object o = Napi::Object::New(env);
    for (const GeneralRegisterName& r : kGeneralRegisters)
      o.Set(r.name, Napi::BigInt::New(env, static_cast<uint64_t>(regs.*(r.member))));
    return o;
  }

  // setRegs(vcpu, regs): registers missing from `regs` keep their current values.
  Napi::Value SetRegs(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* op = "ioctl(KVM_SET_REGS)";
    int fd = VcpuFd(info, 0, op);
    if (fd < 0) return env.Undefined();
    if (!info[1].IsObject()) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "setRegs(vcpu, regs): regs must be an object");
      return env.Undefined();
    }
    Napi::Object o = info[1].As<Napi::Object>();
    kvm_regs regs;
    if (IoctlRetry(fd, KVM_GET_REGS, &regs) < 0)
      return ThrowSystemError(env, errno, "ioctl(KVM_GET_REGS)", "vCPU fd " + std::to_string(fd)), env.Undefined();
    for (const GeneralRegisterName& r : kGeneralRegisters) {
      if (!o.Has(r.name) || o.Get(r.name).IsUndefined()) continue;
      uint64_t value;
      if (!ReadU64(env, o.Get(r.name), std::string("regs.") + r.name, &value)) return env.Undefined();
      regs.*(r.member) = value;
    }
    if (IoctlRetry(fd, KVM_SET_REGS, &regs) < 0)
      return ThrowSystemError(env, errno, op, "vCPU fd " + std::to_string(fd)), env.Undefined();
    return env.Undefined();
  }

  // enableSplitIrqchip(ioapicPins): local APICs in KVM, the I/O APIC left to the VMM; before any vCPU exists.
  Napi::Value EnableSplitIrqchip(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* op = "ioctl(KVM_ENABLE_CAP, KVM_CAP_SPLIT_IRQCHIP)";
    if (!CheckOpen(env, op)) return env.Undefined();
    double pins;
    if (!ReadInteger(env, info[0], "enableSplitIrqchip(ioapicPins): ioapicPins", 256, &pins)) return env.Undefined();
    kvm_enable_cap cap = {};
    cap.cap = KVM_CAP_SPLIT_IRQCHIP;
    cap.args[0] = static_cast<uint64_t>(pins);
    if (IoctlRetry(vm_, KVM_ENABLE_CAP, &cap) < 0) return ThrowSystemError(env, errno, op, "VM"), env.Undefined();
    return env.Undefined();
  }

  // setTssAddress(address): the three pages Intel's VMX needs for real-mode emulation (ignored on AMD).
  Napi::Value SetTssAddress(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* op = "ioctl(KVM_SET_TSS_ADDR)";
    if (!CheckOpen(env, op)) return env.Undefined();
    double address;
    if (!ReadInteger(env, info[0], "setTssAddress(address): address", 4294967295.0, &address)) return env.Undefined();
    if (IoctlRetry(vm_, KVM_SET_TSS_ADDR, static_cast<unsigned long>(address)) < 0)
      return ThrowSystemError(env, errno, op, "VM"), env.Undefined();
    return env.Undefined();
  }

  // signalMsi(address, data): injects an MSI into the local APICs; returns KVM's answer (> 0 delivered, 0 blocked
  // by the guest).
  Napi::Value SignalMsi(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const char* op = "ioctl(KVM_SIGNAL_MSI)";
    if (!CheckOpen(env, op)) return env.Undefined();
    uint64_t address;
    double data;
    if (!ReadU64(env, info[0], "signalMsi(address, data): address", &address) ||
        !ReadInteger(env, info[1], "signalMsi: data", 4294967295.0, &data))
      return env.Undefined();
    kvm_msi msi = {};
    msi.address_lo = static_cast<uint32_t>(address);
    msi.address_hi = static_cast<uint32_t>(address >> 32);
    msi.data = static_cast<uint32_t>(data);
    int result = IoctlRetry(vm_, KVM_SIGNAL_MSI, &msi);
    if (result < 0) return ThrowSystemError(env, errno, op, "VM"), env.Undefined();
    return Napi::Number::New(env, result);
  }

  // runVcpu(vcpu, onExit): starts the vCPU's runner thread (kvm_run.cc).
  Napi::Value RunVcpu(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = VcpuFd(info, 0, "runVcpu");
    if (fd < 0) return env.Undefined();
    if (!info[1].IsFunction()) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "runVcpu(vcpu, onExit): onExit must be a function");
      return env.Undefined();
    }
    Napi::Value runner = StartVcpuRunner(env, system_, fd, static_cast<uint32_t>(info[0].As<Napi::Number>().Uint32Value()),
                                         info[1].As<Napi::Function>());
    if (runner.IsUndefined()) return runner;
    runners_.push_back(Napi::Weak(runner.As<Napi::Object>()));
    // The runner holds this VM while its thread may use the fds.
    runner.As<Napi::Object>().Set("vm", Value());
    return runner;
  }

  int system_ = -1;
  int vm_ = -1;
  std::vector<Napi::ObjectReference> runners_;
  std::vector<int> vcpus_;
  int apiVersion_ = 0;
  std::map<uint32_t, Napi::Reference<Napi::ArrayBuffer>> memory_;
};

}  // namespace

void InitKvm(Napi::Env env, Napi::Object exports) { exports.Set("KvmVm", KvmVm::Define(env)); }

}  // namespace viommu

#else

namespace viommu {
// KVM_GET_SREGS and long mode are x86 notions: elsewhere the addon has no KvmVm and the oracle tests skip.
void InitKvm(Napi::Env, Napi::Object) {}
}  // namespace viommu

#endif
