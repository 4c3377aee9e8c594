// Framed message I/O with fd passing over non-blocking UNIX stream sockets, driven by libuv readiness.
#include "message_socket.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "errors.h"
#include "file_descriptor.h"

namespace viommu {

namespace {
constexpr size_t kHeaderSize = 16;
constexpr size_t kSizeFieldOffset = 4;
// Linux's SCM_MAX_FD: the most fds one sendmsg can carry.
constexpr size_t kMaxFdsPerMessage = 253;
constexpr size_t kMaxMessageSizeLimit = size_t(1) << 30;
// Messages handed to JS per readiness callback before yielding back to the event loop.
constexpr int kMessagesPerWakeup = 64;
// Messages up to half this size are read in batches through the inbox; larger ones go to their own buffer.
constexpr size_t kInboxSize = 64 * 1024;
// A listener whose accept4 lacks a resource retries after this long, doubling up to the cap: short enough that a
// freed fd is used promptly, long enough that a process stuck at its limit costs nothing measurable.
constexpr uint64_t kAcceptRetryFirstMs = 100;
constexpr uint64_t kAcceptRetryMaxMs = 1000;

std::string SocketName(int fd) { return "socket fd " + std::to_string(fd); }

// The soft RLIMIT_NOFILE (fd numbers must stay below it), or -1 when unlimited.
long long OpenFileLimit() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return -1;
  return static_cast<long long>(limit.rlim_cur);
}

// How many fds this process has open, or -1 when /proc cannot tell.
long long OpenFileCount() {
  struct stat st;
  // Linux 6.2 and later give the count as the size of /proc/self/fd: one stat instead of a listing.
  if (stat("/proc/self/fd", &st) == 0 && st.st_size > 0) return static_cast<long long>(st.st_size);
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return errno == EMFILE ? OpenFileLimit() : -1;  // no fd left even to list them: all are in use
  long long count = 0;
  while (struct dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') count++;
  }
  closedir(dir);
  return count - 1;  // the listing's own fd
}

// Says which limit an EMFILE or ENFILE hit, with the numbers, for error messages.
std::string FdLimitText(int err) {
  if (err == ENFILE) return "the system-wide limit on open files (fs.file-max) is reached";
  std::string text = "this process is at its fd limit (RLIMIT_NOFILE";
  long long limit = OpenFileLimit();
  long long open = OpenFileCount();
  text += limit < 0 ? " unlimited" : " " + std::to_string(limit);
  if (open >= 0) text += ", " + std::to_string(open) + " open";
  return text + ")";
}

bool IsFdLimit(int err) { return err == EMFILE || err == ENFILE; }

void CloseAll(std::vector<int>& fds) {
  for (int fd : fds) close(fd);
  fds.clear();
}

bool ReadSizeOption(Napi::Env env, Napi::Object options, const char* key, size_t min, size_t max, size_t fallback,
                    size_t* out) {
  Napi::Value value = options.Get(key);
  if (value.IsUndefined()) {
    *out = fallback;
    return true;
  }
  double v = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
  if (!(v >= static_cast<double>(min) && v <= static_cast<double>(max)) || v != static_cast<double>(size_t(v))) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE",
                       std::string(key) + " must be an integer in [" + std::to_string(min) + ", " +
                           std::to_string(max) + "]");
    return false;
  }
  *out = static_cast<size_t>(v);
  return true;
}

// Dups the fds of a message that must wait in the send queue, so the caller may close its own copies at once.
bool DupAll(const std::vector<int>& fds, std::vector<int>* out, int* err) {
  for (int fd : fds) {
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
      *err = errno;
      CloseAll(*out);
      return false;
    }
    out->push_back(copy);
  }
  return true;
}

