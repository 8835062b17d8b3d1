#include "endpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "pump.h"

namespace sluice {

int Endpoint::Init(uv_loop_t* loop, int fd) {
  // Our own descriptor: libuv keeps its watcher on the original, and epoll treats a dup as
  // a separate registration, so the two never collide.
  fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (fd_ < 0) return errno;
  poll_.data = this;
  int err = uv_poll_init(loop, &poll_, fd_);
  if (err != 0) {
    close(fd_);
    fd_ = -1;
    return -err;
  }
  poll_inited_ = true;
  return 0;
}

int Endpoint::Attach(Pump* pump, bool reading) {
  Pump*& slot = reading ? reader_ : writer_;
  if (closing_) return EBADF;
  if (slot != nullptr && slot != pump) return EBUSY;
  slot = pump;
  return 0;
}

void Endpoint::Detach(Pump* pump) {
  if (reader_ == pump) {
    reader_ = nullptr;
    want_read_ = false;
  }
  if (writer_ == pump) {
    writer_ = nullptr;
    want_write_ = false;
  }
  Update();
}

int Endpoint::Want(Pump* pump, bool want) {
  if (reader_ == pump) want_read_ = want;
  if (writer_ == pump) want_write_ = want;
  return Update();
}

int Endpoint::Update() {
  if (!poll_inited_ || closing_) return 0;
  int events = (want_read_ ? UV_READABLE : 0) | (want_write_ ? UV_WRITABLE : 0);
  if (events == events_) return 0;
  // Stopping removes the epoll registration at once; changing the events is one MOD.
  int err = events == 0 ? uv_poll_stop(&poll_) : uv_poll_start(&poll_, events, OnPoll);
  if (err != 0) return -err;
  events_ = events;
  return 0;
}

void Endpoint::OnPoll(uv_poll_t* h, int status, int events) {
  Endpoint* self = static_cast<Endpoint*>(h->data);
  if (status < 0) {
    // libuv stopped the handle after reporting the error; the pumps waiting learn of it.
    self->events_ = 0;
    bool r = self->want_read_, w = self->want_write_;
    if (r && self->reader_ != nullptr) self->reader_->OnPoll(status, Side::kSource);
    if (w && self->writer_ != nullptr) self->writer_->OnPoll(status, Side::kDestination);
    return;
  }
  // A pump that finishes here detaches at once; the slot is read again after each call.
  if ((events & UV_READABLE) && self->reader_ != nullptr) self->reader_->OnPoll(0, Side::kSource);
  if ((events & UV_WRITABLE) && self->writer_ != nullptr) self->writer_->OnPoll(0, Side::kDestination);
}

void Endpoint::Close() {
  if (closing_) return;
  // A pump still attached when its socket goes is cancelled and forgets this endpoint.
  for (Pump* p : {reader_, writer_})
    if (p != nullptr) p->Fail(ECANCELED, Side::kNone);
  for (Pump* p : {reader_, writer_})
    if (p != nullptr) p->Forget(this);
  reader_ = writer_ = nullptr;
  want_read_ = want_write_ = false;
  closing_ = true;
  if (!poll_inited_) {
    if (fd_ >= 0) close(fd_);
    delete this;
    return;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), OnClosed);
}

void Endpoint::OnClosed(uv_handle_t* h) {
  Endpoint* self = static_cast<Endpoint*>(h->data);
  // libuv removed the registration before this callback: now the duplicate can go.
  if (self->fd_ >= 0) close(self->fd_);
  delete self;
}

}  // namespace sluice
