#include "pipe_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

namespace sluice {

static uint32_t ReadSystemMax() {
  FILE* f = fopen("/proc/sys/fs/pipe-max-size", "r");
  unsigned long v = 0;
  if (f != nullptr) {
    if (fscanf(f, "%lu", &v) != 1) v = 0;
    fclose(f);
  }
  return v > 0 ? static_cast<uint32_t>(v) : 1u << 20;
}

PipePool::PipePool() {
  stats_.system_max = ReadSystemMax();
  stats_.pipe_size = stats_.system_max < (1u << 20) ? stats_.system_max : (1u << 20);
  // The runtime sets the real bound (8 MiB of idle pipes by default); this is the same until it does.
  stats_.max_idle = 8;
  stats_.max_pipes = 0;
}

PipePool::~PipePool() {
  for (const Pipe& p : idle_) ClosePipe(p);
}

uint32_t PipePool::Configure(uint32_t pipe_size, uint32_t max_idle, uint32_t max_pipes) {
  stats_.system_max = ReadSystemMax();
  if (pipe_size < 4096) pipe_size = 4096;
  if (pipe_size > stats_.system_max) pipe_size = stats_.system_max;
  stats_.pipe_size = pipe_size;
  stats_.max_idle = max_idle;
  stats_.max_pipes = max_pipes;
  std::vector<Pipe> keep;
  for (const Pipe& p : idle_) {
    if (p.size == pipe_size && keep.size() < max_idle) {
      keep.push_back(p);
    } else {
      ClosePipe(p);
    }
  }
  idle_.swap(keep);
  return pipe_size;
}

int PipePool::Acquire(Pipe* out) {
  if (stats_.max_pipes != 0 && stats_.in_use >= stats_.max_pipes) {
    stats_.acquire_failures++;
    return EAGAIN;
  }
  if (!idle_.empty()) {
    *out = idle_.back();
    idle_.pop_back();
    stats_.in_use++;
    return 0;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    stats_.acquire_failures++;
    return errno;
  }
  // Over the per-user pipe page limit the kernel refuses to grow a pipe (EPERM); the
  // pipe still works at its default size, so keep it and use what it really holds.
  fcntl(fds[0], F_SETPIPE_SZ, static_cast<int>(stats_.pipe_size));
  int size = fcntl(fds[0], F_GETPIPE_SZ);
  out->r = fds[0];
  out->w = fds[1];
  out->size = size > 0 ? static_cast<uint32_t>(size) : 4096;
  stats_.created++;
  stats_.in_use++;
  return 0;
}

void PipePool::Release(const Pipe& p, bool maybe_dirty) {
  stats_.in_use--;
  int pending = 0;
  bool empty = !maybe_dirty && ioctl(p.r, FIONREAD, &pending) == 0 && pending == 0;
  if (empty && p.size == stats_.pipe_size && idle_.size() < stats_.max_idle) {
    idle_.push_back(p);
  } else {
    ClosePipe(p);
  }
}

uint32_t PipePool::Trim(uint32_t keep) {
  if (idle_.size() <= keep) return 0;
  // idle_ is a stack: the front has been idle longest.
  uint32_t n = static_cast<uint32_t>(idle_.size()) - keep;
  for (uint32_t i = 0; i < n; i++) ClosePipe(idle_[i]);
  idle_.erase(idle_.begin(), idle_.begin() + n);
  return n;
}

void PipePool::ClosePipe(const Pipe& p) {
  close(p.r);
  close(p.w);
  stats_.closed++;
}

PoolStats PipePool::Stats() const {
  PoolStats s = stats_;
  s.idle = static_cast<uint32_t>(idle_.size());
  return s;
}

}  // namespace sluice