ssize_t SendWithFds(int socket, const uint8_t* bytes, size_t length, const std::vector<int>& fds) {
  struct iovec iov = {const_cast<uint8_t*>(bytes), length};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    struct cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do {
    n = sendmsg(socket, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n;
}
}  // namespace

PollHandle* StartPoll(Napi::Env env, int fd, void* owner, int events, uv_poll_cb callback, int* error) {
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  auto* handle = new PollHandle();
  handle->owner = owner;
  handle->poll.data = handle;
  int rc = uv_poll_init(loop, &handle->poll, fd);
  if (rc != 0) {
    *error = -rc;
    delete handle;
    return nullptr;
  }
  rc = uv_poll_start(&handle->poll, events, callback);
  if (rc != 0) {
    *error = -rc;
    ClosePoll(handle);
    return nullptr;
  }
  return handle;
}

void ClosePoll(PollHandle* handle) {
  if (!handle) return;
  uv_poll_stop(&handle->poll);
  handle->owner = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&handle->poll),
           [](uv_handle_t* h) { delete static_cast<PollHandle*>(h->data); });
}

namespace {
TimerHandle* StartTimerHandle(Napi::Env env, void* owner) {
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  auto* handle = new TimerHandle();
  handle->owner = owner;
  handle->timer.data = handle;
  uv_timer_init(loop, &handle->timer);
  return handle;
}

void CloseTimerHandle(TimerHandle* handle) {
  if (!handle) return;
  uv_timer_stop(&handle->timer);
  handle->owner = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&handle->timer),
           [](uv_handle_t* h) { delete static_cast<TimerHandle*>(h->data); });
}
}  // namespace

// ---- MessageSocket ----

Napi::Function MessageSocket::Define(Napi::Env env) {
  return DefineClass(env, "MessageSocket",
                     {
                         InstanceMethod<&MessageSocket::Send>("send"),
                         InstanceMethod<&MessageSocket::Close>("close"),
                         InstanceAccessor<&MessageSocket::GetPendingBytes>("pendingBytes"),
                         InstanceAccessor<&MessageSocket::GetClosed>("closed"),
                     });
}

MessageSocket::MessageSocket(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MessageSocket>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  FileDescriptor* owner = FileDescriptor::FromValue(env, info[0], "new MessageSocket(fd, options, onMessage, onClose): fd");
  if (!owner) return;
  if (!info[1].IsObject() || !info[2].IsFunction() || !info[3].IsFunction()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE",
                       "new MessageSocket(fd, options, onMessage, onClose): options must be an object and "
                       "onMessage/onClose functions");
    return;
  }
  Napi::Object options = info[1].As<Napi::Object>();
  if (!ReadSizeOption(env, options, "maxMessageSize", kHeaderSize, kMaxMessageSizeLimit, size_t(16) << 20,
                      &maxMessageSize_) ||
      !ReadSizeOption(env, options, "maxFds", 0, kMaxFdsPerMessage, kMaxFdsPerMessage, &maxFds_))
    return;
  int fd = owner->fd();
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    ThrowSystemError(env, errno, "fcntl", SocketName(fd));
    return;
  }
  int err = 0;
  handle_ = StartPoll(env, fd, this, UV_READABLE | UV_DISCONNECT, OnPoll, &err);
  if (!handle_) {
    ThrowSystemError(env, err, "uv_poll_start", SocketName(fd));
    return;
  }
  pollEvents_ = UV_READABLE | UV_DISCONNECT;
  inbox_.resize(kInboxSize);
  fd_ = owner->Release();
  onMessage_ = Napi::Persistent(info[2].As<Napi::Function>());
  onClose_ = Napi::Persistent(info[3].As<Napi::Function>());
  asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "viommu:MessageSocket");
  // An open socket stays alive while the loop may still call into it, even if JS drops every reference.
  Ref();
}

MessageSocket::~MessageSocket() {
  if (fd_ < 0) return;
  ClosePoll(handle_);
  close(fd_);
  DropReceivedFds();
  for (auto& pending : sendQueue_) CloseAll(pending.fds);
}

void MessageSocket::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* self = static_cast<MessageSocket*>(static_cast<PollHandle*>(handle->data)->owner);
  if (!self) return;
  Napi::HandleScope scope(self->env_);
  if (status < 0) {
    self->Shutdown(SystemError(self->env_, -status, "poll", SocketName(self->fd_)).Value());
    return;
  }
  if (events & UV_WRITABLE) self->FlushSends();
  if (self->fd_ >= 0 && (events & (UV_READABLE | UV_DISCONNECT))) self->ReadMessages();
}

