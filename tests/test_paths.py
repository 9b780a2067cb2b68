"""jaxnet.paths: local paths behave as os and open do (~ expanded); URLs keep their scheme."""

import os

from jaxnet import paths


def test_local_paths_expand_the_home_folder_and_stay_relative():
    assert not paths.is_remote("runs/a") and not paths.is_remote("/tmp/a:b")
    assert paths.is_remote("gs://bucket/run") and paths.is_remote("s3://bucket")
    assert paths.join("~/runs", "x") == os.path.join(os.path.expanduser("~"), "runs", "x")
    assert paths.join("runs/a/", "config.json") == "runs/a/config.json"
    assert paths.shown("runs/a") == os.path.abspath("runs/a")


def test_urls_keep_their_scheme_and_name_their_bucket():
    assert paths.join("gs://bucket/run/", "checkpoints") == "gs://bucket/run/checkpoints"
    assert paths.shown("gs://bucket/run") == "gs://bucket/run"
    assert paths.store("gs://bucket/run/x") == "gs://bucket" and paths.store("runs/x") is None


def test_write_text_replaces_a_local_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    paths.write_text(str(target), "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["config.json"]


def test_makedirs_makes_local_folders_and_nothing_remotely(tmp_path):
    paths.makedirs(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()
    paths.makedirs("gs://no-such-bucket/run")  # no request: a prefix needs no folder


def test_reason_is_one_line_for_os_and_remote_errors():
    assert paths.reason(OSError(13, "Permission denied")) == "Permission denied"
    assert paths.reason(FileNotFoundError("bucket/x")) == "not found: bucket/x"
    assert paths.reason(OSError("Forbidden: b/x\nno access")) == "Forbidden: b/x no access"


def test_a_remote_clients_own_errors_are_told_apart():
    http_error = type("HttpError", (Exception,), {"__module__": "gcsfs.retry"})
    assert paths.is_storage_error(http_error("401 Invalid Credentials"))
    assert not paths.is_storage_error(RuntimeError("a bug"))
