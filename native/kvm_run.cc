// KvmVcpuRunner: one vCPU's KVM_RUN loop on its own thread; exits go to JS through a thread-safe function and the
// thread waits for JS's answer (the bytes of an IN or an MMIO read) before it re-enters the guest.
#include "kvm_run.h"

#if defined(__x86_64__)

#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "addon_data.h"
#include "errors.h"

namespace viommu {

namespace {

// A real-time signal nothing in Node or libuv claims: it only has to make KVM_RUN return EINTR on our thread.
int KickSignal() { return SIGRTMIN + 3; }

void IgnoreKick(int) {}

void InstallKickHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action = {};
    action.sa_handler = IgnoreKick;
    sigemptyset(&action.sa_mask);
    // No SA_RESTART: the point is that the interrupted KVM_RUN returns.
    sigaction(KickSignal(), &action, nullptr);
  });
}

// What one exit carries to JS; which fields mean something depends on `reason`.
struct Exit {
  std::string reason;
  bool awaitsAnswer = false;
  bool terminal = false;
  uint64_t address = 0;  // port for io, guest-physical address for mmio
  uint32_t size = 0;
  uint32_t count = 0;
  bool write = false;
  std::vector<uint8_t> bytes;  // what the guest wrote
  uint32_t vector = 0;
  uint64_t detail = 0;  // hardware entry failure reason, internal-error suberror, system event type, raw exit reason
  int err = 0;
};