Napi::Value MessageSocket::ProtocolError(int err, const std::string& what) {
  Napi::Error error = SystemError(env_, err, "recvmsg", SocketName(fd_));
  error.Set("message", Napi::String::New(env_, SocketName(fd_) + ": " + what));
  return error.Value();
}

// The control buffer holds SCM_MAX_FD fds, as many as any sender can attach, so a truncation almost always means
// the kernel could not install them here: the fd table is full. Probed before the fds that did arrive are closed,
// since they are part of what filled it. A message that lost its fds cannot be served as sent, and which of them
// went missing is unknown, so the connection ends with an error that names the limit.
void MessageSocket::RefuseTruncatedFds(std::vector<int>& arrived) {
  int probe = fcntl(fd_, F_DUPFD_CLOEXEC, 0);
  int err = probe < 0 ? errno : 0;
  if (probe >= 0) close(probe);
  std::string limit = IsFdLimit(err) ? FdLimitText(err) : "";
  CloseAll(arrived);
  if (!limit.empty()) {
    Shutdown(ProtocolError(err, "the fds the peer sent with a message could not be received: " + limit +
                                    "; closing the connection, since that message cannot be served without them"));
    return;
  }
  Shutdown(ProtocolError(EMSGSIZE, "the kernel truncated the fds the peer sent with a message (more than " +
                                       std::to_string(kMaxFdsPerMessage) + ", or refused by a security module)"));
}

void MessageSocket::DropReceivedFds() {
  for (auto& batch : fdBatches_) CloseAll(batch.fds);
  fdBatches_.clear();
}

uint64_t MessageSocket::MessageContaining(size_t index) const {
  size_t position = inboxStart_;
  while (position + kHeaderSize <= inboxEnd_) {
    uint32_t size;
    memcpy(&size, inbox_.data() + position + kSizeFieldOffset, sizeof size);
    if (size < kHeaderSize || position + size > index) break;
    position += size;
  }
  return inboxBase_ + position;
}

bool MessageSocket::AttachFds(std::vector<int>& arrived, uint64_t messageStart) {
  if (arrived.empty()) return true;
  if (fdBatches_.empty() || fdBatches_.back().messageStart != messageStart) fdBatches_.push_back({messageStart, {}});
  std::vector<int>& fds = fdBatches_.back().fds;
  fds.insert(fds.end(), arrived.begin(), arrived.end());
  arrived.clear();
  if (fds.size() <= maxFds_) return true;
  Shutdown(ProtocolError(EMSGSIZE, "message carries " + std::to_string(fds.size()) + " fds, more than the limit of " +
                                       std::to_string(maxFds_)));
  return false;
}

void MessageSocket::Deliver(const uint8_t* data, std::unique_ptr<uint8_t[]> owned, size_t size, uint64_t start) {
  // Small messages are copied into V8-managed memory (cheaper than an external buffer's finalizer); large ones
  // were read straight into their own allocation and are handed over without a copy.
  Napi::Buffer<uint8_t> bytes =
      owned ? Napi::Buffer<uint8_t>::New(env_, owned.release(), size, [](Napi::Env, uint8_t* p) { delete[] p; })
            : Napi::Buffer<uint8_t>::Copy(env_, data, size);
  while (!fdBatches_.empty() && fdBatches_.front().messageStart < start) {
    CloseAll(fdBatches_.front().fds);  // unreachable with a sane peer; never leak
    fdBatches_.pop_front();
  }
  Napi::Value fds = env_.Undefined();
  if (!fdBatches_.empty() && fdBatches_.front().messageStart == start) {
    std::vector<int>& batch = fdBatches_.front().fds;
    Napi::Array list = Napi::Array::New(env_, batch.size());
    for (size_t i = 0; i < batch.size(); i++) list.Set(i, FileDescriptor::Adopt(env_, batch[i]));
    fdBatches_.pop_front();
    fds = list;
  }
  onMessage_.MakeCallback(Value(), {bytes, fds}, *asyncContext_);
  ReportPendingException(env_);
}

