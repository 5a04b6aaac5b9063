"""A command's output read while it runs, each stream kept as a rolling tail of
at most a limit: a command that prints without end (`cat /dev/zero`) costs
about the limit, not all it printed. Standard library only (Python >= 3.8): the
controller's local and SSH runners and the node agent's exec share it."""

import collections
import os
import selectors
import subprocess
import time

# Output beyond this is cut (the tail is kept): a runaway command must not
# exhaust the memory of the machine that reads it.
MAX_OUTPUT_BYTES = 32 * 1024 * 1024
CUT_MARK = b"[... output cut ...]\n"
CHUNK = 65536


class OutputTail(object):
    """The last `limit` bytes of a stream, kept while it is read."""

    def __init__(self, limit=MAX_OUTPUT_BYTES):
        self.limit = limit
        self.cut = False
        self._chunks = collections.deque()
        self._size = 0

    def add(self, data):
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        # Drop whole chunks from the front while what remains still fills the limit.
        while self._size - len(self._chunks[0]) >= self.limit:
            self._size -= len(self._chunks.popleft())
            self.cut = True

    def value(self):
        excess = self._size - self.limit
        if excess > 0:  # trim the first chunk rather than copy everything twice
            self._chunks[0] = self._chunks[0][excess:]
            self._size = self.limit
            self.cut = True
        return b"".join([CUT_MARK] + list(self._chunks) if self.cut else self._chunks)


def pump(proc, stdin, out, err, deadline):
    """Feed stdin and read both outputs into their tails until the command exits;
    False at the deadline (time.monotonic()). communicate() would hold all the
    output until the end."""
    with selectors.DefaultSelector() as selector:
        tails = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        for fd in tails:
            selector.register(fd, selectors.EVENT_READ)
        pending = memoryview(stdin)
        if proc.stdin is not None:
            if pending:
                os.set_blocking(proc.stdin.fileno(), False)
                selector.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in selector.select(min(left, 1.0)):
                if key.fd in tails:
                    data = os.read(key.fd, CHUNK)
                    if data:
                        tails[key.fd].add(data)
                    else:
                        selector.unregister(key.fd)
                    continue
                try:
                    pending = pending[os.write(key.fd, pending[:CHUNK]):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    pending = pending[:0]  # the command does not read its stdin
                if not pending:
                    selector.unregister(key.fd)
                    proc.stdin.close()
    left = deadline - time.monotonic()
    try:
        proc.wait(timeout=max(left, 0.01))
    except subprocess.TimeoutExpired:
        return False
    return True