class KvmVcpuRunner : public Napi::ObjectWrap<KvmVcpuRunner> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "KvmVcpuRunner",
                       {
                           InstanceMethod<&KvmVcpuRunner::Complete>("complete"),
                           InstanceMethod<&KvmVcpuRunner::Stop>("stop"),
                           InstanceAccessor<&KvmVcpuRunner::GetRunning>("running"),
                           InstanceAccessor<&KvmVcpuRunner::GetExits>("exits"),
                       });
  }

  explicit KvmVcpuRunner(const Napi::CallbackInfo& info) : Napi::ObjectWrap<KvmVcpuRunner>(info) {}

  ~KvmVcpuRunner() override {
    // A runner is only collected after its thread was joined (it holds itself while running); this is a backstop.
    RequestStop();
    if (thread_.joinable()) thread_.join();
    UnmapRun();
  }

  bool Start(Napi::Env env, int systemFd, int vcpuFd, uint32_t vcpuIndex, Napi::Function onExit) {
    int size = ioctl(systemFd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (size < static_cast<int>(sizeof(kvm_run))) {
      ThrowSystemError(env, size < 0 ? errno : EINVAL, "ioctl(KVM_GET_VCPU_MMAP_SIZE)", "/dev/kvm");
      return false;
    }
    void* run = mmap(nullptr, static_cast<size_t>(size), PROT_READ | PROT_WRITE, MAP_SHARED, vcpuFd, 0);
    if (run == MAP_FAILED) {
      ThrowSystemError(env, errno, "mmap", "vCPU " + std::to_string(vcpuIndex) + " run structure");
      return false;
    }
    run_ = static_cast<kvm_run*>(run);
    runSize_ = static_cast<size_t>(size);
    run_->immediate_exit = 0;
    vcpuFd_ = vcpuFd;
    vcpuIndex_ = vcpuIndex;
    InstallKickHandler();
    tsfn_ = Napi::ThreadSafeFunction::New(env, onExit, "viommu-vcpu", 0, 1);
    // Held until the thread is joined: collecting a runner whose thread still runs would free what it uses.
    Ref();
    running_ = true;
    thread_ = std::thread([this] { Loop(); });
    return true;
  }

  // Asks the thread to leave the guest and end; it reports a "stopped" exit unless it already ended.
  void RequestStop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopRequested_ = true;
      if (run_ != nullptr) run_->immediate_exit = 1;
    }
    answered_.notify_all();
    if (thread_.joinable() && !threadDone_.load()) pthread_kill(thread_.native_handle(), KickSignal());
  }

  void Join() {
    if (!thread_.joinable()) return;
    thread_.join();
    UnmapRun();
  }

 private:
  void UnmapRun() {
    if (run_ == nullptr) return;
    munmap(run_, runSize_);
    run_ = nullptr;
  }

  void Loop() {
    sigset_t mask;
    sigfillset(&mask);
    sigdelset(&mask, KickSignal());
    // Process signals (SIGINT, SIGCHLD) belong to the event loop's thread, not to the guest's.
    pthread_sigmask(SIG_SETMASK, &mask, nullptr);
    for (;;) {
      if (stopRequested_.load()) {
        Finish(Terminal("stopped"));
        return;
      }
      if (ioctl(vcpuFd_, KVM_RUN, 0) < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        Exit e = Terminal("error");
        e.err = errno;
        Finish(std::move(e));
        return;
      }
      if (!HandleExit()) return;
    }
  }

  // One exit; false when the thread is done (a terminal exit was reported).
  bool HandleExit() {
    Exit e;
    switch (run_->exit_reason) {
      case KVM_EXIT_IO: {
        e.reason = "io";
        e.address = run_->io.port;
        e.size = run_->io.size;
        e.count = run_->io.count;
        e.write = run_->io.direction == KVM_EXIT_IO_OUT;
        uint8_t* data = reinterpret_cast<uint8_t*>(run_) + run_->io.data_offset;
        size_t length = static_cast<size_t>(e.size) * e.count;
        // The data area lies inside the mapping; a kernel that said otherwise would make us read past it.
        if (run_->io.data_offset + length > runSize_ || length > sizeof(answer_)) {
          Exit bad = Terminal("error");
          bad.err = EOVERFLOW;
          Finish(std::move(bad));
          return false;
        }
        if (e.write) e.bytes.assign(data, data + length);
        return Exchange(std::move(e), data, e.write ? 0 : length);
      }
      case KVM_EXIT_MMIO: {
        e.reason = "mmio";
        e.address = run_->mmio.phys_addr;
        e.size = run_->mmio.len > 8 ? 8 : run_->mmio.len;
        e.count = 1;
        e.write = run_->mmio.is_write != 0;
        if (e.write) e.bytes.assign(run_->mmio.data, run_->mmio.data + e.size);
        return Exchange(std::move(e), run_->mmio.data, e.write ? 0 : e.size);
      }
      case KVM_EXIT_IOAPIC_EOI:
        e.reason = "ioapic-eoi";
        e.vector = run_->eoi.vector;
        return Exchange(std::move(e), nullptr, 0);
      case KVM_EXIT_INTR:
        return true;
      case KVM_EXIT_HLT:
        Finish(Terminal("hlt"));
        return false;
      case KVM_EXIT_SHUTDOWN:
        Finish(Terminal("shutdown"));
        return false;
      case KVM_EXIT_FAIL_ENTRY: {
        Exit t = Terminal("fail-entry");
        t.detail = run_->fail_entry.hardware_entry_failure_reason;
        Finish(std::move(t));
        return false;
      }
      case KVM_EXIT_INTERNAL_ERROR: {
        Exit t = Terminal("internal-error");
        t.detail = run_->internal.suberror;
        Finish(std::move(t));
        return false;
      }
      case KVM_EXIT_SYSTEM_EVENT: {
        Exit t = Terminal("system-event");
        t.detail = run_->system_event.type;
        Finish(std::move(t));
        return false;
      }
      default: {
        Exit t = Terminal("unknown");
        t.detail = run_->exit_reason;
        Finish(std::move(t));
        return false;
      }
    }
  }

  static Exit Terminal(const char* reason) {
    Exit e;
    e.reason = reason;
    e.terminal = true;
    return e;
  }

  // Hands a resumable exit to JS and waits for its answer; `into` receives `length` answered bytes.
  bool Exchange(Exit e, uint8_t* into, size_t length) {
    e.awaitsAnswer = true;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      awaiting_ = true;
      hasAnswer_ = false;
      answerLength_ = length;
    }
    exits_.fetch_add(1);
    Post(new Exit(std::move(e)));
    std::unique_lock<std::mutex> lock(mutex_);
    answered_.wait(lock, [this] { return hasAnswer_ || stopRequested_.load(); });
    awaiting_ = false;
    if (!hasAnswer_) {
      lock.unlock();
      Finish(Terminal("stopped"));
      return false;
    }
    if (length > 0) memcpy(into, answer_, length);
    return true;
  }

  void Finish(Exit e) {
    threadDone_.store(true);
    Post(new Exit(std::move(e)));
    tsfn_.Release();
  }

  void Post(Exit* exit) {
    napi_status status = tsfn_.NonBlockingCall(exit, [this](Napi::Env env, Napi::Function onExit, Exit* raw) {
      std::unique_ptr<Exit> e(raw);
      if (env == nullptr) return;
      // The thread posts its terminal exit just before it returns: join it so the fds it used are free.
      if (e->terminal) Join();
      // The terminal exit is the last callback that uses this runner: only now may it be collected.
      if (e->terminal && running_) {
        running_ = false;
        Unref();
      }
      Napi::Object o = Napi::Object::New(env);
      o.Set("reason", Napi::String::New(env, e->reason));
      o.Set("vcpu", Napi::Number::New(env, vcpuIndex_));
      if (e->reason == "io" || e->reason == "mmio") {
        o.Set(e->reason == "io" ? "port" : "address", Napi::Number::New(env, static_cast<double>(e->address)));
        o.Set("size", Napi::Number::New(env, e->size));
        o.Set("count", Napi::Number::New(env, e->count));
        o.Set("write", Napi::Boolean::New(env, e->write));
        if (e->write) {
          Napi::Uint8Array bytes = Napi::Uint8Array::New(env, e->bytes.size());
          if (!e->bytes.empty()) memcpy(bytes.Data(), e->bytes.data(), e->bytes.size());
          o.Set("bytes", bytes);
        }
      } else if (e->reason == "ioapic-eoi") {
        o.Set("vector", Napi::Number::New(env, e->vector));
      } else {
        o.Set("detail", Napi::Number::New(env, static_cast<double>(e->detail)));
        if (e->err != 0) o.Set("error", SystemError(env, e->err, "ioctl(KVM_RUN)", "vCPU " + std::to_string(vcpuIndex_)).Value());
      }
      onExit.Call({o});
      ReportPendingException(env);
    });
    if (status != napi_ok) delete exit;
  }

  // complete(bytes?): answers the exit JS was handed; an IN or MMIO read needs exactly size * count bytes.
  Napi::Value Complete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::lock_guard<std::mutex> lock(mutex_);
    if (!awaiting_ || hasAnswer_) {
      ThrowArgumentError(env, "ERR_INVALID_STATE", "complete(): the vCPU is not waiting for an answer");
      return env.Undefined();
    }
    if (answerLength_ > 0) {
      if (info.Length() < 1 || !info[0].IsTypedArray() ||
          info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
        ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "complete(bytes): a read needs its bytes as a Uint8Array");
        return env.Undefined();
      }
      Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
      if (bytes.ByteLength() != answerLength_) {
        ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE",
                           "complete(bytes): the read takes " + std::to_string(answerLength_) + " bytes, got " +
                               std::to_string(bytes.ByteLength()));
        return env.Undefined();
      }
      memcpy(answer_, bytes.Data(), answerLength_);
    }
    hasAnswer_ = true;
    answered_.notify_all();
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    RequestStop();
    return info.Env().Undefined();
  }

  Napi::Value GetRunning(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), running_); }

  Napi::Value GetExits(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(exits_.load()));
  }

  kvm_run* run_ = nullptr;
  size_t runSize_ = 0;
  int vcpuFd_ = -1;
  uint32_t vcpuIndex_ = 0;
  Napi::ThreadSafeFunction tsfn_;
  std::thread thread_;
  bool running_ = false;
  std::atomic<bool> threadDone_{false};
  std::atomic<bool> stopRequested_{false};
  std::atomic<uint64_t> exits_{0};
  std::mutex mutex_;
  std::condition_variable answered_;
  bool awaiting_ = false;
  bool hasAnswer_ = false;
  size_t answerLength_ = 0;
  // The largest answer: a string IN fills at most the rest of the kvm_run page.
  uint8_t answer_[4096];
};

}  // namespace

Napi::Value StartVcpuRunner(Napi::Env env, int systemFd, int vcpuFd, uint32_t vcpuIndex, Napi::Function onExit) {
  Napi::Object runner = GetAddonData(env).kvmVcpuRunnerConstructor.New({});
  if (!KvmVcpuRunner::Unwrap(runner)->Start(env, systemFd, vcpuFd, vcpuIndex, onExit)) return env.Undefined();
  return runner;
}

void StopVcpuRunner(Napi::Object runner) {
  KvmVcpuRunner* r = KvmVcpuRunner::Unwrap(runner);
  r->RequestStop();
  r->Join();
}

void InitKvmRun(Napi::Env env, Napi::Object) {
  GetAddonData(env).kvmVcpuRunnerConstructor = Napi::Persistent(KvmVcpuRunner::Define(env));
}

}  // namespace viommu

#else

namespace viommu {
void InitKvmRun(Napi::Env, Napi::Object) {}
}  // namespace viommu

#endif
