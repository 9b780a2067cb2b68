"""Paths that may be local or remote (gs://, s3://, ...): every file jaxnet reads or writes.

`path(p)` is an `etils.epath.Path`: local paths go to `os` and `open` as before (with ~
expanded), remote ones to TensorFlow's gfile where TensorFlow is installed and else to fsspec
(gcsfs for gs://). Object stores have no folders, no append, no rename and no locks, so:

- `makedirs` does nothing remotely: a prefix exists once an object is written under it (and
  gcsfs would create a missing *bucket* from a mistyped name);
- `write_text` replaces a file atomically: locally a temporary file renamed over it, remotely
  one upload, which an object store makes visible whole or not at all;
- a file that grows (metrics.jsonl, TensorBoard events) is written whole at each flush by its
  owner (see jaxnet.training.reporting).
"""

from __future__ import annotations

import os
import re

from etils import epath

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(p) -> bool:
    """Whether `p` names a remote store (a URL such as gs://bucket/run) rather than a local path."""
    return bool(_SCHEME.match(os.fspath(p)))


def path(p, *names: str) -> epath.Path:
    """`p`/names as an epath.Path; a local one with ~ expanded."""
    p = os.fspath(p)
    return epath.Path(p if is_remote(p) else os.path.expanduser(p)).joinpath(*names)


def store(p) -> str | None:
    """The bucket of a remote `p` (gs://bucket/run -> gs://bucket); None for a local path."""
    match = _SCHEME.match(os.fspath(p))
    if not match:
        return None
    return match.group(0) + os.fspath(p)[match.end() :].split("/", 1)[0]


def shown(p) -> str:
    """`p` as the user should read it: a local path made absolute, a URL as it is."""
    p = os.fspath(p)
    return p if is_remote(p) else os.path.abspath(os.path.expanduser(p))


def join(p, *names: str) -> str:
    """`p`/names as a string (URLs keep their scheme)."""
    return os.fspath(path(p, *names))


def makedirs(p) -> None:
    """Create the local folder `p` and its parents; nothing for a remote prefix."""
    if not is_remote(p):
        os.makedirs(path(p), exist_ok=True)


def write_text(p, text: str) -> None:
    """Replace the file `p` with `text` atomically: readers see the old file or the new one."""
    if is_remote(p):
        path(p).write_text(text)
        return
    target = path(p)
    tmp = f"{target}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, target)


def reason(error: OSError) -> str:
    """What went wrong, on one line: the OS's words, or a remote store's message."""
    if error.strerror:
        return error.strerror
    text = " ".join(str(error).split()) or type(error).__name__
    # gcsfs raises FileNotFoundError(name) for a 404: a missing object or bucket
    return f"not found: {text}" if isinstance(error, FileNotFoundError) else text


# the top-level packages of the remote stores' clients, whose own errors are not OSErrors
_CLIENTS = ("gcsfs", "google", "aiohttp", "s3fs", "botocore", "adlfs", "fsspec")


def is_storage_error(error: BaseException) -> bool:
    """Whether `error` comes from a remote store's client (an HTTP error, refused credentials)."""
    return type(error).__module__.split(".")[0] in _CLIENTS
