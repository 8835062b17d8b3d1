// N-API surface of the splice engine. It only moves bytes; every policy decision
// (thresholds, timeouts, fallbacks) is taken in TypeScript.
#include <napi.h>
#include <uv.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <string>
#include <unordered_map>

#include <vector>

#include "endpoint.h"
#include "pipe_pool.h"
#include "pump.h"

namespace sluice {
namespace {

class Transfer;

struct AddonData {
  ~AddonData();
  PipePool pool;
  std::unordered_map<uint32_t, Transfer*> transfers;
  uint32_t next_id = 1;
  std::unordered_map<uint32_t, Endpoint*> endpoints;
  uint32_t next_endpoint = 1;
  // Transfers whose pumps are closed wait here for the next loop turn, where they are
  // reported and deleted: never from inside a pump's own call stack, nor inside start().
  std::vector<Transfer*> finished;
  uv_idle_t* reaper = nullptr;
  // One async context for every transfer's callback: making one per transfer cost more than
  // the splice set-up itself, and the callback only settles a promise.
  std::unique_ptr<Napi::AsyncContext> context;
  void Finished(Transfer* t);
};

uint32_t NextId(uint32_t* next) {
  uint32_t id = (*next)++;
  if (*next == 0) *next = 1;
  return id;
}

const char* ErrorName(int err) {
  if (err == Pump::kUnexpectedEof) return "UNEXPECTED_EOF";
  return uv_err_name(-err);
}

// One job: a single pump (exact length or until EOF) or two (a full-duplex tunnel).
class Transfer : public PumpOwner {
 public:
  Transfer(Napi::Env env, AddonData* data, bool tunnel) : env_(env), data_(data), tunnel_(tunnel) {}

  int Init(Endpoint* a, Endpoint* b, int64_t length, bool shutdown_dst) {
    int n = tunnel_ ? 2 : 1;
    for (int i = 0; i < n; i++)
      pumps_[i].reset(new Pump(this, &data_->pool, tunnel_ ? Pump::kUntilEof : length, tunnel_ || shutdown_dst));
    open_ = n;
    int err = pumps_[0]->Init(a, b);
    if (err == 0 && tunnel_) err = pumps_[1]->Init(b, a);
    return err;
  }

  void Begin(uint32_t id, Napi::Function cb) {
    id_ = id;
    cb_ = Napi::Persistent(cb);
    if (!data_->context) data_->context.reset(new Napi::AsyncContext(env_, "SluiceSplice"));
    data_->transfers[id_] = this;
    for (auto& p : pumps_)
      if (p && !p->done()) p->Start();
  }

  // Init failed: release whatever was taken, without telling JS (start() threw).
  void Discard() {
    silent_ = true;
    for (auto& p : pumps_)
      if (p) p->Close();
  }

  void Cancel() {
    for (auto& p : pumps_)
      if (p) p->Fail(ECANCELED, Side::kNone);
  }

  double Progress() const {
    double sum = 0;
    for (auto& p : pumps_)
      if (p) sum += static_cast<double>(p->delivered());
    return sum;
  }

  void OnPumpDone(Pump* pump) override {
    // One direction of a tunnel failing takes the other down with it.
    if (pump->error() != 0)
      for (auto& p : pumps_)
        if (p && !p->done()) p->Fail(ECANCELED, Side::kNone);
    for (auto& p : pumps_)
      if (p && !p->done()) return;
    for (auto& p : pumps_)
      if (p) p->Close();
  }

  void OnPumpClosed(Pump*) override {
    if (--open_ > 0) return;
    data_->Finished(this);
  }

  // From the reaper: tells JS how it went (unless start() already threw) and deletes itself.
  void Conclude() {
    if (!silent_) {
      data_->transfers.erase(id_);
      Report();
    }
    delete this;
  }

