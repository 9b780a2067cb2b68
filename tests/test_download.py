"""jaxnet.download and load_dataset(download=True), against an HTTP server on 127.0.0.1.

The server serves fresh random IDX files and a small CIFAR-10-format archive; the table of
official files is patched with their real sizes and sums. Nothing here reaches the internet.
"""

import gzip
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time

import numpy as np
import pytest

from jaxnet import download
from jaxnet.data import DatasetNotFoundError, load_dataset
from jaxnet.download import ENV_VAR, File, Official
from jaxnet.training import config as config_lib
from jaxnet.training import trainer

IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool):
        served = self.server.served
        served.requests.append((self.command, self.path))
        content = served.files.get(self.path)
        if content is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            # a transfer cut off midway: half the promised bytes, then the connection closes
            self.wfile.write(content[: len(content) // 2] if self.path in served.cut else content)
            self.close_connection = True

    def log_message(self, *args):
        pass


class Served:
    """An HTTP server on 127.0.0.1: `files` {path: bytes}; paths in `cut` send half, then close."""

    def __init__(self):
        self.files, self.cut, self.requests = {}, set(), []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.served = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self) -> list[str]:
        return [path for command, path in self.requests if command == "GET"]


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy in the environment must not intercept
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
    served = Served()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def publish(monkeypatch, server: Served, name: str, files: dict, unpack: str = "") -> None:
    """Serve `files` {name: bytes} as MIRROR/NAME/FILE, and make them the official files."""
    for file, content in files.items():
        server.files[f"/{name}/{file}"] = content
    table = tuple(
        File(file, len(content), hashlib.sha256(content).hexdigest())
        for file, content in files.items()
    )
    monkeypatch.setitem(download.OFFICIAL, name, Official("http://unused.invalid/", table, unpack))


@pytest.fixture
def mnist(server, monkeypatch):
    """Fresh random MNIST-format files: {file: bytes} and the (images, labels) of each split."""
    rng = np.random.default_rng()
    shape = tuple(int(d) for d in rng.integers(3, 9, 2))
    n_train, n_test = (int(n) for n in rng.integers(5, 40, 2))
    arrays = {
        "train": (rng.integers(0, 256, (n_train, *shape)), rng.integers(0, 10, n_train)),
        "test": (rng.integers(0, 256, (n_test, *shape)), rng.integers(0, 10, n_test)),
    }
    contents = [idx_gz(a) for a in (*arrays["train"], *arrays["test"])]
    files = dict(zip(IDX_NAMES, contents))
    publish(monkeypatch, server, "mnist", files)
    return files, arrays


def load(cache, server, name="mnist", **kwargs):
    kwargs.setdefault("log", None)
    return load_dataset(
        name, download=True, cache_dir=str(cache), mirror=server.url, validation_size=0, **kwargs
    )


def pixels(split) -> np.ndarray:
    return np.rint(split.images * 255).astype(np.int64)


def assert_mnist_equal(d, arrays):
    for split in ("train", "test"):
        images, labels = arrays[split]
        assert (pixels(getattr(d, split))[..., 0] == images).all()
        assert (getattr(d, split).labels == labels).all()


# ------------------------------------------------------------------------------------ downloads


def test_mnist_is_downloaded_checked_and_afterwards_read_from_the_cache(server, mnist, tmp_path):
    files, arrays = mnist
    cache, lines = tmp_path / "cache", []
    d = load(cache, server, log=lines.append)
    assert d.source == (
        f"official files in {cache}/mnist, downloaded from {server.url}/mnist/ if missing"
    )
    assert_mnist_equal(d, arrays)
    assert f"mnist: download cache {cache} (set by cache_dir (--config.dataset.cache_dir))" in lines
    assert sum(line.startswith(f"downloading {server.url}/mnist/") for line in lines) == 4
    assert sorted(os.listdir(cache / "mnist")) == sorted([*IDX_NAMES, ".lock"])
    for name, content in files.items():
        assert (cache / "mnist" / name).read_bytes() == content
    assert server.requests == [("HEAD", f"/mnist/{IDX_NAMES[0]}")] + [
        ("GET", f"/mnist/{name}") for name in IDX_NAMES
    ]

    server.requests.clear()
    again = load(cache, server)  # complete in the cache: no request at all
    assert server.requests == [] and again.source == d.source
    assert_mnist_equal(again, arrays)


def test_local_data_comes_before_the_download(server, mnist, tmp_path):
    files, arrays = mnist
    local = tmp_path / "local"
    local.mkdir()
    for name, content in files.items():
        (local / name).write_bytes(content)
    d = load(tmp_path / "cache", server, data_dir=str(local))
    assert d.source == f"IDX files in {local}" and server.requests == []
    assert not (tmp_path / "cache").exists()
    assert_mnist_equal(d, arrays)


def test_two_loads_at_once_download_each_file_once(server, mnist, tmp_path):
    _, arrays = mnist
    results = [None, None]

    def run(i):
        results[i] = load(tmp_path / "cache", server)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for d in results:
        assert_mnist_equal(d, arrays)
    assert sorted(server.gets()) == sorted(f"/mnist/{name}" for name in IDX_NAMES)


def cifar_archive(rng, extra: dict) -> tuple[bytes, dict]:
    """A CIFAR-10-format .tar.gz of fresh random batches; and {batch name: records}."""
    records = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        members = {}
        for name in CIFAR_BATCHES:
            r = rng.integers(0, 256, (int(rng.integers(1, 4)), 3073), dtype=np.uint8)
            r[:, 0] %= 10
            records[name] = r
            members[f"cifar-10-batches-bin/{name}"] = r.tobytes()
        for path, content in {**members, **extra}.items():
            info = tarfile.TarInfo(path)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue(), records


def test_cifar10_archive_is_downloaded_and_unpacked_whole(server, monkeypatch, tmp_path):
    rng = np.random.default_rng()
    extra = {"cifar-10-batches-bin/batches.meta.txt": b"airplane\n", "../escaped.bin": b"x"}
    archive, records = cifar_archive(rng, extra)
    publish(monkeypatch, server, "cifar10", {"cifar.tar.gz": archive}, "cifar-10-batches-bin")
    cache = tmp_path / "cache"
    leftover = cache / "cifar10" / "cifar-10-batches-bin.part"  # as if an unpack had been killed
    leftover.mkdir(parents=True)
    (leftover / "data_batch_1.bin").write_bytes(b"garbage")

    d = load(cache, server, name="cifar10")
    batches = cache / "cifar10" / "cifar-10-batches-bin"
    assert d.source == (
        f"official files in {cache}/cifar10, downloaded from {server.url}/cifar10/ if missing"
    )
    assert sorted(os.listdir(cache / "cifar10")) == [".lock", "cifar-10-batches-bin"]
    assert sorted(os.listdir(batches)) == sorted([*CIFAR_BATCHES, "batches.meta.txt"])
    assert not (tmp_path / "escaped.bin").exists() and not (cache / "escaped.bin").exists()
    train = np.concatenate([records[name] for name in CIFAR_BATCHES[:-1]])
    for split, rows in (("train", train), ("test", records["test_batch.bin"])):
        expected = rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        assert (pixels(getattr(d, split)) == expected).all()
        assert (getattr(d, split).labels == rows[:, 0]).all()
    server.requests.clear()
    assert load(cache, server, name="cifar10").source == d.source and server.requests == []


# --------------------------------------------------------------------------------- refused files


@pytest.mark.parametrize("damage", ["a flipped byte", "extra bytes", "missing bytes"])
def test_a_damaged_file_is_refused_and_not_kept(server, mnist, tmp_path, damage):
    files, arrays = mnist
    rng = np.random.default_rng()
    name = str(rng.choice(IDX_NAMES))
    good = files[name]
    bad = bytearray(good)
    if damage == "a flipped byte":
        bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
    elif damage == "extra bytes":
        bad += rng.bytes(int(rng.integers(1, 100)))
    else:  # a server that says the short file is all there is
        del bad[int(rng.integers(1, len(bad))) :]
    server.files[f"/mnist/{name}"] = bytes(bad)
    url = f"{server.url}/mnist/{name}"
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError) as error:
        load(cache, server)
    expected = {
        "a flipped byte": (
            f"{url}: SHA-256 {hashlib.sha256(bad).hexdigest()}, expected "
            f"{hashlib.sha256(good).hexdigest()}; refused as corrupt, deleted"
        ),
        "extra bytes": f"{url}: more than the expected {len(good)} bytes arrived; refused",
        "missing bytes": f"{url}: the transfer ended at {len(bad)} of {len(good)} bytes; refused",
    }[damage]
    message = str(error.value)
    assert message.startswith(f"dataset 'mnist' not found (its download failed: {expected}")
    assert not any(f.startswith(name) for f in os.listdir(cache / "mnist"))

    server.files[f"/mnist/{name}"] = good
    server.requests.clear()
    assert_mnist_equal(load(cache, server), arrays)
    # the files checked before the damaged one were kept, and not fetched again
    assert server.gets() == [f"/mnist/{n}" for n in IDX_NAMES[IDX_NAMES.index(name) :]]


