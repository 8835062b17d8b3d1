// One direction of byte movement: source socket -> pipe -> destination socket, with
// non-blocking splice() driven by the two sockets' endpoints (endpoint.h), which outlive it.
// The pump never blocks and never spins: it waits on the source only while the pipe is
// empty and on the destination only while the pipe holds bytes it refused.
#pragma once
#include <uv.h>

#include <cstdint>

#include "endpoint.h"
#include "pipe_pool.h"

namespace sluice {

class Pump;

class PumpOwner {
 public:
  virtual ~PumpOwner() = default;
  // Called once, from inside libuv callbacks, when the pump finished or failed.
  virtual void OnPumpDone(Pump* pump) = 0;
  // Called once per pump after it left its endpoints and gave its pipe back (from Close).
  virtual void OnPumpClosed(Pump* pump) = 0;
};

enum class Side { kNone, kSource, kDestination };

class Pump {
 public:
  static constexpr int64_t kUntilEof = -1;

  // `length` is an exact byte count or kUntilEof. `shutdown_dst` half-closes the
  // destination (SHUT_WR) once the source reached EOF and every byte was delivered.
  Pump(PumpOwner* owner, PipePool* pool, int64_t length, bool shutdown_dst);
  ~Pump();

  // Takes the source's reading slot, the destination's writing slot and a pipe; 0 or errno.
  int Init(Endpoint* src, Endpoint* dst);
  void Start();
  // Stops moving bytes and records `err` (an errno value, 0 for success).
  void Fail(int err, Side side);
  // Leaves the endpoints and hands the pipe back; OnPumpClosed follows at once. Idempotent.
  void Close();
  // From an endpoint: its socket became readable (source) or writable (destination), or
  // `status` < 0 reports a poll error on that side.
  void OnPoll(int status, Side side);
  // From an endpoint that is closing: never touch it again.
  void Forget(Endpoint* e);

  bool done() const { return done_; }
  int error() const { return error_; }
  Side error_side() const { return error_side_; }
  bool eof() const { return src_eof_; }
  uint64_t delivered() const { return delivered_; }
  uint64_t read() const { return read_; }
  uint32_t pipe_size() const { return pipe_.size; }

  // Errno value used for a source that ended before the announced length.
  static constexpr int kUnexpectedEof = -1000;
  // Bytes delivered per wake-up before the pump yields to the event loop.
  static constexpr uint64_t kBytesPerWake = 4 << 20;

 private:
  void Run(int poll_status, Side poll_side);
  void Finish();
  void Watch(bool src_readable, bool dst_writable);
  bool WantMore() const { return length_ == kUntilEof || remaining_ > 0; }

  PumpOwner* owner_;
  PipePool* pool_;
  int64_t length_;
  uint64_t remaining_ = 0;
  bool shutdown_dst_;

  Endpoint* src_ = nullptr;
  Endpoint* dst_ = nullptr;
  Pipe pipe_;
  bool have_pipe_ = false;
  bool closed_ = false;

  uint64_t in_pipe_ = 0;
  uint64_t read_ = 0;
  uint64_t delivered_ = 0;
  bool src_eof_ = false;
  bool streaming_ = false;  // the last read filled the pipe: more is probably queued
  bool done_ = false;
  int error_ = 0;
  Side error_side_ = Side::kNone;
};

}  // namespace sluice