 private:
  // Numbers only: the pipe's size, how many directions, then for each its bytes delivered, bytes
  // read, flags (1: EOF; side << 1) and error (0, an errno, or kUnexpectedEof). Objects made
  // here field by field cost more than the rest of the report (each named property makes its
  // key anew); JS builds them (transfer.ts).
  void Report() {
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    napi_value args[2 + 4 * 2];
    size_t n = 2;
    for (auto& p : pumps_) {
      if (!p) continue;
      args[n++] = Napi::Number::New(env, static_cast<double>(p->delivered()));
      args[n++] = Napi::Number::New(env, static_cast<double>(p->read()));
      args[n++] = Napi::Number::New(env, (p->eof() ? 1 : 0) | (static_cast<int>(p->error_side()) << 1));
      args[n++] = Napi::Number::New(env, p->error());
    }
    args[0] = Napi::Number::New(env, pumps_[0]->pipe_size());
    args[1] = Napi::Number::New(env, static_cast<double>((n - 2) / 4));
    Napi::Function fn = cb_.Value();
    fn.MakeCallback(env.Global(), n, args, *data_->context);
    if (env.IsExceptionPending()) {
      Napi::Error e = env.GetAndClearPendingException();
      napi_fatal_exception(env, e.Value());
    }
  }

