#include "pump.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace sluice {

Pump::Pump(PumpOwner* owner, PipePool* pool, int64_t length, bool shutdown_dst)
    : owner_(owner), pool_(pool), length_(length), shutdown_dst_(shutdown_dst) {
  if (length > 0) remaining_ = static_cast<uint64_t>(length);
  src_poll_.data = this;
  dst_poll_.data = this;
}

Pump::~Pump() = default;

int Pump::Init(uv_loop_t* loop, int src_fd, int dst_fd) {
  // Our own descriptors: libuv keeps its watcher on the originals, and epoll treats a
  // dup as a separate registration, so the two never collide.
  src_ = fcntl(src_fd, F_DUPFD_CLOEXEC, 0);
  if (src_ < 0) return errno;
  dst_ = fcntl(dst_fd, F_DUPFD_CLOEXEC, 0);
  if (dst_ < 0) return errno;
  int err = pool_->Acquire(&pipe_);
  if (err != 0) return err;
  have_pipe_ = true;
  err = uv_poll_init(loop, &src_poll_, src_);
  if (err != 0) return -err;
  src_poll_inited_ = true;
  err = uv_poll_init(loop, &dst_poll_, dst_);
  if (err != 0) return -err;
  dst_poll_inited_ = true;
  return 0;
}

void Pump::Start() { Run(0, -1); }

void Pump::Run(int poll_status, int poll_fd) {
  if (done_) return;
  bool any_progress = false;
  // Work per wake-up is bounded (HAProxy bounds its own too): a fast pair yields after this
  // many bytes, so other connections' events run; level-triggered polls call it again at once.
  uint64_t budget = kBytesPerWake;
  for (;;) {
    bool progress = false;
    if (!src_eof_ && WantMore() && in_pipe_ < pipe_.size) {
      uint64_t want = pipe_.size - in_pipe_;
      if (length_ != kUntilEof && want > remaining_) want = remaining_;
      ssize_t n = splice(src_, nullptr, pipe_.w, nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
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
      ssize_t n = splice(pipe_.r, nullptr, dst_, nullptr, in_pipe_, flags);
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
    getsockopt(poll_fd, SOL_SOCKET, SO_ERROR, &err, &len);
    Fail(err != 0 ? err : ECONNRESET, poll_fd == src_ ? Side::kSource : Side::kDestination);
    return;
  }
  // Bytes left in the pipe mean the destination refused them: wait for it alone.
  // An empty pipe means the source had nothing: wait for it alone.
  Watch(in_pipe_ == 0, in_pipe_ > 0);
}

void Pump::Watch(bool src_readable, bool dst_writable) {
  if (!src_poll_inited_ || !dst_poll_inited_ || closing_) return;
  if (src_readable != watching_src_) {
    int err = src_readable ? uv_poll_start(&src_poll_, UV_READABLE, OnSrcPoll) : uv_poll_stop(&src_poll_);
    watching_src_ = src_readable;
    if (err != 0) return Fail(-err, Side::kSource);
  }
  if (dst_writable != watching_dst_) {
    int err = dst_writable ? uv_poll_start(&dst_poll_, UV_WRITABLE, OnDstPoll) : uv_poll_stop(&dst_poll_);
    watching_dst_ = dst_writable;
    if (err != 0) return Fail(-err, Side::kDestination);
  }
}

void Pump::OnSrcPoll(uv_poll_t* h, int status, int) {
  Pump* self = static_cast<Pump*>(h->data);
  if (status < 0) self->watching_src_ = false;
  self->Run(status, self->src_);
}

void Pump::OnDstPoll(uv_poll_t* h, int status, int) {
  Pump* self = static_cast<Pump*>(h->data);
  if (status < 0) self->watching_dst_ = false;
  self->Run(status, self->dst_);
}

void Pump::Finish() {
  done_ = true;
  Watch(false, false);
  if (shutdown_dst_ && src_eof_) shutdown(dst_, SHUT_WR);
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
  if (closing_) return;
  closing_ = true;
  closes_pending_ = (src_poll_inited_ ? 1 : 0) + (dst_poll_inited_ ? 1 : 0);
  if (closes_pending_ == 0) return ReleaseResources();
  if (src_poll_inited_) uv_close(reinterpret_cast<uv_handle_t*>(&src_poll_), OnHandleClosed);
  if (dst_poll_inited_) uv_close(reinterpret_cast<uv_handle_t*>(&dst_poll_), OnHandleClosed);
}

void Pump::OnHandleClosed(uv_handle_t* h) {
  Pump* self = static_cast<Pump*>(h->data);
  if (--self->closes_pending_ > 0) return;
  self->ReleaseResources();
}

void Pump::ReleaseResources() {
  // libuv removed the registrations from epoll before the close callbacks: now the fds can go.
  if (src_ >= 0) close(src_);
  if (dst_ >= 0) close(dst_);
  src_ = dst_ = -1;
  if (have_pipe_) {
    pool_->AddMoved(delivered_);
    pool_->Release(pipe_, in_pipe_ != 0);
    have_pipe_ = false;
  }
  owner_->OnPumpClosed(this);
}

}  // namespace sluice
