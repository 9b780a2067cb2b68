"""tpu_scripts/launch.py: the dry-run plan, the failure policy, and argument errors.

The delete step always runs.

Nothing here needs gcloud or a network: the plan is printed or run with an injected runner.
"""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tpu_scripts", "launch.py")

_spec = importlib.util.spec_from_file_location("tpu_launch", SCRIPT)
launch = importlib.util.module_from_spec(_spec)
sys.modules["tpu_launch"] = launch
_spec.loader.exec_module(launch)

TRICKY = ["--config.model.name=a b", '--config.note=it\'s "quoted"', "--config.epochs=3"]


TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]


def dry_run(*argv):
    return subprocess.run(
        [sys.executable, SCRIPT, "--dry-run", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )


def commands(stdout):
    """The printed commands, split back into argv lists as a shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def remote(argv):
    """The --command of a gcloud ssh argv, split as the worker's shell would."""
    return argv[argv.index("--command") + 1]


def test_dry_run_prints_every_step_in_order_and_quotes_overrides(tmp_path):
    name = f"dry-{os.getpid()}"
    run = dry_run(
        "--name", name, "--zone", "us-central2-b", "--results-dir", str(tmp_path / "res"), *TRICKY
    )
    assert run.returncode == 0, run.stderr
    headers = re.findall(r"^# step (\d+)/8: (\w+)", run.stdout, re.MULTILINE)
    assert headers == list(
        zip(
            "12345678",
            ["archive", "create", "copy", "unpack", "install", "train", "fetch", "delete"],
        )
    )
    archive, create, copy, unpack, install, train, fetch, delete = commands(run.stdout)
    tarball = os.path.join(launch.tempfile.gettempdir(), f"jaxnet-{name}.tar.gz")

    assert archive == [
        "git",
        "-C",
        ROOT,
        "archive",
        "--format=tar.gz",
        f"--output={tarball}",
        "HEAD",
    ]
    assert create == [
        *TPU_VM,
        "create",
        name,
        "--zone=us-central2-b",
        "--accelerator-type=v4-8",
        "--version=tpu-ubuntu2204-base",
    ]
    assert copy == [
        *TPU_VM,
        "scp",
        tarball,
        f"{name}:jaxnet.tar.gz",
        "--zone=us-central2-b",
        "--worker=all",
    ]
    ssh_all = [*TPU_VM, "ssh", name, "--zone=us-central2-b", "--worker=all"]
    assert unpack[:8] == ssh_all
    assert (
        remote(unpack)
        == "rm -rf ~/jaxnet && mkdir -p ~/jaxnet && tar -xzf ~/jaxnet.tar.gz -C ~/jaxnet"
    )
    assert "--worker=all" in install
    assert (
        remote(install)
        == 'cd ~/jaxnet && python3 -m pip install -U "jax[tpu]" && python3 -m pip install -e .'
    )

    # Training runs on every worker at once, and each override reaches train.py as one intact word.
    assert train[:8] == ssh_all
    cd, on_worker = remote(train).split(" && ")
    assert cd == "cd ~/jaxnet"
    assert shlex.split(on_worker) == [
        "python3",
        "train.py",
        "--config",
        "configs/tpu.py",
        "--workdir",
        f"~/jaxnet_runs/{name}",
        *TRICKY,
    ]
    assert (
        on_worker.split()[5] == f"~/jaxnet_runs/{name}"
    )  # the ~ is left unquoted so the worker's shell expands it

    assert fetch == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        f"{name}:jaxnet_runs/{name}",
        str(tmp_path / "res"),
        "--zone=us-central2-b",
        "--worker=0",
        "--recurse",
    ]
    assert delete == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "delete",
        name,
        "--zone=us-central2-b",
        "--quiet",
    ]
    # A dry run runs nothing: no tarball, no results folder.
    assert not os.path.exists(tarball) and not (tmp_path / "res").exists()


def test_dry_run_with_repo_url_project_spot_v5e_and_a_gs_workdir():
    run = dry_run(
        "--name",
        "pod",
        "--zone",
        "us-west4-a",
        "--project",
        "my-proj",
        "--accelerator-type",
        "v5litepod-16",
        "--spot",
        "--repo-url",
        "https://example.com/jaxnet.git",
        "--ref",
        "v1",
        "--workdir",
        "gs://bkt/runs/a",
        "--",
        "--config.epochs=2",
    )
    assert run.returncode == 0, run.stderr
    create, clone, install, train, fetch, delete = commands(run.stdout)
    assert create[4:] == [
        "create",
        "pod",
        "--zone=us-west4-a",
        "--project=my-proj",
        "--accelerator-type=v5litepod-16",
        "--version=v2-alpha-tpuv5-lite",
        "--spot",
    ]
    assert remote(clone) == (
        "rm -rf ~/jaxnet && git clone https://example.com/jaxnet.git ~/jaxnet && cd ~/jaxnet && "
        "git checkout v1"
    )
    assert all(
        "--project=my-proj" in argv and "--worker=all" in argv for argv in (clone, install, train)
    )
    assert remote(train).endswith(
        "train.py --config configs/tpu.py --workdir gs://bkt/runs/a --config.epochs=2"
    )
    assert fetch == ["gcloud", "storage", "cp", "--recursive", "gs://bkt/runs/a", "runs"]
    assert delete[-3:] == ["--zone=us-west4-a", "--project=my-proj", "--quiet"]
    # v5litepod-16 is four hosts: no warning, since the workdir is shared.
    assert "warning" not in run.stderr


