// N-API surface of the splice engine. It only moves bytes; every policy decision
// (thresholds, timeouts, fallbacks) is taken in TypeScript.
#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <memory>
#include <unordered_map>

#include "pipe_pool.h"
#include "pump.h"

namespace sluice {
namespace {

class Transfer;

struct AddonData {
  PipePool pool;
  std::unordered_map<uint32_t, Transfer*> transfers;
  uint32_t next_id = 1;
};

const char* ErrorName(int err) {
  if (err == Pump::kUnexpectedEof) return "UNEXPECTED_EOF";
  return uv_err_name(-err);
}

const char* SideName(Side s) {
  switch (s) {
    case Side::kSource:
      return "source";
    case Side::kDestination:
      return "destination";
    default:
      return nullptr;
  }
}

// One job: a single pump (exact length or until EOF) or two (a full-duplex tunnel).
class Transfer : public PumpOwner {
 public:
  Transfer(Napi::Env env, AddonData* data, bool tunnel) : env_(env), data_(data), tunnel_(tunnel) {}

  int Init(uv_loop_t* loop, int fd_a, int fd_b, int64_t length, bool shutdown_dst) {
    int n = tunnel_ ? 2 : 1;
    for (int i = 0; i < n; i++)
      pumps_[i].reset(new Pump(this, &data_->pool, tunnel_ ? Pump::kUntilEof : length, tunnel_ || shutdown_dst));
    open_ = n;
    int err = pumps_[0]->Init(loop, fd_a, fd_b);
    if (err == 0 && tunnel_) err = pumps_[1]->Init(loop, fd_b, fd_a);
    return err;
  }

  void Begin(uint32_t id, Napi::Function cb) {
    id_ = id;
    cb_ = Napi::Persistent(cb);
    ctx_.reset(new Napi::AsyncContext(env_, "SluiceSplice"));
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
    if (silent_) {
      delete this;
      return;
    }
    data_->transfers.erase(id_);
    Report();
    delete this;
  }

 private:
  void Report() {
    Napi::Env env = env_;
    Napi::HandleScope scope(env);
    Napi::Object result = Napi::Object::New(env);
    Napi::Array dirs = Napi::Array::New(env);
    const char* first_error = nullptr;
    uint32_t i = 0;
    for (auto& p : pumps_) {
      if (!p) continue;
      Napi::Object d = Napi::Object::New(env);
      d.Set("bytes", Napi::Number::New(env, static_cast<double>(p->delivered())));
      d.Set("read", Napi::Number::New(env, static_cast<double>(p->read())));
      d.Set("eof", Napi::Boolean::New(env, p->eof()));
      if (p->error() != 0) {
        d.Set("error", Napi::String::New(env, ErrorName(p->error())));
        const char* side = SideName(p->error_side());
        d.Set("side", side ? Napi::Value(Napi::String::New(env, side)) : env.Null());
        // The direction that failed first names the transfer's error, not its collateral cancel.
        if (first_error == nullptr || p->error() != ECANCELED) first_error = ErrorName(p->error());
      } else {
        d.Set("error", env.Null());
        d.Set("side", env.Null());
      }
      dirs.Set(i++, d);
    }
    result.Set("directions", dirs);
    result.Set("error", first_error ? Napi::Value(Napi::String::New(env, first_error)) : env.Null());
    result.Set("pipeSize", Napi::Number::New(env, pumps_[0]->pipe_size()));
    Napi::Function fn = cb_.Value();
    fn.MakeCallback(env.Global(), {result}, *ctx_);
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
  std::unique_ptr<Napi::AsyncContext> ctx_;
};

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

Napi::Value StartTransfer(const Napi::CallbackInfo& info, bool tunnel) {
  Napi::Env env = info.Env();
  int a = -1, b = -1;
  size_t cb_index = tunnel ? 2 : 4;
  if (!ReadFd(info, 0, &a) || !ReadFd(info, 1, &b) || !info[cb_index].IsFunction()) {
    Napi::TypeError::New(env, tunnel ? "tunnel(fdA, fdB, callback)" : "start(srcFd, dstFd, length, shutdownDst, callback)")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
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
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return ThrowErrno(env, EINVAL, "event loop");
  AddonData* data = Data(env);
  Transfer* t = new Transfer(env, data, tunnel);
  int err = t->Init(loop, a, b, length, shutdown_dst);
  if (err != 0) {
    t->Discard();
    return ThrowErrno(env, err, "splice setup");
  }
  uint32_t id = data->next_id++;
  if (data->next_id == 0) data->next_id = 1;
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
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Transfers still running at environment teardown are abandoned with their loop.
  env.SetInstanceData<AddonData>(new AddonData());
  exports.Set("start", Napi::Function::New(env, Start));
  exports.Set("tunnel", Napi::Function::New(env, Tunnel));
  exports.Set("cancel", Napi::Function::New(env, Cancel));
  exports.Set("progress", Napi::Function::New(env, Progress));
  exports.Set("configure", Napi::Function::New(env, Configure));
  exports.Set("stats", Napi::Function::New(env, Stats));
  exports.Set("trim", Napi::Function::New(env, Trim));
  return exports;
}

}  // namespace
}  // namespace sluice

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return sluice::Init(env, exports); }

NODE_API_MODULE(sluice_splice, InitAddon)