def test_an_interrupted_transfer_leaves_nothing_usable(server, mnist, tmp_path):
    files, arrays = mnist
    name = IDX_NAMES[0]
    server.cut.add(f"/mnist/{name}")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetNotFoundError) as error:
        load(cache, server)
    size = len(files[name])
    assert (
        f"{server.url}/mnist/{name}: the transfer ended at {size // 2} of {size} bytes; "
        "refused, nothing kept"
    ) in str(error.value)
    assert os.listdir(cache / "mnist") == [".lock"]

    # a transfer killed outright leaves its .part: never read, overwritten by the next download
    (cache / "mnist" / f"{name}.part").write_bytes(files[name][: size // 3])
    server.cut.clear()
    assert_mnist_equal(load(cache, server), arrays)
    assert sorted(os.listdir(cache / "mnist")) == sorted([*IDX_NAMES, ".lock"])


# ------------------------------------------------------------------------------------- offline


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port


@pytest.fixture
def silent_port():
    """A port whose connections the kernel accepts and nothing ever answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.mark.parametrize("kind", ["closed port", "silent server", "no name resolution"])
def test_an_unreachable_host_fails_within_seconds(
    kind, closed_port, silent_port, tmp_path, monkeypatch
):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
    mirror = {
        "closed port": f"http://127.0.0.1:{closed_port}",
        "silent server": f"http://127.0.0.1:{silent_port}",
        "no name resolution": None,  # the official host, as an offline machine sees it
    }[kind]
    if mirror is None:

        def no_dns(*args, **kwargs):
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

        monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    cache = tmp_path / "cache"
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("mnist", download=True, cache_dir=str(cache), mirror=mirror, log=None)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, elapsed
    host = mirror[len("http://") :] if mirror else "storage.googleapis.com"
    problem = {
        "closed port": f"the download host {host} is unreachable: ConnectionRefusedError",
        "silent server": f"the download host {host} did not answer within 5 s",
        "no name resolution": f"the download host {host} is unreachable: gaierror: [Errno -3]",
    }[kind]
    message = str(error.value)
    assert message.startswith(f"dataset 'mnist' not found (its download failed: {problem}")
    url = download.source_url("mnist", mirror)
    assert (
        f"official files in {cache}/mnist, downloaded from {url} if missing: skipped, " in message
    )
    assert not cache.exists()  # nothing is written before the host has answered


# ------------------------------------------------------------------------- config and cache dir


def test_cache_dir_is_the_argument_else_the_environment_variable_else_the_default(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    default = f"{tmp_path}/home/.cache/jaxnet/datasets"
    hint = f"the default; --config.dataset.cache_dir or ${ENV_VAR} chooses another"
    assert download.cache_dir(None) == (default, hint)
    assert download.cache_dir("") == (default, hint)
    monkeypatch.setenv(ENV_VAR, "~/from-env")
    assert download.cache_dir(None) == (f"{tmp_path}/home/from-env", f"set by ${ENV_VAR}")
    assert download.cache_dir(str(tmp_path / "key")) == (
        str(tmp_path / "key"),
        "set by cache_dir (--config.dataset.cache_dir)",
    )


def test_the_trainer_logs_which_cache_dir_and_what_chose_it(tmp_path, monkeypatch, closed_port):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    config = config_lib.base_config()
    config.dataset.name = "mnist"
    config.dataset.mirror = f"http://127.0.0.1:{closed_port}"
    config_lib.validate(config)

    def logged_cache_line():
        lines = []
        with pytest.raises(DatasetNotFoundError, match="127.0.0.1.* is unreachable"):
            trainer._load_data(config, lines.append)
        return [line for line in lines if line.startswith("mnist: download cache")]

    default = f"{tmp_path}/home/.cache/jaxnet/datasets"
    assert logged_cache_line() == [
        f"mnist: download cache {default} (the default; --config.dataset.cache_dir or "
        f"${ENV_VAR} chooses another)"
    ]
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert logged_cache_line() == [f"mnist: download cache {tmp_path}/env (set by ${ENV_VAR})"]
    config.dataset.cache_dir = str(tmp_path / "key")
    assert logged_cache_line() == [
        f"mnist: download cache {tmp_path}/key (set by cache_dir (--config.dataset.cache_dir))"
    ]
    config.dataset.download = False
    lines = []
    with pytest.raises(DatasetNotFoundError, match=r"not found \(nothing is downloaded\)"):
        trainer._load_data(config, lines.append)
    assert not any("download cache" in line for line in lines)


def test_the_trainer_downloads_through_its_config_keys(server, mnist, tmp_path):
    _, arrays = mnist
    config = config_lib.base_config()
    config.dataset.name = "mnist"
    config.dataset.validation_size = 0.0
    config.dataset.cache_dir = str(tmp_path / "cache")
    config.dataset.mirror = server.url
    config_lib.validate(config)
    d = trainer._load_data(config, lambda line: None)
    assert d.source.startswith(f"official files in {tmp_path}/cache/mnist")
    assert_mnist_equal(d, arrays)

    saved = config_lib.from_json(config_lib.to_json(config))
    config.dataset.cache_dir, config.dataset.mirror, config.dataset.download = "", "", False
    allowed, refused = config_lib.resume_changes(saved, config)
    assert refused == [] and len(allowed) == 3
    config.dataset.mirror = "ftp://mirror.example/datasets"
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config)
    assert str(error.value) == (
        "config.dataset.mirror='ftp://mirror.example/datasets': expected '' or a URL starting "
        "with http:// or https://"
    )
