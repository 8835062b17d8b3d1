// One direction of byte movement: source socket -> pipe -> destination socket, with
// non-blocking splice() driven by libuv poll handles on dup()ed descriptors.
// The pump never blocks and never spins: it waits on the source only while the pipe is
// empty and on the destination only while the pipe holds bytes it refused.
#pragma once
#include <uv.h>

#include <cstdint>

#include "pipe_pool.h"

namespace sluice {

class Pump;

class PumpOwner {
 public:
  virtual ~PumpOwner() = default;
  // Called once, from inside libuv callbacks, when the pump finished or failed.
  virtual void OnPumpDone(Pump* pump) = 0;
  // Called once per pump after its poll handles are closed and its fds released.
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

  // Duplicates the fds and acquires a pipe; returns 0 or an errno value.
  int Init(uv_loop_t* loop, int src_fd, int dst_fd);
  void Start();
  // Stops moving bytes and records `err` (an errno value, 0 for success).
  void Fail(int err, Side side);
  // Closes poll handles, then fds, and hands the pipe back; OnPumpClosed follows,
  // synchronously when no handle was ever created. Idempotent.
  void Close();

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
  static void OnSrcPoll(uv_poll_t* h, int status, int events);
  static void OnDstPoll(uv_poll_t* h, int status, int events);
  static void OnHandleClosed(uv_handle_t* h);

  void Run(int poll_status, int poll_fd);
  void Finish();
  void ReleaseResources();
  void Watch(bool src_readable, bool dst_writable);
  bool WantMore() const { return length_ == kUntilEof || remaining_ > 0; }

  PumpOwner* owner_;
  PipePool* pool_;
  int64_t length_;
  uint64_t remaining_ = 0;
  bool shutdown_dst_;

  int src_ = -1;
  int dst_ = -1;
  Pipe pipe_;
  bool have_pipe_ = false;
  uv_poll_t src_poll_;
  uv_poll_t dst_poll_;
  bool src_poll_inited_ = false;
  bool dst_poll_inited_ = false;
  bool watching_src_ = false;
  bool watching_dst_ = false;
  int closes_pending_ = 0;
  bool closing_ = false;

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
