"""The datasets' official files, downloaded into a local cache, checked and written atomically.

`fetch(name, cache)` returns the folder holding a dataset's files as `jaxnet.data` reads them,
downloading first only what the cache lacks. Before any download the server is probed (`probe`:
an HTTP answer within PROBE_SECONDS), so an offline machine fails within seconds instead of
waiting on retries. Each file streams into FILE.part beside its final name and is renamed into
place only once its size and SHA-256 equal the table's (`OFFICIAL`): a corrupt or truncated
transfer is deleted and refused, and a killed one leaves only a .part that nothing reads and the
next download overwrites. An archive (CIFAR-10's) is unpacked into a .part folder that is
renamed into place whole. One process at a time writes a dataset's folder (a lock file there),
so runs that share a cache do not race.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import shutil
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import NamedTuple

__all__ = [
    "DEFAULT_CACHE",
    "ENV_VAR",
    "OFFICIAL",
    "DownloadError",
    "File",
    "Official",
    "cache_dir",
    "fetch",
    "fetch_file",
    "probe",
    "source_url",
]

ENV_VAR = "JAXNET_DATASETS_CACHE"
DEFAULT_CACHE = "~/.cache/jaxnet/datasets"

# An HTTP answer, not just a TCP connect: DNS, TCP, TLS and a HEAD request over a slow link.
PROBE_SECONDS = 5.0
# A download whose server sends nothing for this long is abandoned.
STALL_SECONDS = 30.0
PROGRESS_SECONDS = 10.0
_CHUNK = 1 << 20


class File(NamedTuple):
    """One official file: its name under the dataset's URL, its size in bytes, its SHA-256."""

    name: str
    size: int
    sha256: str


class Official(NamedTuple):
    """A dataset's official URL (a folder), its files, and the archive folder to unpack, if any."""

    url: str
    files: tuple[File, ...]
    unpack: str = ""