def test_keep_vm_drops_the_delete_step_and_says_how_to_delete():
    run = dry_run(
        "--name",
        "kept",
        "--zone",
        "europe-west4-b",
        "--accelerator-type",
        "v5p-8",
        "--preemptible",
        "--keep-vm",
    )
    assert run.returncode == 0, run.stderr
    argvs = commands(run.stdout)
    assert [a[4] for a in argvs if a[0] == "gcloud" and a[1] == "compute"] == [
        "create",
        "scp",
        "ssh",
        "ssh",
        "ssh",
        "scp",
    ]
    assert "--version=v2-alpha-tpuv5" in argvs[1] and "--preemptible" in argvs[1]
    assert (
        "gcloud compute tpus tpu-vm delete kept --zone=europe-west4-b --quiet" in run.stdout
    )  # in a comment only


def test_local_workdir_on_a_multi_host_slice_warns():
    run = dry_run("--name", "big", "--zone", "us-central2-b", "--accelerator-type", "v4-32")
    assert run.returncode == 0 and "warning: v4-32 spans several hosts" in run.stderr


class FakeGcloud:
    """Records each argv; fails (like check=True) or raises KeyboardInterrupt at the named steps."""

    def __init__(self, fail=(), interrupt=()):
        self.calls, self.fail, self.interrupt = [], set(fail), set(interrupt)

    @staticmethod
    def step_of(argv):
        text = " ".join(argv)
        for name, marker in [
            ("archive", " archive "),
            ("create", "tpu-vm create"),
            ("delete", "tpu-vm delete"),
            ("train", "train.py"),
            ("install", "pip install"),
            ("unpack", "tar -xzf"),
            ("copy", ":jaxnet.tar.gz"),
            ("clone", "git clone"),
            ("fetch", "--worker=0"),
        ]:
            if marker in text:
                return name
        raise AssertionError(f"unexpected command {argv}")

    def __call__(self, argv):
        step = self.step_of(argv)
        self.calls.append(step)
        if step in self.interrupt:
            raise KeyboardInterrupt
        if step in self.fail:
            raise subprocess.CalledProcessError(7, list(argv))

    @property
    def ran(self):
        return self.calls


def launch_with(fake, *extra, tmp_path):
    argv = [
        "--name",
        f"t-{os.getpid()}",
        "--zone",
        "us-central2-b",
        "--results-dir",
        str(tmp_path / "res"),
        *extra,
    ]
    return launch.main(argv, runner=fake)


ALL = ["archive", "create", "copy", "unpack", "install", "train", "fetch", "delete"]


def test_a_clean_run_runs_every_step_once_and_exits_zero(tmp_path, capsys):
    fake = FakeGcloud()
    assert launch_with(fake, "--config.epochs=1", tmp_path=tmp_path) == 0
    assert fake.ran == ALL
    err = capsys.readouterr().err
    assert "done; results in" in err and "was deleted" in err
    assert (tmp_path / "res").is_dir()


def test_training_failure_still_fetches_then_deletes_and_names_the_step(tmp_path, capsys):
    fake = FakeGcloud(fail={"train"})
    assert launch_with(fake, tmp_path=tmp_path) == 1
    assert fake.ran == ALL  # fetch is attempted (partial metrics and checkpoints), delete always
    err = capsys.readouterr().err
    assert "step 'train' (6/8) failed: exited with status 7" in err
    assert "was deleted" in err


def test_failure_before_training_skips_fetch_but_still_deletes(tmp_path, capsys):
    fake = FakeGcloud(fail={"install"})
    assert launch_with(fake, tmp_path=tmp_path) == 1
    assert fake.ran == ["archive", "create", "copy", "unpack", "install", "delete"]
    assert "step 'install' (5/8) failed" in capsys.readouterr().err


def test_keep_vm_never_deletes_even_after_a_failure(tmp_path, capsys):
    fake = FakeGcloud(fail={"train"})
    assert launch_with(fake, "--keep-vm", tmp_path=tmp_path) == 1
    assert fake.ran == ["archive", "create", "copy", "unpack", "install", "train", "fetch"]
    err = capsys.readouterr().err
    assert "step 'train' (6/7) failed" in err and "--keep-vm" in err and "tpu-vm delete" in err