// Reads greedily into the inbox and cuts messages out of it. The kernel ends a recvmsg right after the segment
// that carried fds, and a sender attaches fds to the sendmsg that starts (or continues) their message, so the fds
// of one read belong to the message that holds the last byte read. Messages too big for the inbox are read
// exactly, straight into their own buffer.
void MessageSocket::ReadMessages() {
  int delivered = 0;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)];
  std::vector<int> arrived;
  while (fd_ >= 0 && delivered < kMessagesPerWakeup) {
    uint8_t* into;
    size_t want;
    if (large_) {
      into = large_.get() + largeFill_;
      want = largeSize_ - largeFill_;
    } else {
      if (inboxStart_ > 0 && (inboxStart_ == inboxEnd_ || inboxEnd_ == inbox_.size())) {
        memmove(inbox_.data(), inbox_.data() + inboxStart_, inboxEnd_ - inboxStart_);
        inboxBase_ += inboxStart_;
        inboxEnd_ -= inboxStart_;
        inboxStart_ = 0;
      }
      into = inbox_.data() + inboxEnd_;
      want = inbox_.size() - inboxEnd_;
    }
    struct iovec iov = {into, want};
    struct msghdr msg = {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      Shutdown(SystemError(env_, errno, "recvmsg", SocketName(fd_)).Value());
      return;
    }
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const int* fds = reinterpret_cast<const int*>(CMSG_DATA(c));
      arrived.insert(arrived.end(), fds, fds + count);
    }
    if (msg.msg_flags & MSG_CTRUNC) {
      RefuseTruncatedFds(arrived);
      return;
    }
    if (n == 0) {
      size_t buffered = inboxEnd_ - inboxStart_;
      if (large_) {
        Shutdown(ProtocolError(EPIPE, "peer closed mid-message after " + std::to_string(largeFill_) + " of " +
                                          std::to_string(largeSize_) + " bytes"));
      } else if (buffered > 0) {
        std::string of = "at least 16";
        if (buffered >= kHeaderSize) {
          uint32_t size;
          memcpy(&size, inbox_.data() + inboxStart_ + kSizeFieldOffset, sizeof size);
          of = std::to_string(size);
        }
        Shutdown(ProtocolError(EPIPE, "peer closed mid-message after " + std::to_string(buffered) + " of " + of +
                                          " bytes"));
      } else {
        Shutdown(env_.Undefined());
      }
      return;
    }
    bool drained = static_cast<size_t>(n) < want;
    if (large_) {
      if (!AttachFds(arrived, largeStart_)) return;
      largeFill_ += static_cast<size_t>(n);
      if (largeFill_ < largeSize_) continue;
      size_t size = largeSize_;
      uint64_t start = largeStart_;
      largeSize_ = largeFill_ = 0;
      inboxBase_ = start + size;
      inboxStart_ = inboxEnd_ = 0;
      Deliver(nullptr, std::move(large_), size, start);
      delivered++;
      continue;
    }
    inboxEnd_ += static_cast<size_t>(n);
    if (!arrived.empty() && !AttachFds(arrived, MessageContaining(inboxEnd_ - 1))) return;
    while (fd_ >= 0 && inboxEnd_ - inboxStart_ >= kHeaderSize) {
      uint32_t size;
      memcpy(&size, inbox_.data() + inboxStart_ + kSizeFieldOffset, sizeof size);
      if (size < kHeaderSize) {
        Shutdown(ProtocolError(EPROTO, "message size " + std::to_string(size) + " is below the 16-byte header"));
        return;
      }
      if (size > maxMessageSize_) {
        Shutdown(ProtocolError(EMSGSIZE, "message size " + std::to_string(size) + " exceeds the limit of " +
                                             std::to_string(maxMessageSize_)));
        return;
      }
      size_t buffered = inboxEnd_ - inboxStart_;
      if (buffered < size) {
        if (size > inbox_.size() / 2) {
          large_.reset(new uint8_t[size]);
          memcpy(large_.get(), inbox_.data() + inboxStart_, buffered);
          largeSize_ = size;
          largeFill_ = buffered;
          largeStart_ = inboxBase_ + inboxStart_;
          inboxStart_ = inboxEnd_;
          drained = false;
        }
        break;
      }
      uint64_t start = inboxBase_ + inboxStart_;
      inboxStart_ += size;
      Deliver(inbox_.data() + inboxStart_ - size, nullptr, size, start);
      delivered++;
    }
    // A short read means the socket is empty: the level-triggered poll calls again when more arrives.
    if (drained) return;
  }
}

