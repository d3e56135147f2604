"""Forked worker processes fed over pipes, with no thread in the parent.

concurrent.futures' process pool runs two threads in the parent (each reserves an 8 MiB stack and a
64 MiB malloc arena of address space, which counts against RLIMIT_AS), and when its feeder thread fails
(out of memory) a queued job is lost and waiting for it never ends. Here each worker has a pipe for jobs
and one for answers, both read and written by the parent's one thread; a job goes to the worker with the
fewest outstanding, and the answers of one worker come back in the order its jobs went.

A message is a 4-byte big-endian length and a pickle. The parent bounds what it queues (the caller waits for
old answers before it sends more), so a worker never blocks on its answer pipe while the parent blocks on
its job pipe. A worker ignores SIGINT (the parent handles the interrupt and stops it) and never returns
into the parent's code: it ends with os._exit.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct

from .errors import GitreeError, WriteFailed

_LEN = struct.Struct(">I")
MAX_MESSAGE = 1 << 30


def _write_all(fd: int, data: bytes) -> None:
    mv = memoryview(data)
    while mv:
        mv = mv[os.write(fd, mv):]


def _read_exact(fd: int, n: int) -> bytes | None:
    parts = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            return None
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def _send(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, _LEN.pack(len(data)) + data)


def _recv(fd: int):
    head = _read_exact(fd, _LEN.size)
    if head is None:
        return _EOF
    (n,) = _LEN.unpack(head)
    if n > MAX_MESSAGE:
        raise WriteFailed(f"a worker process sent a message of {n} bytes")
    data = _read_exact(fd, n)
    if data is None:
        return _EOF
    return pickle.loads(data)


_EOF = object()


def _portable(e: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a GitreeError-shaped stand-in with its text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        cls = WriteFailed if isinstance(e, OSError) else GitreeError
        return cls(f"{type(e).__name__}: {e}")


def _serve(jobs_fd: int, answers_fd: int, func) -> None:
    while True:
        msg = _recv(jobs_fd)
        if msg is _EOF:
            return
        try:
            out = (True, func(msg))
        except Exception as e:
            out = (False, _portable(e))
        _send(answers_fd, out)


class Worker:
    __slots__ = ("pid", "jobs", "answers", "outstanding")

    def __init__(self, pid: int, jobs: int, answers: int):
        self.pid, self.jobs, self.answers, self.outstanding = pid, jobs, answers, 0


class Workers:
    """`n` forked processes, each running `init(*init_args)` once and then `func(job)` per job."""

    def __init__(self, n: int, func, init, init_args: tuple):
        self.workers: list[Worker] = []
        try:
            for _ in range(n):
                self._start(func, init, init_args)
        except BaseException:
            self.kill()
            raise

    def _start(self, func, init, init_args) -> None:
        jr, jw = os.pipe()
        ar, aw = os.pipe()
        pid = os.fork()
        if pid == 0:   # the worker: never returns into the caller
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)   # not the CLI's handler: a worker just ends
                for w in self.workers:   # the parent's ends to earlier workers: their EOF must not wait on us
                    os.close(w.jobs)
                    os.close(w.answers)
                os.close(jw)
                os.close(ar)
                init(*init_args)
                _serve(jr, aw, func)
                code = 0
            finally:
                os._exit(code)
        os.close(jr)
        os.close(aw)
        self.workers.append(Worker(pid, jw, ar))

    def submit(self, job) -> Worker:
        """Send a job to the least busy worker; its answer is taken with result(worker)."""
        w = min(self.workers, key=lambda w: w.outstanding)
        try:
            _send(w.jobs, job)
        except BrokenPipeError:
            raise self._died(w) from None
        w.outstanding += 1
        return w

    def result(self, w: Worker):
        """The answer to the oldest job of `w` not yet answered: its value, or its exception raised here."""
        ok, value = self._answer(w)
        w.outstanding -= 1
        if not ok:
            raise value
        return value

    def _answer(self, w: Worker):
        msg = _recv(w.answers)
        if msg is _EOF:
            raise self._died(w)
        return msg

    def _died(self, w: Worker) -> GitreeError:
        try:
            _, status = os.waitpid(w.pid, 0)
        except ChildProcessError:
            status = 0
        w.pid = 0
        if os.WIFSIGNALED(status):
            how = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with status {os.waitstatus_to_exitcode(status)}"
        return WriteFailed(f"a worker process {how} (out of memory?)")

    def close(self) -> None:
        """After every answer was taken: the workers see the end of their job pipes and exit."""
        for w in self.workers:
            os.close(w.jobs)
        for w in self.workers:
            if w.pid:
                os.waitpid(w.pid, 0)
            os.close(w.answers)
        self.workers = []

    def kill(self) -> None:
        """Stop every worker now (after a failure, or an interrupt): nothing they would still write matters."""
        for w in self.workers:
            if w.pid:
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for w in self.workers:
            if w.pid:
                try:
                    os.waitpid(w.pid, 0)
                except ChildProcessError:
                    pass
            for fd in (w.jobs, w.answers):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.workers = []


__all__ = ["Workers", "Worker", "MAX_MESSAGE"]
