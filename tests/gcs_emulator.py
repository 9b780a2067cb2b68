"""A real GCS JSON API on 127.0.0.1 for tests: gcp-storage-emulator in a subprocess, in memory.

`client_env(url)` holds the settings that point every client jaxnet uses at it, and keep each
from looking for credentials (which would probe the cloud metadata server):

    STORAGE_EMULATOR_HOST             gcsfs (etils.epath's gs://) and google-cloud-storage (orbax
                                      asks it whether a bucket has hierarchical namespace)
    FSSPEC_GS                         gcsfs: anonymous, no credential lookup
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT gcsfs: off, or it first asks the Storage Control gRPC API
                                      (which the emulator lacks) for the bucket's type, 60 s each
    TENSORSTORE_GCS_HTTP_URL          tensorstore, which orbax writes the arrays with
    GOOGLE_AUTH_TOKEN_FOR_TESTING     tensorstore: a fixed token, no credential lookup
    NO_GCE_CHECK                      google-auth: never probe the metadata server

One gap of the emulator is filled here, in the emulator's process: its media downloads lack the
x-goog-generation header that GCS sends. tensorstore takes an object's generation from it, reads
a missing one as 0, and then refuses that generation in its next conditional request to the
object ("Malformed StorageGeneration": orbax's saves failed now and then). No client setting
avoids those requests, so `_serve` adds the header from the object's metadata.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "jaxnet-test"


def client_env(url: str) -> dict[str, str]:
    """The environment variables that send jaxnet's storage clients to the emulator at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "FSSPEC_GS": json.dumps({"token": "anon"}),
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "NO_GCE_CHECK": "true",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "/", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running(timeout: float = 30.0):
    """The emulator's URL while it runs, with BUCKET created; stopped afterwards."""
    port = _free_port()
    argv = [sys.executable, __file__, "start", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--in-memory", "--default-bucket", BUCKET, "--quiet"]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gcp-storage-emulator did not start on {url}")
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _with_generation(download):
    """The emulator's download handler, answering with the object's generation headers too."""

    def handler(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status in (200, 206):
            params = request.params
            obj = storage.get_file_obj(params["bucket_name"], params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])

    return handler


def _serve(args) -> None:
    """gcp-storage-emulator's command line, with generation headers on downloads."""
    from gcp_storage_emulator import __main__ as emulator
    from gcp_storage_emulator.handlers import objects

    objects.download = _with_generation(objects.download)  # objects.get (alt=media) calls it
    emulator.main(args)


if __name__ == "__main__":
    _serve(sys.argv[1:])