# The sizes and sums are TFDS's own (tensorflow_datasets/url_checksums/), for the same URLs.
OFFICIAL = {
    "mnist": Official(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        (
            File(
                "train-images-idx3-ubyte.gz",
                9912422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            File(
                "train-labels-idx1-ubyte.gz",
                28881,
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            File(
                "t10k-images-idx3-ubyte.gz",
                1648877,
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            File(
                "t10k-labels-idx1-ubyte.gz",
                4542,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        ),
    ),
    "fashion_mnist": Official(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        (
            File(
                "train-images-idx3-ubyte.gz",
                26421880,
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            ),
            File(
                "train-labels-idx1-ubyte.gz",
                29515,
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            ),
            File(
                "t10k-images-idx3-ubyte.gz",
                4422102,
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            ),
            File(
                "t10k-labels-idx1-ubyte.gz",
                5148,
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ),
        ),
    ),
    "cifar10": Official(
        "https://www.cs.toronto.edu/~kriz/",
        (
            File(
                "cifar-10-binary.tar.gz",
                170052171,
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            ),
        ),
        unpack="cifar-10-batches-bin",
    ),
}


class DownloadError(OSError):
    """A download that failed or was refused; str() is one line naming the file and why."""


def cache_dir(configured: str | None = None) -> tuple[str, str]:
    """(the folder, what chose it): `configured`, else $JAXNET_DATASETS_CACHE, else the default."""
    if configured:
        return _absolute(configured), "set by cache_dir (--config.dataset.cache_dir)"
    if os.environ.get(ENV_VAR):
        return _absolute(os.environ[ENV_VAR]), f"set by ${ENV_VAR}"
    return _absolute(DEFAULT_CACHE), (
        f"the default; --config.dataset.cache_dir or ${ENV_VAR} chooses another"
    )


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def source_url(name: str, mirror: str | None = None) -> str:
    """The folder URL of `name`'s files: MIRROR/NAME/ for a mirror, else the official one."""
    return f"{mirror.rstrip('/')}/{name}/" if mirror else OFFICIAL[name].url


def probe(url: str, seconds: float = PROBE_SECONDS) -> None:
    """Return once `url`'s server gives any HTTP answer within `seconds`, else DownloadError."""
    outcome = []

    def ask():
        try:
            # twice `seconds`, so that the join below, not this timeout, decides when it is late
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=2 * seconds):
                outcome.append(None)
        except urllib.error.HTTPError:  # an error status is an answer: the host is reachable
            outcome.append(None)
        except Exception as error:  # noqa: BLE001  (reported below, whatever it is)
            outcome.append(error)

    # a thread, because name resolution ignores urlopen's timeout
    asker = threading.Thread(target=ask, name="jaxnet-download-probe", daemon=True)
    asker.start()
    asker.join(seconds)
    host = urllib.parse.urlsplit(url).netloc or url
    if not outcome:
        raise DownloadError(f"the download host {host} did not answer within {seconds:g} s")
    if outcome[0] is not None:
        raise DownloadError(f"the download host {host} is unreachable: {_reason(outcome[0])}")


def _reason(error: BaseException) -> str:
    """One line saying why a request failed: the HTTP status, or the error under urllib's."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    return f"{type(error).__name__}: {error}"


def fetch(name: str, cache: str, mirror: str | None = None, log=print) -> str:
    """The folder in `cache` holding `name`'s files, downloading what it lacks first."""
    official = OFFICIAL[name]
    folder = os.path.join(cache, name)
    ready = os.path.join(folder, official.unpack) if official.unpack else folder
    if _complete(official, folder):
        return ready
    url = source_url(name, mirror)
    probe(url + official.files[0].name)
    try:
        os.makedirs(folder, exist_ok=True)
        with _locked(folder, log):
            if not _complete(official, folder):  # another process may have just finished it
                _fetch_missing(official, url, folder, log)
    except DownloadError:
        raise
    except OSError as error:
        where = error.filename or folder
        raise DownloadError(f"cannot write {where}: {error.strerror or error}") from None
    return ready


def _have(path: str, file: File) -> bool:
    # a file has its final name only once its sum was checked, so the size is check enough here
    return os.path.isfile(path) and os.path.getsize(path) == file.size


def _complete(official: Official, folder: str) -> bool:
    if official.unpack:
        return os.path.isdir(os.path.join(folder, official.unpack))
    return all(_have(os.path.join(folder, f.name), f) for f in official.files)


def _fetch_missing(official: Official, url: str, folder: str, log) -> None:
    for file in official.files:
        path = os.path.join(folder, file.name)
        if not _have(path, file):
            fetch_file(url + file.name, path, file, log)
    if official.unpack:
        for file in official.files:
            archive = os.path.join(folder, file.name)
            _unpack(archive, folder, official.unpack)
            os.remove(archive)  # the unpacked folder is what is read; the archive is 160 MiB


@contextlib.contextmanager
def _locked(folder: str, log):
    """Hold an exclusive lock on FOLDER/.lock: one writer per dataset folder."""
    with open(os.path.join(folder, ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process that is downloading into {folder}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, as does the process dying


def fetch_file(url: str, path: str, file: File, log=print) -> None:
    """Download `url` to `path` via PATH.part: renamed into place once size and SHA-256 match."""
    part = path + ".part"
    log(f"downloading {url} ({file.size / 2**20:.1f} MiB) to {path}")
    start = time.monotonic()
    try:
        try:
            response = urllib.request.urlopen(url, timeout=STALL_SECONDS)
        except (OSError, http.client.HTTPException) as error:
            raise DownloadError(f"{url}: {_reason(error)}") from None
        with response, open(part, "wb") as out:  # "wb": a killed transfer's .part is overwritten
            size, sha256 = _stream(response, out, url, file, log)
        if size < file.size:
            raise DownloadError(
                f"{url}: the transfer ended at {size} of {file.size} bytes; refused, nothing kept"
            )
        if size > file.size:
            raise DownloadError(
                f"{url}: more than the expected {file.size} bytes arrived; refused, nothing kept"
            )
        if sha256 != file.sha256:
            raise DownloadError(
                f"{url}: SHA-256 {sha256}, expected {file.sha256}; refused as corrupt, deleted"
            )
        os.replace(part, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
    log(f"downloaded {file.name} in {time.monotonic() - start:.1f} s; size and SHA-256 match")


def _stream(response, out, url: str, file: File, log) -> tuple[int, str]:
    """(bytes, SHA-256) copied from `response` to `out`, stopping past the expected size."""
    digest, size = hashlib.sha256(), 0
    last = time.monotonic()
    while size <= file.size:
        try:
            chunk = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as error:
            raise DownloadError(
                f"{url}: the transfer broke off after {size} of {file.size} bytes "
                f"({_reason(error)}); nothing kept"
            ) from None
        if not chunk:
            break
        size += len(chunk)
        digest.update(chunk)
        out.write(chunk)
        if time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            log(f"{file.name}: {size / 2**20:.1f} of {file.size / 2**20:.1f} MiB")
    return size, digest.hexdigest()


def _unpack(archive: str, folder: str, inner: str) -> None:
    """Unpack the files of the archive's folder `inner` into FOLDER/INNER, whole or not at all."""
    part = os.path.join(folder, inner + ".part")
    shutil.rmtree(part, ignore_errors=True)  # a killed unpack's leftovers
    os.makedirs(part)
    try:
        count = 0
        with tarfile.open(archive) as tar:
            for member in tar:
                where, base = os.path.split(os.path.normpath(member.name))
                if member.isfile() and where == inner:  # only plain names: nothing escapes part
                    with (
                        tar.extractfile(member) as src,
                        open(os.path.join(part, base), "wb") as dst,
                    ):
                        shutil.copyfileobj(src, dst, _CHUNK)
                    count += 1
        if not count:
            raise DownloadError(f"{archive}: no files in a folder {inner}/ to unpack")
        os.rename(part, os.path.join(folder, inner))
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise DownloadError(f"{archive}: cannot unpack: {_reason(error)}") from None
    finally:
        shutil.rmtree(part, ignore_errors=True)