Napi::Value MessageSocket::Send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "send(bytes, fds): bytes must be a Uint8Array or Buffer");
    return env.Undefined();
  }
  Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
  size_t length = bytes.ByteLength();
  uint32_t declared = 0;
  if (length >= kHeaderSize) memcpy(&declared, bytes.Data() + kSizeFieldOffset, sizeof declared);
  if (length < kHeaderSize || declared != length) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE",
                       "send(bytes, fds): a message is at least 16 bytes and its u32 at offset 4 equals its length (" +
                           std::to_string(declared) + " declared, " + std::to_string(length) + " given)");
    return env.Undefined();
  }
  std::vector<int> fds;
  if (!info[1].IsUndefined()) {
    if (!info[1].IsArray()) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "send(bytes, fds): fds must be an array of FileDescriptor");
      return env.Undefined();
    }
    Napi::Array list = info[1].As<Napi::Array>();
    if (list.Length() > kMaxFdsPerMessage) {
      ThrowArgumentError(env, "ERR_INVALID_ARG_VALUE", "send(bytes, fds): at most 253 fds per message");
      return env.Undefined();
    }
    for (uint32_t i = 0; i < list.Length(); i++) {
      FileDescriptor* fd = FileDescriptor::FromValue(env, list.Get(i), "send(bytes, fds): fds[i]");
      if (!fd) return env.Undefined();
      fds.push_back(fd->fd());
    }
  }
  if (fd_ < 0) {
    ThrowSystemError(env, EPIPE, "send", "on a closed MessageSocket");
    return env.Undefined();
  }
  size_t sent = 0;
  if (sendQueue_.empty()) {
    ssize_t n = SendWithFds(fd_, bytes.Data(), length, fds);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      ThrowSystemError(env, errno, "sendmsg", SocketName(fd_));
      return env.Undefined();
    }
    if (n >= 0) sent = static_cast<size_t>(n);
    if (sent == length) return env.Undefined();
  }
  PendingSend pending;
  pending.bytes.assign(bytes.Data() + sent, bytes.Data() + length);
  int err = 0;
  if (sent == 0 && !DupAll(fds, &pending.fds, &err)) {
    ThrowSystemError(env, err, "dup", "fds queued on " + SocketName(fd_));
    return env.Undefined();
  }
  pendingBytes_ += length - sent;
  sendQueue_.push_back(std::move(pending));
  UpdatePollEvents();
  return env.Undefined();
}

void MessageSocket::FlushSends() {
  while (fd_ >= 0 && !sendQueue_.empty()) {
    PendingSend& front = sendQueue_.front();
    ssize_t n = SendWithFds(fd_, front.bytes.data() + front.sent, front.bytes.size() - front.sent, front.fds);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      Shutdown(SystemError(env_, errno, "sendmsg", SocketName(fd_)).Value());
      return;
    }
    CloseAll(front.fds);  // they left with the first byte
    front.sent += static_cast<size_t>(n);
    pendingBytes_ -= static_cast<size_t>(n);
    if (front.sent == front.bytes.size()) sendQueue_.pop_front();
  }
  UpdatePollEvents();
}

void MessageSocket::UpdatePollEvents() {
  if (fd_ < 0) return;
  int events = UV_READABLE | UV_DISCONNECT | (sendQueue_.empty() ? 0 : UV_WRITABLE);
  if (events == pollEvents_) return;
  pollEvents_ = events;
  uv_poll_start(&handle_->poll, events, OnPoll);
}

void MessageSocket::Shutdown(Napi::Value error) {
  if (fd_ < 0) return;
  ClosePoll(handle_);
  handle_ = nullptr;
  close(fd_);
  fd_ = -1;
  DropReceivedFds();
  large_.reset();
  inboxStart_ = inboxEnd_ = 0;
  for (auto& pending : sendQueue_) CloseAll(pending.fds);
  sendQueue_.clear();
  pendingBytes_ = 0;
  onClose_.MakeCallback(Value(), {error}, *asyncContext_);
  ReportPendingException(env_);
  Unref();
}

