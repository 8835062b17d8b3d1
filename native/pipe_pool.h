// A pool of kernel pipes used as the splice intermediary.
// A pipe goes back to the idle list only when it is known to be empty; one that may
// still hold bytes of an aborted transfer is closed, so no stale byte can leak into
// the next transfer.
#pragma once
#include <cstdint>
#include <vector>

namespace sluice {

struct Pipe {
  int r = -1;
  int w = -1;
  uint32_t size = 0;  // capacity in bytes, as reported by F_GETPIPE_SZ
};

struct PoolStats {
  uint32_t in_use = 0;
  uint32_t idle = 0;
  uint64_t created = 0;
  uint64_t closed = 0;
  uint64_t acquire_failures = 0;
  uint64_t bytes_moved = 0;
  uint32_t pipe_size = 0;   // requested size after clamping to the system maximum
  uint32_t max_idle = 0;
  uint32_t max_pipes = 0;   // 0: no cap on pipes in use
  uint32_t system_max = 0;  // /proc/sys/fs/pipe-max-size
};

class PipePool {
 public:
  PipePool();
  ~PipePool();
  // Returns the effective pipe size. Idle pipes of another size are closed.
  uint32_t Configure(uint32_t pipe_size, uint32_t max_idle, uint32_t max_pipes);
  // 0 on success, else an errno value (EMFILE, ENFILE, EAGAIN when the cap is reached).
  int Acquire(Pipe* out);
  // `maybe_dirty` pipes are closed rather than reused.
  void Release(const Pipe& p, bool maybe_dirty);
  // Closes idle pipes, the longest idle first, until at most `keep` are left; returns how many closed.
  uint32_t Trim(uint32_t keep);
  void AddMoved(uint64_t n) { stats_.bytes_moved += n; }
  PoolStats Stats() const;

 private:
  void ClosePipe(const Pipe& p);
  std::vector<Pipe> idle_;
  PoolStats stats_;
};

}  // namespace sluice
