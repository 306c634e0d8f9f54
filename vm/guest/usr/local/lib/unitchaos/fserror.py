"""FAN_FS_ERROR: the kernel telling userspace that a filesystem hit an error.

fanotify with FAN_REPORT_FID and a filesystem mark (FAN_MARK_FILESYSTEM) on the volume's
mount point reports FAN_FS_ERROR events, each with an error code and a count of errors
folded into it. ext4 has sent them since Linux 5.16; XFS reports its shutdowns this way
since 7.0. On a kernel without them fanotify_mark() fails with EINVAL: that is reported
as "not supported by kernel X", never raised.

Standard library only (ctypes), imported by the deep health check and run on its own as
unitchaos-fserror (the remedy unit); it must work while the filesystem it watches is dead,
so nothing here touches the mount point after the mark is placed.
"""
import ctypes
import errno
import os
import select
import struct
import time

FAN_CLASS_NOTIF = 0x0
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_REPORT_FID = 0x200
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
FAN_FS_ERROR = 0x8000
FAN_Q_OVERFLOW = 0x4000
AT_FDCWD = -100
FAN_EVENT_INFO_TYPE_ERROR = 5
METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
INFO_HEADER = struct.Struct("=BBH")   # info_type, pad, len
ERROR_INFO = struct.Struct("=iI")     # error, error_count (after the header)


def kernel_release():
    return os.uname().release


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
    libc.fanotify_init.restype = ctypes.c_int
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    libc.fanotify_mark.restype = ctypes.c_int
    return libc


def parse_events(data):
    """The FAN_FS_ERROR events in one read() of a fanotify fd: [(error, error_count)]; an
    overflow shows as (None, 0)."""
    events, offset = [], 0
    while offset + METADATA.size <= len(data):
        event_len, _, _, metadata_len, mask, fd, _ = METADATA.unpack_from(data, offset)
        if event_len < METADATA.size:
            break
        if fd >= 0:
            os.close(fd)  # FID mode reports no fds, but never leak one
        if mask & FAN_Q_OVERFLOW:
            events.append((None, 0))
        elif mask & FAN_FS_ERROR:
            error, count, info = 0, 1, offset + metadata_len
            while info + INFO_HEADER.size <= offset + event_len:
                info_type, _, length = INFO_HEADER.unpack_from(data, info)
                if length < INFO_HEADER.size:
                    break
                if info_type == FAN_EVENT_INFO_TYPE_ERROR:
                    error, count = ERROR_INFO.unpack_from(data, info + INFO_HEADER.size)
                info += length
            events.append((error, count))
        offset += event_len
    return events


def describe_error(code):
    """FAN_FS_ERROR's error code (a positive errno, e.g. 5 or 117) as a name: EIO, EUCLEAN."""
    if code is None:
        return "overflow"
    return errno.errorcode.get(abs(code), f"E{code}")


class FsErrorWatch:
    """A FAN_FS_ERROR mark on the filesystem mounted at PATH. open() says whether the kernel
    supports it; wait() returns the next events."""

    def __init__(self, path):
        self.path, self.fd, self.unsupported = path, None, None

    def open(self):
        """(True, what is watched) or (False, why not): never raises."""
        if not os.path.ismount(self.path):
            # A mark on a plain directory would watch the filesystem beneath it (the root disk).
            return self._refuse(f"{self.path} is not a mount point")
        try:
            libc = _libc()
        except (OSError, AttributeError) as exc:  # a libc without fanotify
            return self._refuse(f"not supported by kernel {kernel_release()}: {exc}")
        fd = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC | FAN_NONBLOCK, os.O_RDONLY)
        if fd < 0:
            code = ctypes.get_errno()
            if code in (errno.EINVAL, errno.ENOSYS):
                return self._refuse(f"not supported by kernel {kernel_release()}: fanotify_init(FAN_REPORT_FID) "
                                    f"{errno.errorcode.get(code, code)}")
            return self._refuse(f"fanotify_init: {errno.errorcode.get(code, code)} {os.strerror(code)}")
        if libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_FS_ERROR, AT_FDCWD,
                              os.fsencode(self.path)) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            if code in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENODEV):
                return self._refuse(f"FAN_FS_ERROR not supported by kernel {kernel_release()} on {self.path}: "
                                    f"fanotify_mark {errno.errorcode.get(code, code)}")
            return self._refuse(f"fanotify_mark {self.path}: {errno.errorcode.get(code, code)} {os.strerror(code)}")
        self.fd = fd
        return True, f"FAN_FS_ERROR marked on the filesystem at {self.path} (kernel {kernel_release()})"

    def _refuse(self, reason):
        self.unsupported = reason
        return False, reason

    def wait(self, timeout=None):
        """The events that arrive within TIMEOUT seconds (None: until one does), each
        {"error", "error_name", "count", "monotonic", "wall"}; [] on timeout."""
        if self.fd is None:
            time.sleep(timeout or 0)
            return []
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        now, wall = time.monotonic(), time.time()
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        return [{"error": error, "error_name": describe_error(error), "count": count,
                 "monotonic": round(now, 6), "wall": round(wall, 6)} for error, count in parse_events(data)]

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
