# Prints {pipe size: descriptors} for the pipes a process holds, as JSON: F_GETPIPE_SZ on
# /proc/<pid>/fd/<n>, which Node cannot call. Used by test/limits.test.ts.
import collections, fcntl, json, os, sys

F_GETPIPE_SZ = 1032
pid = sys.argv[1]
sizes = collections.Counter()
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
            continue
        f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
        sizes[fcntl.fcntl(f, F_GETPIPE_SZ)] += 1
        os.close(f)
    except OSError:
        pass
print(json.dumps(sizes))