def test_ctrl_c_during_training_skips_fetch_and_deletes(tmp_path, capsys):
    fake = FakeGcloud(interrupt={"train"})
    assert launch_with(fake, tmp_path=tmp_path) == 130
    assert fake.ran == ["archive", "create", "copy", "unpack", "install", "train", "delete"]
    assert "step 'train' (6/8) failed: interrupted" in capsys.readouterr().err


def test_ctrl_c_during_delete_says_the_vm_may_still_exist(tmp_path, capsys):
    fake = FakeGcloud(fail={"train"}, interrupt={"delete"})
    assert launch_with(fake, tmp_path=tmp_path) == 130
    assert fake.ran[-1] == "delete"
    assert "may still exist" in capsys.readouterr().err


def test_failed_fetch_after_good_training_fails_the_run_but_deletes(tmp_path, capsys):
    fake = FakeGcloud(fail={"fetch"})
    assert launch_with(fake, tmp_path=tmp_path) == 1
    assert fake.ran == ALL
    assert "step 'fetch' (7/8) failed" in capsys.readouterr().err


def test_failed_create_still_tries_delete_and_a_failed_delete_is_reported(tmp_path, capsys):
    fake = FakeGcloud(fail={"create", "delete"})
    assert launch_with(fake, tmp_path=tmp_path) == 1
    assert fake.ran == [
        "archive",
        "create",
        "delete",
    ]  # a create that failed half-way may have left a VM
    err = capsys.readouterr().err
    assert "step 'create' (2/8) failed" in err and "step 'delete' (8/8) failed too" in err
    assert "may still exist (its delete step failed)" in err


def test_failed_archive_creates_no_vm(tmp_path):
    fake = FakeGcloud(fail={"archive"})
    assert launch_with(fake, tmp_path=tmp_path) == 1
    assert fake.ran == ["archive"]


def test_the_default_runner_raises_on_a_real_non_zero_exit():
    steps = [
        launch.Step("ok", (sys.executable, "-c", "pass"), "succeeds"),
        launch.Step("bad", (sys.executable, "-c", "raise SystemExit(3)"), "fails"),
        launch.Step("after", (sys.executable, "-c", "pass"), "skipped"),
        launch.Step("missing", ("no-such-command-jaxnet",), "cleanup", when=launch.CLEANUP),
    ]
    out = launch.execute(steps, log=lambda line: None)
    assert out.ran == ["ok", "bad"] and out.skipped == [
        "after",
        "missing",
    ]  # no create step: nothing to clean up
    assert out.failures == [("bad", "exited with status 3")] and out.exit_code == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--zone", "us-central2-b"], "--name"),
        (["--name", "a"], "--zone"),
        (["--name", "A_b", "--zone", "us-central2-b"], "--name 'A_b'"),
        (["--name", "a", "--zone", "central"], "--zone 'central'"),
        (
            ["--name", "a", "--zone", "us-central2-b", "--config", "configs/nope.py"],
            "--config 'configs/nope.py': no such file",
        ),
        (
            ["--name", "a", "--zone", "us-central2-b", "--epochs=3"],
            "unrecognized argument '--epochs=3'",
        ),
        (
            ["--name", "a", "--zone", "us-central2-b", "--config.epochs", "3"],
            "unrecognized argument '--config.epochs'",
        ),
        (
            ["--name", "a", "--zone", "us-central2-b", "--", "epochs=3"],
            "unrecognized argument 'epochs=3'",
        ),
        (
            ["--name", "a", "--zone", "us-central2-b", "--spot", "--preemptible"],
            "--preemptible: not allowed with argument --spot",
        ),
        (["--name", "a", "--zone", "us-central2-b", "--ref", "main"], "--ref needs --repo-url"),
        (
            ["--name", "a", "--zone", "us-central2-b", "--accelerator-type", "v9x-8"],
            "--version: no default runtime version",
        ),
        (["--name", "a", "--zone", "us-central2-b", "--workdir", "runs/x"], "--workdir 'runs/x'"),
        (["--name", "a", "--zone", "us-central2-b", "--remote-dir", "~/"], "--remote-dir '~/'"),
        (
            ["--name", "a", "--zone", "us-central2-b", "--workdir", "~/my runs"],
            "may not contain spaces",
        ),
    ],
)
def test_argument_errors_exit_2_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        launch.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_argument_error_from_the_command_line():
    run = dry_run("--name", "a", "--zone", "us-central2-b", "--config", "configs/missing.py")
    assert run.returncode == 2 and run.stdout == ""
    assert "error: --config 'configs/missing.py': no such file" in run.stderr
