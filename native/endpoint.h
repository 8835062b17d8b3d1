// A socket's side of the splice engine, kept for the socket's whole life: a dup()ed
// descriptor and one libuv poll handle. A keep-alive connection pays that set-up (dup,
// FIONBIO, libuv's epoll check, and their undoing) once, not once per body. A pump reads
// from one endpoint and writes to another; a socket may be read by one pump while another
// writes to it (the two directions of a tunnel), so an endpoint has a slot for each.
#pragma once
#include <uv.h>

namespace sluice {

class Pump;

class Endpoint {
 public:
  // Duplicates `fd` and makes the poll handle; 0 or an errno value (nothing held then).
  int Init(uv_loop_t* loop, int fd);
  int fd() const { return fd_; }

  // Takes the reading or the writing slot for `pump`: EBUSY when another pump holds it.
  int Attach(Pump* pump, bool reading);
  // Gives the slot back and stops waiting for it.
  void Detach(Pump* pump);
  // Whether the pump in the slot waits for the socket to be readable (writable); 0 or errno.
  int Want(Pump* pump, bool want);

  // Fails the pumps still attached, stops polling, closes the duplicate, deletes itself.
  void Close();

 private:
  static void OnPoll(uv_poll_t* h, int status, int events);
  static void OnClosed(uv_handle_t* h);
  int Update();

  int fd_ = -1;
  uv_poll_t poll_;
  bool poll_inited_ = false;
  bool closing_ = false;
  Pump* reader_ = nullptr;
  Pump* writer_ = nullptr;
  bool want_read_ = false;
  bool want_write_ = false;
  int events_ = 0;  // what the poll handle was started with; 0: stopped
};

}  // namespace sluice
