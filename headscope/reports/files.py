"""Files a report job writes: atomically, under names of this run, failures as one-line errors.

- Every file is written to a temporary beside its final name and renamed into
  place (`atomic_write_bytes`; `Staging` for a set of files published together
  only once all are complete), so a reader never sees a partial file.
- A temporary's name carries this run's host and pid
  (`.<name>.<host>-<pid>-<random>.tmp`); `clean_stale` removes those of runs
  that are no longer alive on this host, and any older than STALE_AFTER_S,
  never the live temporaries of a concurrent run in the same folder.
- An OSError (no space left, a folder where a file goes, a file where a
  folder goes, no permission) becomes an `OutputError` naming the path and
  what to do (`output_error`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headscope.errors import OutputError

#: Temporaries of another (or an unknown) run are removed once this old, in seconds.
STALE_AFTER_S = 24 * 3600
_TAGGED = re.compile(r"\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_ELSEWHERE = "choose another output directory"


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def run_tag() -> str:
    """`<host>-<pid>`: who owns a temporary (read back by `clean_stale`)."""
    return f"{_host()}-{os.getpid()}"


def temporary(path: Path) -> Path:
    """Create (exclusively, owner-only) and return a new empty temporary beside `path`."""
    while True:
        tmp = path.parent / f".{path.name}.{run_tag()}-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def publish(tmp: Path, path: Path) -> None:
    """Give a finished temporary the usual permissions (it was created
    owner-only) and rename it onto `path` in one step."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def output_error(path: Path, error: OSError, what: str = "write") -> OutputError:
    """One line naming `path`, what went wrong and what to do."""
    code = error.errno
    reason = error.strerror or str(error) or type(error).__name__
    if code in _SPACE:
        advice = f"free some space or {_ELSEWHERE}"
    elif code == errno.EISDIR or (code in (errno.EEXIST, errno.ENOTEMPTY) and path.is_dir()):
        return OutputError(f"cannot {what} {path}: it is a directory; remove it or {_ELSEWHERE}")
    elif code in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(path)
        if blocker is not None:
            return OutputError(
                f"cannot {what} {path}: {blocker} is a file, not a directory; "
                f"remove it or {_ELSEWHERE}"
            )
        advice = _ELSEWHERE
    elif code in _DENIED:
        advice = "choose a writable output directory"
    else:
        advice = _ELSEWHERE
    return OutputError(f"cannot {what} {path}: {reason}; {advice}")


def _file_in_the_way(path: Path) -> Path | None:
    """The first of `path` and its parents that exists and is not a directory."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def make_dir(path: Path, what: str = "create the folder") -> None:
    """`mkdir -p path`, failures as an OutputError naming the path."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise output_error(path, error, what) from None
    if not path.is_dir():
        raise output_error(path, OSError(errno.ENOTDIR, "not a directory"), what)


def check_not_a_directory(path: Path) -> None:
    """An OutputError when a directory sits where the file `path` goes."""
    if path.is_dir():
        raise output_error(path, OSError(errno.EISDIR, "is a directory"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary; OutputError naming `path` on failure."""
    with Staging() as staging, staging.writing(path) as tmp:
        tmp.write_bytes(data)


class Staging:
    """Files published together: each is written to its temporary
    (`writing`); when the block ends without error every temporary is renamed
    onto its final name, else every temporary is removed and no final name
    changes. Failures are OutputErrors naming the file.

        with Staging() as staging:
            with staging.writing(out / "a.csv") as tmp:
                frame.to_csv(tmp)
            ...
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> Staging:
        return self

    @contextmanager
    def writing(self, path: Path) -> Iterator[Path]:
        check_not_a_directory(path)
        try:
            tmp = temporary(path)
        except OSError as error:
            raise output_error(path, error) from None
        self._staged.append((tmp, path))
        try:
            yield tmp
        except OSError as error:
            raise output_error(path, error) from None

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                for _, path in self._staged:
                    check_not_a_directory(path)
                for tmp, path in self._staged:
                    try:
                        publish(tmp, path)
                    except OSError as failure:
                        raise output_error(path, failure) from None
        finally:
            for tmp, _ in self._staged:
                tmp.unlink(missing_ok=True)


def clean_stale(folder: Path, patterns: tuple[str, ...] = (".*.tmp",)) -> None:
    """Remove temporaries a killed run left in `folder`: those whose run (same
    host, pid no longer alive) has ended, and any (another host's, an older
    headscope's unnamed ones) older than STALE_AFTER_S. A concurrent run's
    live temporaries stay."""
    now = time.time()
    host = _host()
    for pattern in patterns:
        for leftover in folder.glob(pattern):
            match = _TAGGED.search(leftover.name)
            try:
                ended = match and match["host"] == host and not _alive(int(match["pid"]))
                if ended or now - leftover.lstat().st_mtime > STALE_AFTER_S:
                    leftover.unlink(missing_ok=True)
            except OSError:
                continue  # best effort: a leftover that cannot be removed does no harm


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # cannot tell: keep it until it is stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