Napi::Value MessageSocket::Close(const Napi::CallbackInfo& info) {
  bool wasOpen = fd_ >= 0;
  Shutdown(info.Env().Undefined());
  return Napi::Boolean::New(info.Env(), wasOpen);
}

Napi::Value MessageSocket::GetPendingBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(pendingBytes_));
}

Napi::Value MessageSocket::GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), fd_ < 0); }

// ---- Listener ----

Napi::Function Listener::Define(Napi::Env env) {
  return DefineClass(env, "Listener", {InstanceMethod<&Listener::Close>("close")});
}

Listener::Listener(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Listener>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  FileDescriptor* owner = FileDescriptor::FromValue(env, info[0], "new Listener(fd, onConnection, onError): fd");
  if (!owner) return;
  if (!info[1].IsFunction() || !info[2].IsFunction()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", "new Listener(fd, onConnection, onError): callbacks required");
    return;
  }
  int err = 0;
  handle_ = StartPoll(env, owner->fd(), this, UV_READABLE, OnPoll, &err);
  if (!handle_) {
    ThrowSystemError(env, err, "uv_poll_start", SocketName(owner->fd()));
    return;
  }
  retry_ = StartTimerHandle(env, this);
  retryDelayMs_ = kAcceptRetryFirstMs;
  fd_ = owner->Release();
  onConnection_ = Napi::Persistent(info[1].As<Napi::Function>());
  onError_ = Napi::Persistent(info[2].As<Napi::Function>());
  asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "viommu:Listener");
  Ref();
}

Listener::~Listener() {
  if (fd_ < 0) return;
  ClosePoll(handle_);
  CloseTimerHandle(retry_);
  close(fd_);
}

