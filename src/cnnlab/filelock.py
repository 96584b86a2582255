"""An exclusive lock on an open file that another process cannot take while it is held.

The operating system's own lock — `fcntl.flock` on Linux and macOS, `msvcrt.locking` on Windows — rather than a lock
file created with O_EXCL: the OS drops it when its holder exits, however it exits, so a run killed with SIGKILL
never leaves its folder locked. Each module is imported only where it exists, so `import cnnlab` works on both.
"""

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everywhere but Windows
    msvcrt = None

from cnnlab.errors import CnnlabError


def try_lock(handle) -> bool:
    """Lock the open file `handle` exclusively without waiting; False if another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:
        handle.seek(0)  # msvcrt locks bytes from the current position: always the first one, past the end or not
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except PermissionError:  # EACCES: the byte is locked through another handle
            return False
        return True
    raise CnnlabError(f"cannot lock {handle.name}: this Python has neither fcntl (POSIX) nor msvcrt (Windows), so "
                      "cnnlab cannot keep a second process out of the run folder")


def unlock(handle) -> None:
    """Release what try_lock took."""
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
