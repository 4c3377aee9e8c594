// UNIX stream sockets for framed messages that carry fds: listen/accept/connect/socketpair, and a MessageSocket that
// receives whole messages (16-byte header, u32 total size at offset 4) with their fds on the libuv loop.
#pragma once
#include <napi.h>
#include <uv.h>

#include <deque>
#include <memory>
#include <vector>

namespace viommu {

// A uv_poll_t whose memory outlives the JS object until libuv has finished closing it.
struct PollHandle {
  uv_poll_t poll;
  void* owner;
};

// The same for a uv_timer_t.
struct TimerHandle {
  uv_timer_t timer;
  void* owner;
};

class MessageSocket : public Napi::ObjectWrap<MessageSocket> {
 public:
  static Napi::Function Define(Napi::Env env);
  // new MessageSocket(fd, { maxMessageSize, maxFds }, onMessage(bytes, fds), onClose(error | undefined))
  explicit MessageSocket(const Napi::CallbackInfo& info);
  ~MessageSocket() override;

 private:
  struct PendingSend {
    std::vector<uint8_t> bytes;
    size_t sent = 0;
    std::vector<int> fds;  // dup'd copies owned here until they leave with the first byte
  };

  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value GetPendingBytes(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);

  static void OnPoll(uv_poll_t* handle, int status, int events);
  void ReadMessages();
  void FlushSends();
  void UpdatePollEvents();
  // Ends the connection: stops polling, closes the fd and every fd still held, then reports `error` (or a clean
  // close when error is empty) to onClose exactly once.
  void Shutdown(Napi::Value error);
  Napi::Value ProtocolError(int err, const std::string& what);
  // MSG_CTRUNC: the kernel could not install every fd the peer sent with the bytes just read.
  void RefuseTruncatedFds(std::vector<int>& arrived);
  void DropReceivedFds();

  Napi::Env env_;
  int fd_ = -1;
  PollHandle* handle_ = nullptr;
  int pollEvents_ = 0;
  size_t maxMessageSize_;
  size_t maxFds_;
  Napi::FunctionReference onMessage_;
  Napi::FunctionReference onClose_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;

  struct FdBatch {
    uint64_t messageStart;  // stream offset of the message these fds arrived with
    std::vector<int> fds;
  };
  // Which message holds inbox byte `index`, as a stream offset.
  uint64_t MessageContaining(size_t index) const;
  bool AttachFds(std::vector<int>& arrived, uint64_t messageStart);
  void Deliver(const uint8_t* data, std::unique_ptr<uint8_t[]> owned, size_t size, uint64_t start);

  std::vector<uint8_t> inbox_;
  size_t inboxStart_ = 0;  // first byte not yet delivered
  size_t inboxEnd_ = 0;    // end of the bytes read
  uint64_t inboxBase_ = 0; // stream offset of inbox_[0]
  std::unique_ptr<uint8_t[]> large_;
  size_t largeSize_ = 0;
  size_t largeFill_ = 0;
  uint64_t largeStart_ = 0;
  std::deque<FdBatch> fdBatches_;

  std::deque<PendingSend> sendQueue_;
  size_t pendingBytes_ = 0;
  bool dispatching_ = false;
};

// Accepts on a listening socket. When accept4 fails for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM) the
// pending connection stays readable, so a level-triggered poll would call again at once, forever: instead the
// listener stops polling and retries after a delay that doubles up to a cap, and reports the failure once per run of
// failures with the same errno (a later success ends the run). Pending connections wait in the kernel's backlog.
class Listener : public Napi::ObjectWrap<Listener> {
 public:
  static Napi::Function Define(Napi::Env env);
  // new Listener(fd, onConnection(fd), onError(error))
  explicit Listener(const Napi::CallbackInfo& info);
  ~Listener() override;

 private:
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnRetry(uv_timer_t* handle);
  Napi::Value Close(const Napi::CallbackInfo& info);
  void Stop();
  // Pauses accepting after a failed accept4 and reports it when it starts a new run of failures.
  void BackOff(int err, const char* syscall);
  void Report(Napi::Value error);

  Napi::Env env_;
  int fd_ = -1;
  PollHandle* handle_ = nullptr;
  TimerHandle* retry_ = nullptr;
  uint64_t retryDelayMs_;
  int failingErrno_ = 0;  // the errno of the current run of failed accepts; 0 after a success
  Napi::FunctionReference onConnection_;
  Napi::FunctionReference onError_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
};

// Exposed functions: unixListen(path, backlog), unixConnect(path), unixSocketPair(), fdUsage().
void InitSockets(Napi::Env env, Napi::Object exports);

// Starts a uv_poll on fd for `owner`; shared by sockets, listeners and fd watches.
PollHandle* StartPoll(Napi::Env env, int fd, void* owner, int events, uv_poll_cb callback, int* error);
void ClosePoll(PollHandle* handle);

}  // namespace viommu