  Napi::Env env_;
  AddonData* data_;
  bool tunnel_;
  bool silent_ = false;
  uint32_t id_ = 0;
  int open_ = 0;
  std::unique_ptr<Pump> pumps_[2];
  Napi::FunctionReference cb_;
};

void ReapFinished(uv_idle_t* h) {
  AddonData* data = static_cast<AddonData*>(h->data);
  std::vector<Transfer*> batch;
  batch.swap(data->finished);
  for (Transfer* t : batch) t->Conclude();
  if (data->finished.empty()) uv_idle_stop(h);
}

void AddonData::Finished(Transfer* t) {
  finished.push_back(t);
  if (reaper != nullptr) uv_idle_start(reaper, ReapFinished);
}

AddonData::~AddonData() {
  // Environment teardown: what is still running is abandoned with its loop; the idle
  // handle is closed so the loop does not keep a pointer into freed memory. The async
  // context is left as it is: destroying it would call into an environment going away.
  (void)context.release();
  if (reaper != nullptr) {
    reaper->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(reaper), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
  }
}

AddonData* Data(const Napi::Env& env) { return env.GetInstanceData<AddonData>(); }

Napi::Value ThrowErrno(Napi::Env env, int err, const char* what) {
  Napi::Error e = Napi::Error::New(env, std::string(what) + ": " + ErrorName(err));
  e.Set("code", Napi::String::New(env, ErrorName(err)));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

bool ReadFd(const Napi::CallbackInfo& info, size_t i, int* fd) {
  if (!info[i].IsNumber()) return false;
  *fd = info[i].As<Napi::Number>().Int32Value();
  return *fd >= 0;
}

Endpoint* FindEndpoint(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsNumber()) return nullptr;
  auto& m = Data(info.Env())->endpoints;
  auto it = m.find(info[i].As<Napi::Number>().Uint32Value());
  return it == m.end() ? nullptr : it->second;
}

// endpoint(fd): a socket's splice endpoint, kept until release(id); its id.
Napi::Value NewEndpoint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ReadFd(info, 0, &fd)) {
    Napi::TypeError::New(env, "endpoint(fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return ThrowErrno(env, EINVAL, "event loop");
  Endpoint* e = new Endpoint();
  int err = e->Init(loop, fd);
  if (err != 0) {
    delete e;
    return ThrowErrno(env, err, "splice endpoint");
  }
  AddonData* data = Data(env);
  uint32_t id = NextId(&data->next_endpoint);
  data->endpoints[id] = e;
  return Napi::Number::New(env, id);
}

// release(id): the socket is gone; a transfer still using the endpoint is cancelled.
Napi::Value ReleaseEndpoint(const Napi::CallbackInfo& info) {
  Endpoint* e = FindEndpoint(info, 0);
  if (e != nullptr) {
    Data(info.Env())->endpoints.erase(info[0].As<Napi::Number>().Uint32Value());
    e->Close();
  }
  return Napi::Boolean::New(info.Env(), e != nullptr);
}

Napi::Value StartTransfer(const Napi::CallbackInfo& info, bool tunnel) {
  Napi::Env env = info.Env();
  size_t cb_index = tunnel ? 2 : 4;
  Endpoint* a = FindEndpoint(info, 0);
  Endpoint* b = FindEndpoint(info, 1);
  if (!info[cb_index].IsFunction()) {
    Napi::TypeError::New(env, tunnel ? "tunnel(endpointA, endpointB, callback)" : "start(srcEndpoint, dstEndpoint, length, shutdownDst, callback)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (a == nullptr || b == nullptr || a == b) return ThrowErrno(env, EBADF, "splice setup");
  int64_t length = Pump::kUntilEof;
  bool shutdown_dst = false;
  if (!tunnel) {
    shutdown_dst = info[3].ToBoolean().Value();
    if (!info[2].IsNumber()) {
      Napi::TypeError::New(env, "length must be a number (-1: until EOF)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    length = info[2].As<Napi::Number>().Int64Value();
    if (length < 0) length = Pump::kUntilEof;
  }
  AddonData* data = Data(env);
  Transfer* t = new Transfer(env, data, tunnel);
  int err = t->Init(a, b, length, shutdown_dst);
  if (err != 0) {
    t->Discard();
    return ThrowErrno(env, err, "splice setup");
  }
  uint32_t id = NextId(&data->next_id);
  t->Begin(id, info[cb_index].As<Napi::Function>());
  return Napi::Number::New(env, id);
}

Napi::Value Start(const Napi::CallbackInfo& info) { return StartTransfer(info, false); }
Napi::Value Tunnel(const Napi::CallbackInfo& info) { return StartTransfer(info, true); }

Transfer* Find(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) return nullptr;
  auto& m = Data(info.Env())->transfers;
  auto it = m.find(info[0].As<Napi::Number>().Uint32Value());
  return it == m.end() ? nullptr : it->second;
}

Napi::Value Cancel(const Napi::CallbackInfo& info) {
  Transfer* t = Find(info);
  if (t != nullptr) t->Cancel();
  return Napi::Boolean::New(info.Env(), t != nullptr);
}

Napi::Value Progress(const Napi::CallbackInfo& info) {
  Transfer* t = Find(info);
  return Napi::Number::New(info.Env(), t != nullptr ? t->Progress() : -1);
}

Napi::Value Configure(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  for (size_t i = 0; i < 3; i++) {
    if (!info[i].IsNumber() || info[i].As<Napi::Number>().DoubleValue() < 0) {
      Napi::TypeError::New(env, "configure(pipeSize, maxIdle, maxPipes)").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  uint32_t size = Data(env)->pool.Configure(info[0].As<Napi::Number>().Uint32Value(),
                                            info[1].As<Napi::Number>().Uint32Value(),
                                            info[2].As<Napi::Number>().Uint32Value());
  return Napi::Number::New(env, size);
}

Napi::Value Trim(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber() || info[0].As<Napi::Number>().DoubleValue() < 0) {
    Napi::TypeError::New(env, "trim(keep)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, Data(env)->pool.Trim(info[0].As<Napi::Number>().Uint32Value()));
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData* data = Data(env);
  PoolStats s = data->pool.Stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("inUse", s.in_use);
  o.Set("idle", s.idle);
  o.Set("created", static_cast<double>(s.created));
  o.Set("closed", static_cast<double>(s.closed));
  o.Set("acquireFailures", static_cast<double>(s.acquire_failures));
  o.Set("bytesMoved", static_cast<double>(s.bytes_moved));
  o.Set("pipeSize", s.pipe_size);
  o.Set("maxIdle", s.max_idle);
  o.Set("maxPipes", s.max_pipes);
  o.Set("systemMaxPipeSize", s.system_max);
  o.Set("transfers", static_cast<double>(data->transfers.size()));
  o.Set("endpoints", static_cast<double>(data->endpoints.size()));
  return o;
}

// send(fd, head, body?): a head (a Latin-1 string) and an optional body written to a socket in one
// non-blocking sendmsg, for the caller that knows nothing else is queued on the socket. Returns
// the bytes sent (the caller writes the rest the ordinary way) or -errno. It neither waits nor
// keeps anything.
Napi::Value SendHead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ReadFd(info, 0, &fd) || !info[1].IsString()) {
    Napi::TypeError::New(env, "send(fd, head, body?)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Heads are small; one buffer reused by this thread's calls.
  static thread_local std::vector<char> text;
  size_t len = 0;
  napi_get_value_string_latin1(env, info[1], nullptr, 0, &len);
  if (text.size() < len + 1) text.resize(len + 1);
  napi_get_value_string_latin1(env, info[1], text.data(), len + 1, &len);
  iovec iov[2] = {{text.data(), len}, {nullptr, 0}};
  int parts = 1;
  if (info.Length() > 2 && info[2].IsBuffer()) {
    Napi::Buffer<char> body = info[2].As<Napi::Buffer<char>>();
    iov[1] = {body.Data(), body.Length()};
    parts = 2;
  }
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = parts;
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return Napi::Number::New(env, n < 0 ? -errno : static_cast<double>(n));
}

// A second descriptor for a listening socket (close-on-exec): the proxy listens on several, so
// that each turn of the event loop accepts one connection per descriptor, not one in all.
Napi::Value DupFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = -1;
  if (!ReadFd(info, 0, &fd)) {
    Napi::TypeError::New(env, "dup(fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  return Napi::Number::New(env, copy < 0 ? -errno : copy);
}

// A listening TCP socket with SO_REUSEPORT (non-blocking, close-on-exec) on a numeric IPv4 or
// IPv6 address, or -errno: each worker process listens on its own, and the kernel spreads new
// connections over them. Node 20's listen() cannot set the option (22.12 has reusePort).
Napi::Value ListenReusePort(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "listenReusePort(address, port, backlog)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string address = info[0].As<Napi::String>().Utf8Value();
  int port = info[1].As<Napi::Number>().Int32Value();
  int backlog = info[2].As<Napi::Number>().Int32Value();
  if (port < 0 || port > 65535) return Napi::Number::New(env, -EINVAL);
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    len = sizeof(sockaddr_in6);
  } else {
    return Napi::Number::New(env, -EINVAL);
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Napi::Number::New(env, -errno);
  int on = 1;
  // SO_REUSEADDR as libuv sets it on every listening TCP socket.
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) < 0 ||
      bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0 || listen(fd, backlog) < 0) {
    int err = errno;
    close(fd);
    return Napi::Number::New(env, -err);
  }
  return Napi::Number::New(env, fd);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Transfers still running at environment teardown are abandoned with their loop.
  AddonData* data = new AddonData();
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) == napi_ok) {
    data->reaper = new uv_idle_t;
    uv_idle_init(loop, data->reaper);
    data->reaper->data = data;
  }
  env.SetInstanceData<AddonData>(data);
  exports.Set("start", Napi::Function::New(env, Start));
  exports.Set("tunnel", Napi::Function::New(env, Tunnel));
  exports.Set("endpoint", Napi::Function::New(env, NewEndpoint));
  exports.Set("release", Napi::Function::New(env, ReleaseEndpoint));
  exports.Set("cancel", Napi::Function::New(env, Cancel));
  exports.Set("progress", Napi::Function::New(env, Progress));
  exports.Set("configure", Napi::Function::New(env, Configure));
  exports.Set("stats", Napi::Function::New(env, Stats));
  exports.Set("trim", Napi::Function::New(env, Trim));
  exports.Set("send", Napi::Function::New(env, SendHead));
  exports.Set("dup", Napi::Function::New(env, DupFd));
  exports.Set("listenReusePort", Napi::Function::New(env, ListenReusePort));
  return exports;
}

}  // namespace
}  // namespace sluice

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return sluice::Init(env, exports); }

NODE_API_MODULE(sluice_splice, InitAddon)
