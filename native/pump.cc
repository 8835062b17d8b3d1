#include "pump.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace sluice {

Pump::Pump(PumpOwner* owner, PipePool* pool, int64_t length, bool shutdown_dst)
    : owner_(owner), pool_(pool), length_(length), shutdown_dst_(shutdown_dst) {
  if (length > 0) remaining_ = static_cast<uint64_t>(length);
}

Pump::~Pump() = default;

int Pump::Init(Endpoint* src, Endpoint* dst) {
  int err = src->Attach(this, true);
  if (err != 0) return err;
  src_ = src;
  err = dst->Attach(this, false);
  if (err != 0) return err;
  dst_ = dst;
  err = pool_->Acquire(&pipe_);
  if (err != 0) return err;
  have_pipe_ = true;
  return 0;
}

void Pump::Start() { Run(0, Side::kNone); }

void Pump::Run(int poll_status, Side poll_side) {
  if (done_) return;
  bool any_progress = false;
  // Work per wake-up is bounded (HAProxy bounds its own too): a fast pair yields after this
  // many bytes, so other connections' events run; level-triggered polls call it again at once.
  uint64_t budget = kBytesPerWake;
  for (;;) {
    bool progress = false;
    // The source is read only into an empty pipe, in one gulp of up to a pipe's size: topping
    // up a half-drained pipe took a few segments at a time, and every such read opened the
    // window and made the kernel acknowledge at once (7 ACKs per 1 MiB response against
    // HAProxy's 1.2; now the same as HAProxy's, docs/BENCHMARKS.md).
    if (!src_eof_ && WantMore() && in_pipe_ == 0) {
      uint64_t want = pipe_.size;
      if (length_ != kUntilEof && want > remaining_) want = remaining_;
      ssize_t n = splice(src_->fd(), nullptr, pipe_.w, nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        in_pipe_ += n;
        read_ += n;
        if (length_ != kUntilEof) remaining_ -= n;
        streaming_ = static_cast<uint64_t>(n) == want;
        progress = true;
      } else if (n == 0) {
        src_eof_ = true;
        progress = true;
        if (length_ != kUntilEof) {
          Fail(kUnexpectedEof, Side::kSource);
          return;
        }
      } else if (errno == EINTR) {
        continue;
      } else if (errno != EAGAIN) {
        Fail(errno, Side::kSource);
        return;
      }
    }
    if (in_pipe_ > 0) {
      unsigned flags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
      // Corking is only worth it while the source keeps the pipe full; otherwise the
      // tail could sit in the socket waiting for bytes that are not coming yet.
      if (streaming_ && length_ != kUntilEof && remaining_ > 0) flags |= SPLICE_F_MORE;
      ssize_t n = splice(pipe_.r, nullptr, dst_->fd(), nullptr, in_pipe_, flags);
      if (n > 0) {
        in_pipe_ -= n;
        delivered_ += n;
        budget = static_cast<uint64_t>(n) >= budget ? 0 : budget - n;
        progress = true;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && errno != EAGAIN) {
        Fail(errno, Side::kDestination);
        return;
      }
    }
    if (in_pipe_ == 0 && (src_eof_ || !WantMore())) {
      Finish();
      return;
    }
    if (!progress) break;
    any_progress = true;
    if (budget == 0) break;
  }
  if (poll_status < 0 && !any_progress) {
    // libuv reports POLLERR as a status and stops the handle; the socket error says why.
    int err = 0;
    socklen_t len = sizeof err;
    Endpoint* e = poll_side == Side::kSource ? src_ : dst_;
    if (e != nullptr) getsockopt(e->fd(), SOL_SOCKET, SO_ERROR, &err, &len);
    Fail(err != 0 ? err : ECONNRESET, poll_side);
    return;
  }
  // Bytes left in the pipe mean the destination refused them: wait for it alone.
  // An empty pipe means the source had nothing: wait for it alone.
  Watch(in_pipe_ == 0, in_pipe_ > 0);
}

void Pump::Watch(bool src_readable, bool dst_writable) {
  // The endpoints keep what each slot waits for and change the poll only when it differs.
  if (closed_) return;
  if (src_ != nullptr) {
    int err = src_->Want(this, src_readable);
    if (err != 0) return Fail(err, Side::kSource);
  }
  if (dst_ != nullptr) {
    int err = dst_->Want(this, dst_writable);
    if (err != 0) return Fail(err, Side::kDestination);
  }
}

void Pump::OnPoll(int status, Side side) { Run(status, side); }

void Pump::Forget(Endpoint* e) {
  if (src_ == e) src_ = nullptr;
  if (dst_ == e) dst_ = nullptr;
}

void Pump::Finish() {
  done_ = true;
  Watch(false, false);
  if (shutdown_dst_ && src_eof_ && dst_ != nullptr) shutdown(dst_->fd(), SHUT_WR);
  owner_->OnPumpDone(this);
}

void Pump::Fail(int err, Side side) {
  if (done_) return;
  done_ = true;
  error_ = err;
  error_side_ = side;
  Watch(false, false);
  owner_->OnPumpDone(this);
}

void Pump::Close() {
  if (closed_) return;
  closed_ = true;
  // The endpoints stay with their sockets for the next body; only the slots are given back.
  if (src_ != nullptr) src_->Detach(this);
  if (dst_ != nullptr) dst_->Detach(this);
  src_ = dst_ = nullptr;
  if (have_pipe_) {
    pool_->AddMoved(delivered_);
    pool_->Release(pipe_, in_pipe_ != 0);
    have_pipe_ = false;
  }
  owner_->OnPumpClosed(this);
}

}  // namespace sluice