void Listener::OnPoll(uv_poll_t* handle, int status, int) {
  auto* self = static_cast<Listener*>(static_cast<PollHandle*>(handle->data)->owner);
  if (!self) return;
  Napi::Env env = self->env_;
  Napi::HandleScope scope(env);
  if (status < 0) {
    // A poll error would be reported again on the next loop iteration: back off as for a failed accept.
    self->BackOff(-status, "poll");
    return;
  }
  for (int i = 0; i < kMessagesPerWakeup && self->fd_ >= 0; i++) {
    int client = accept4(self->fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (client < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      self->BackOff(errno, "accept4");
      return;
    }
    self->failingErrno_ = 0;
    self->retryDelayMs_ = kAcceptRetryFirstMs;
    self->onConnection_.MakeCallback(self->Value(), {FileDescriptor::Adopt(env, client)}, *self->asyncContext_);
    ReportPendingException(env);
  }
}

// Every failure that reaches here persists while the connection stays pending (a full fd table, no memory, a
// broken poll), so the listener stops polling instead of being called again at once.
void Listener::BackOff(int err, const char* syscall) {
  uint64_t delay = retryDelayMs_;
  retryDelayMs_ = std::min(retryDelayMs_ * 2, kAcceptRetryMaxMs);
  uv_poll_stop(&handle_->poll);
  uv_timer_start(&retry_->timer, OnRetry, delay, 0);
  if (failingErrno_ == err) return;
  failingErrno_ = err;
  Napi::Error error = SystemError(env_, err, syscall, SocketName(fd_));
  std::string message = error.Message();
  if (IsFdLimit(err)) message += ": " + FdLimitText(err);
  message += "; pending connections wait, and accepting is retried in " + std::to_string(delay) +
             " ms (then less often, up to every " + std::to_string(kAcceptRetryMaxMs) +
             " ms) without another report until it succeeds";
  error.Set("message", Napi::String::New(env_, message));
  error.Set("retryMs", Napi::Number::New(env_, static_cast<double>(delay)));
  onError_.MakeCallback(Value(), {error.Value()}, *asyncContext_);
  ReportPendingException(env_);
}

void Listener::OnRetry(uv_timer_t* handle) {
  auto* self = static_cast<Listener*>(static_cast<TimerHandle*>(handle->data)->owner);
  if (!self || self->fd_ < 0) return;
  Napi::HandleScope scope(self->env_);
  int rc = uv_poll_start(&self->handle_->poll, UV_READABLE, OnPoll);
  if (rc != 0) self->BackOff(-rc, "uv_poll_start");
}

void Listener::Stop() {
  if (fd_ < 0) return;
  ClosePoll(handle_);
  handle_ = nullptr;
  CloseTimerHandle(retry_);
  retry_ = nullptr;
  close(fd_);
  fd_ = -1;
  Unref();
}

Napi::Value Listener::Close(const Napi::CallbackInfo& info) {
  bool wasOpen = fd_ >= 0;
  Stop();
  return Napi::Boolean::New(info.Env(), wasOpen);
}

// ---- socket creation ----

namespace {

bool FillAddress(Napi::Env env, Napi::Value value, const char* call, struct sockaddr_un* address) {
  if (!value.IsString()) {
    ThrowArgumentError(env, "ERR_INVALID_ARG_TYPE", std::string(call) + "(path): path must be a string");
    return false;
  }
  std::string path = value.As<Napi::String>().Utf8Value();
  memset(address, 0, sizeof *address);
  address->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof address->sun_path) {
    ThrowSystemError(env, ENAMETOOLONG, call,
                     "'" + path + "' (a socket path is 1 to " + std::to_string(sizeof address->sun_path - 1) +
                         " bytes)");
    return false;
  }
  memcpy(address->sun_path, path.data(), path.size());
  return true;
}

Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct sockaddr_un address;
  if (!FillAddress(env, info[0], "bind", &address)) return env.Undefined();
  int backlog = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 64;
  std::string target = "'" + std::string(address.sun_path) + "'";
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowSystemError(env, errno, "socket", target), env.Undefined();
  const char* failed = nullptr;
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&address), sizeof address) != 0)
    failed = "bind";
  else if (listen(fd, backlog) != 0)
    failed = "listen";
  if (failed) {
    int err = errno;
    close(fd);
    return ThrowSystemError(env, err, failed, target), env.Undefined();
  }
  return FileDescriptor::Adopt(env, fd);
}

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct sockaddr_un address;
  if (!FillAddress(env, info[0], "connect", &address)) return env.Undefined();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowSystemError(env, errno, "socket", address.sun_path), env.Undefined();
  // A UNIX-domain connect completes at once or fails (EAGAIN when the listener's backlog is full).
  int rc;
  do {
    rc = connect(fd, reinterpret_cast<struct sockaddr*>(&address), sizeof address);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) {
    int err = errno;
    close(fd);
    return ThrowSystemError(env, err, "connect", "'" + std::string(address.sun_path) + "'"), env.Undefined();
  }
  return FileDescriptor::Adopt(env, fd);
}

Napi::Value UnixSocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
    return ThrowSystemError(env, errno, "socketpair", "AF_UNIX stream"), env.Undefined();
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(uint32_t(0), FileDescriptor::Adopt(env, fds[0]));
  pair.Set(uint32_t(1), FileDescriptor::Adopt(env, fds[1]));
  return pair;
}

// { open, limit }: this process's open fds (undefined when /proc cannot tell) and its soft RLIMIT_NOFILE
// (Infinity when unlimited), so that a server can refuse fds before it runs out.
Napi::Value FdUsage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  long long open = OpenFileCount();
  long long limit = OpenFileLimit();
  Napi::Object usage = Napi::Object::New(env);
  usage.Set("open", open < 0 ? env.Undefined() : Napi::Number::New(env, static_cast<double>(open)));
  usage.Set("limit", Napi::Number::New(env, limit < 0 ? INFINITY : static_cast<double>(limit)));
  return usage;
}

}  // namespace

void InitSockets(Napi::Env env, Napi::Object exports) {
  exports.Set("fdUsage", Napi::Function::New(env, FdUsage));
  exports.Set("unixListen", Napi::Function::New(env, UnixListen));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect));
  exports.Set("unixSocketPair", Napi::Function::New(env, UnixSocketPair));
}

}  // namespace viommu
