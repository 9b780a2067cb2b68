"""tpu_scripts/launch.py: the checks before any step, the plan, the failure policy, bad arguments.

The delete step always runs; nothing is created for a config train.py would refuse or for data
the workers could not get.

Nothing here needs gcloud or a network: the plan is printed or run with an injected runner, and
the checks get a fake `query` (for gcloud storage ls) and a fake `probe` (for the download host).
"""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

from jaxnet import data
from jaxnet.training import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tpu_scripts", "launch.py")

_spec = importlib.util.spec_from_file_location("tpu_launch", SCRIPT)
launch = importlib.util.module_from_spec(_spec)
sys.modules["tpu_launch"] = launch
_spec.loader.exec_module(launch)

# valid keys with values that need quoting on the worker's shell
TRICKY = [
    "--config.model.hidden=(256, 128)",
    '--config.dataset.cache_dir=/x/it\'s "q"',
    "--config.epochs=3",
]
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"


@pytest.fixture(autouse=True)
def no_local_data(tmp_path, monkeypatch):
    """No dataset on this machine but what a test puts in tmp_path/cache or tmp_path/tfds."""
    monkeypatch.setenv("JAXNET_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(data, "SYSTEM_DIRS", {})


class FakeProbe:
    """Records each URL probed; raises like download.probe when the host is 'unreachable'."""

    def __init__(self, reachable=True):
        self.urls, self.reachable = [], reachable

    def __call__(self, url):
        self.urls.append(url)
        if not self.reachable:
            raise OSError("the download host www.cs.toronto.edu did not answer within 5 s")


class FakeQuery:
    """gcloud storage ls: answers from `listing` (a dict of URL -> object URLs), or fails."""

    def __init__(self, listing=None, stderr=None):
        self.calls, self.listing, self.stderr = [], listing or {}, stderr

    def __call__(self, argv):
        self.calls.append(list(argv))
        if self.stderr is not None:
            raise subprocess.CalledProcessError(1, list(argv), stderr=self.stderr)
        return "\n".join(self.listing.get(argv[-1], ())) + "\n"


def dry_run(*argv):
    """launch.py --dry-run in a child process (only for runs that stop before any probe)."""
    return subprocess.run(
        [sys.executable, SCRIPT, "--dry-run", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def planned(capsys, *argv, probe=None, query=None):
    """(exit status, stdout, stderr) of a dry run in this process, with fake checks."""
    fake = FakeGcloud()
    code = launch.main(
        ["--dry-run", "--zone", "us-central2-b", *argv],
        runner=fake,
        query=query or FakeQuery(),
        probe=probe or FakeProbe(),
    )
    assert fake.calls == []  # a dry run runs nothing
    out, err = capsys.readouterr()
    return code, out, err


def commands(stdout):
    """The printed commands, split back into argv lists as a shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def steps_of(stdout):
    return re.findall(r"^# step \d+/\d+: (\w+)", stdout, re.MULTILINE)


def remote(argv):
    """The --command of a gcloud ssh argv, split as the worker's shell would."""
    return argv[argv.index("--command") + 1]


def train_argv(stdout):
    """train.py's argv on the workers, as their shell splits the train step's command."""
    (train,) = [a for a in commands(stdout) if "--command" in a and "train.py" in remote(a)]
    assert "--worker=all" in train
    cd, on_worker = remote(train).split(" && ")
    assert cd == "cd ~/jaxnet"
    return shlex.split(on_worker)[2:]


def test_dry_run_prints_every_step_in_order_and_quotes_overrides(tmp_path, capsys):
    name = f"dry-{os.getpid()}"
    probe = FakeProbe()
    code, out, err = planned(
        capsys, "--name", name, "--results-dir", str(tmp_path / "res"), *TRICKY, probe=probe
    )
    assert code == 0, err
    headers = re.findall(r"^# step (\d+)/8: (\w+)", out, re.MULTILINE)
    assert headers == list(
        zip(
            "12345678",
            ["archive", "create", "copy", "unpack", "install", "train", "fetch", "delete"],
        )
    )
    archive, create, copy, unpack, install, train, fetch, delete = commands(out)
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
    assert train_argv(out) == [
        "--config",
        "configs/tpu.py",
        "--workdir",
        f"~/jaxnet_runs/{name}",
        *TRICKY,
    ]
    on_worker = remote(train).split(" && ")[1]
    assert (
        on_worker.split()[5] == f"~/jaxnet_runs/{name}"
    )  # the ~ is left unquoted so the worker's shell expands it

    assert fetch == [
        *TPU_VM,
        "scp",
        f"{name}:jaxnet_runs/{name}",
        str(tmp_path / "res"),
        "--zone=us-central2-b",
        "--worker=0",
        "--recurse",
    ]
    assert delete == [*TPU_VM, "delete", name, "--zone=us-central2-b", "--quiet"]
    # No bucket and no local copy: the workers download CIFAR-10, whose host was probed from here.
    assert probe.urls == [CIFAR_URL + "cifar-10-binary.tar.gz"]
    assert f"# checked: data: downloaded by each worker from {CIFAR_URL}" in out
    # A dry run runs nothing: no tarball, no results folder.
    assert not os.path.exists(tarball) and not (tmp_path / "res").exists()


def test_dry_run_with_repo_url_project_spot_v5e_and_a_gs_workdir(capsys):
    code, out, err = planned(
        capsys,
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
        "--config.epochs=5",
    )
    assert code == 0, err
    bucket, create, clone, install, train, fetch, delete = commands(out)
    assert bucket == ["gcloud", "storage", "ls", "gs://bkt"]  # the workdir's bucket
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
    assert train_argv(out) == [
        "--config",
        "configs/tpu.py",
        "--workdir",
        "gs://bkt/runs/a",
        "--config.epochs=5",
        "--config.compilation_cache_dir=gs://bkt/jaxnet/xla-cache",
    ]
    assert fetch == ["gcloud", "storage", "cp", "--recursive", "gs://bkt/runs/a", "runs"]
    assert delete[-3:] == ["--zone=us-west4-a", "--project=my-proj", "--quiet"]
    assert err == ""  # v5litepod-16 is several hosts, sharing the gs:// workdir: no complaint


def test_keep_vm_drops_the_delete_step_and_says_how_to_delete(capsys):
    code, out, err = planned(
        capsys,
        "--name",
        "kept",
        "--zone",
        "europe-west4-b",
        "--accelerator-type",
        "v5p-8",
        "--preemptible",
        "--keep-vm",
    )
    assert code == 0, err
    argvs = commands(out)
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
        "gcloud compute tpus tpu-vm delete kept --zone=europe-west4-b --quiet" in out
    )  # in a comment only


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
            ("fetch", "/jaxnet/runs/"),
            ("stage", "/jaxnet/datasets/"),
            ("bucket", "gcloud storage ls gs://"),
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


def launch_with(fake, *extra, tmp_path, probe=None, query=None):
    argv = [
        "--name",
        f"t-{os.getpid()}",
        "--zone",
        "us-central2-b",
        "--results-dir",
        str(tmp_path / "res"),
        *extra,
    ]
    return launch.main(argv, runner=fake, query=query or FakeQuery(), probe=probe or FakeProbe())


ALL = ["archive", "create", "copy", "unpack", "install", "train", "fetch", "delete"]


def test_a_clean_run_runs_every_step_once_and_exits_zero(tmp_path, capsys):
    fake = FakeGcloud()
    assert launch_with(fake, "--config.epochs=3", tmp_path=tmp_path) == 0
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
            ["--name", "a", "--zone", "us-central2-b", "--bucket", "My_Bucket!"],
            "--bucket 'My_Bucket!' is not a bucket name",
        ),
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


# ------------------------------------------------------------------------------------------------
# The checks before any step: the config as train.py checks it


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.epochz=5", "unknown config key config.epochz; did you mean config.epochs?"),
        ("--config.epochs=0", "config.epochs=0: out of range [1, inf)"),
        ("--config.epochs=five", "flag --config.epochs=five: invalid literal for int()"),
        ("--config.model.channels=(64,128,256,512,1024,2048)", "does not fit 32x32x3 inputs"),
    ],
)
def test_a_config_train_py_refuses_creates_nothing(override, message, tmp_path, capsys):
    fake, probe = FakeGcloud(), FakeProbe()
    assert launch_with(fake, "--", override, tmp_path=tmp_path, probe=probe) == 2
    out, err = capsys.readouterr()
    assert fake.calls == [] and probe.urls == [] and not (tmp_path / "res").exists()
    assert err.count("\n") == 1 and err.startswith("launch.py: error: train.py would refuse")
    assert message in err and out == ""


def test_a_batch_the_slice_cannot_split_creates_nothing(tmp_path, capsys):
    argv = ["--bucket", "bkt", "--accelerator-type", "v4-32", "--config.batch_size=1000"]
    fake = FakeGcloud()
    assert launch_with(fake, *argv, tmp_path=tmp_path) == 2 and fake.calls == []
    err = capsys.readouterr().err
    assert "1000 examples do not split over the 16 devices" in err and err.count("\n") == 1
    assert launch_with(fake, "--config.batch_size=1000", tmp_path=tmp_path) == 0  # v4-8: 4


def test_the_dry_run_refuses_a_typo_in_one_line_before_any_plan():
    run = dry_run("--name", "a", "--zone", "us-central2-b", "--", "--config.epochz=5")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (
        "launch.py: error: train.py would refuse this config: unknown config key "
        "config.epochz; did you mean config.epochs? (list them: python train.py --mode=keys)\n"
    )


def test_the_check_is_train_pys_own_on_the_argv_the_workers_get(tmp_path, monkeypatch, capsys):
    """validate_argv sees exactly train.py's argv on the workers, the launcher's flags included."""
    seen = []
    real = cli.validate_argv
    monkeypatch.setattr(cli, "validate_argv", lambda argv, d: seen.append(argv) or real(argv, d))
    cifar_cache(tmp_path)
    code, out, err = planned(capsys, "--name", "v", "--bucket", "bkt", "--config.epochs=5")
    assert code == 0, err
    worker = train_argv(out)
    assert worker[worker.index("--workdir") + 1] == "gs://bkt/jaxnet/runs/v"
    assert "--config.dataset.data_dir=gs://bkt/jaxnet/datasets/cifar10" in worker
    assert seen[-1] == [worker[0], os.path.join(ROOT, worker[1]), *worker[2:]]


def test_inputs_table_matches_the_datasets_train_py_loads():
    for name in ("digits", "synthetic"):
        loaded = data.load_dataset(name, log=None)
        assert cli.INPUTS[name] == (loaded.input_shape, loaded.num_classes)


def test_help_needs_no_jaxnet():
    code = (
        f"import runpy, sys\nsys.argv = [{SCRIPT!r}, '--help']\n"
        f"try:\n    runpy.run_path({SCRIPT!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    print('exit', e.code, 'jax' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert run.stdout.splitlines()[-1] == "exit 0 False" and "--bucket" in run.stdout


def test_without_jaxnet_one_line_says_so(monkeypatch, tmp_path, capsys):
    import jaxnet.training

    monkeypatch.delattr(jaxnet.training, "cli")
    monkeypatch.setitem(sys.modules, "jaxnet.training.cli", None)
    fake = FakeGcloud()
    assert launch_with(fake, tmp_path=tmp_path) == 2 and fake.calls == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "jaxnet does not import here" in err


# ------------------------------------------------------------------------------------------------
# Where the workers get the data


def cifar_cache(tmp_path):
    """The CIFAR-10 binary batches in the download cache (empty files: only names are read)."""
    folder = tmp_path / "cache" / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for f in data.CIFAR10_FILES:
        (folder / f).touch()
    return folder


def test_a_local_copy_is_staged_to_the_bucket_before_the_vm(tmp_path, capsys):
    folder = cifar_cache(tmp_path)
    probe = FakeProbe()
    code, out, err = planned(capsys, "--name", "s", "--bucket", "gs://bkt/", probe=probe)
    assert code == 0, err
    assert steps_of(out)[:4] == ["archive", "bucket", "stage", "create"]
    stage = commands(out)[2]
    assert stage == [
        "gcloud",
        "storage",
        "cp",
        "--no-clobber",
        *(str(folder / f) for f in data.CIFAR10_FILES),
        "gs://bkt/jaxnet/datasets/cifar10/",
    ]
    assert train_argv(out)[4:] == [
        "--config.dataset.data_dir=gs://bkt/jaxnet/datasets/cifar10",
        "--config.compilation_cache_dir=gs://bkt/jaxnet/xla-cache",
    ]
    assert probe.urls == []  # nothing is downloaded, so no host is probed


def test_a_failed_upload_creates_no_vm(tmp_path, capsys):
    cifar_cache(tmp_path)
    fake = FakeGcloud(fail={"stage"})
    assert launch_with(fake, "--bucket", "bkt", tmp_path=tmp_path) == 1
    assert fake.ran == ["archive", "bucket", "stage"]
    assert "step 'stage' (3/10) failed" in capsys.readouterr().err


def test_a_local_data_dir_of_idx_files_is_staged_and_replaced(tmp_path, capsys):
    idx = tmp_path / "mine" / "mnist"
    idx.mkdir(parents=True)
    names = ["train-images.idx3-ubyte.gz", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte.gz"]
    for f in [*names, "t10k-labels-idx1-ubyte.gz", "unrelated.txt"]:
        (idx / f).touch()
    mine = f"--config.dataset.data_dir={tmp_path / 'mine'}"
    argv = ["--name", "m", "--bucket", "bkt", "--", "--config.dataset.name=mnist", mine]
    argv.append("--config.model.kind=cnn")
    code, out, err = planned(capsys, *argv)
    assert code == 0, err
    (stage,) = [a for a in commands(out) if "--no-clobber" in a]
    assert stage[4:-1] == [str(tmp_path / "mine" / "mnist" / f) for f in names] + [
        str(idx / "t10k-labels-idx1-ubyte.gz")
    ]
    worker = train_argv(out)
    assert [a for a in worker if "data_dir" in a] == [
        "--config.dataset.data_dir=gs://bkt/jaxnet/datasets/mnist"  # the local one is replaced
    ]


def test_a_prepared_tfds_folder_is_synced_newest_version(tmp_path, capsys):
    for version in ("1.0.2", "3.0.2"):
        (tmp_path / "tfds" / "cifar10" / version).mkdir(parents=True)
        (tmp_path / "tfds" / "cifar10" / version / "dataset_info.json").touch()
    (tmp_path / "tfds" / "cifar10" / "9.0.0").mkdir()  # unfinished: no dataset_info.json
    code, out, err = planned(capsys, "--name", "t", "--bucket", "bkt")
    assert code == 0, err
    assert commands(out)[2] == [
        "gcloud",
        "storage",
        "rsync",
        "--recursive",
        str(tmp_path / "tfds" / "cifar10" / "3.0.2"),
        "gs://bkt/jaxnet/datasets/cifar10/cifar10/3.0.2",
    ]


def test_a_gs_data_dir_is_listed_and_used_as_it_is(capsys):
    url = "gs://data/cifar"
    listing = [f"{url}/cifar-10-batches-bin/{f}" for f in data.CIFAR10_FILES]
    query = FakeQuery({f"{url}/**": listing})
    code, out, err = planned(capsys, "--name", "g", f"--config.dataset.data_dir={url}", query=query)
    assert code == 0, err
    assert query.calls == [["gcloud", "storage", "ls", f"{url}/**"]]
    assert "stage" not in steps_of(out)
    assert f"--config.dataset.data_dir={url}" in train_argv(out)
    assert f"batches in {url}/cifar-10-batches-bin (listed from here), read by the workers" in out


@pytest.mark.parametrize(
    "query, message",
    [
        (FakeQuery({"gs://d/x/**": ["gs://d/x/data_batch_1.bin"]}), "holds no cifar10"),
        (FakeQuery(stderr="ERROR: One or more URLs matched no objects."), "holds no cifar10"),
        (FakeQuery(stderr="ERROR: 403 caller does not have access"), "cannot list gs://d/x"),
    ],
)
def test_a_gs_data_dir_without_the_data_creates_nothing(query, message, tmp_path, capsys):
    fake = FakeGcloud()
    argv = ["--bucket", "bkt", "--config.dataset.data_dir=gs://d/x"]
    assert launch_with(fake, *argv, tmp_path=tmp_path, query=query) == 2
    err = capsys.readouterr().err
    assert fake.calls == [] and message in err and err.count("\n") == 1


def test_without_a_bucket_the_workers_download_after_a_probe_from_here(tmp_path, capsys):
    probe = FakeProbe()
    mirror = "--config.dataset.mirror=https://mirror.example/data"
    code, out, err = planned(capsys, "--name", "d", mirror, probe=probe)
    assert code == 0, err
    assert probe.urls == ["https://mirror.example/data/cifar10/cifar-10-binary.tar.gz"]
    assert "stage" not in steps_of(out) and "bucket" not in steps_of(out)
    assert not any("data_dir" in a for a in train_argv(out))


def test_an_unreachable_download_host_creates_nothing(tmp_path, capsys):
    fake = FakeGcloud()
    assert launch_with(fake, tmp_path=tmp_path, probe=FakeProbe(reachable=False)) == 2
    err = capsys.readouterr().err
    assert fake.calls == [] and err.count("\n") == 1
    assert f"the workers would download cifar10 from {CIFAR_URL}, but from here" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--config.dataset.download=False"], "the workers would have no cifar10"),
        (["--config.dataset.data_dir=/nowhere"], "holds no cifar10 here"),
    ],
)
def test_data_the_workers_cannot_get_creates_nothing(extra, message, tmp_path, capsys):
    fake = FakeGcloud()
    assert launch_with(fake, *extra, tmp_path=tmp_path) == 2
    err = capsys.readouterr().err
    assert fake.calls == [] and message in err and err.count("\n") == 1


def test_a_local_copy_without_a_bucket_is_refused_when_data_dir_names_it(tmp_path, capsys):
    folder = cifar_cache(tmp_path)
    fake = FakeGcloud()
    assert launch_with(fake, f"--config.dataset.data_dir={folder}", tmp_path=tmp_path) == 2
    assert "give --bucket BUCKET to stage it" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["synthetic", "digits"])
def test_built_in_data_needs_no_staging_and_no_probe(name, capsys):
    probe = FakeProbe()
    argv = ["--name", "x", "--bucket", "bkt", f"--config.dataset.name={name}"]
    code, out, err = planned(capsys, *argv, "--config.model.kind=mlp", probe=probe)
    assert code == 0, err
    assert "stage" not in steps_of(out) and probe.urls == []


# ------------------------------------------------------------------------------------------------
# The bucket: the workdir, the compilation cache, the fetch; several hosts


def test_a_bucket_gives_the_workdir_the_cache_and_the_fetch(tmp_path, capsys):
    res = str(tmp_path / "res")
    argv = ["--name", "r", "--bucket", "bkt", "--accelerator-type", "v4-32", "--results-dir", res]
    code, out, err = planned(capsys, *argv)
    assert code == 0, err
    worker = train_argv(out)  # one command, run with --worker=all on the four hosts
    assert worker[:4] == ["--config", "configs/tpu.py", "--workdir", "gs://bkt/jaxnet/runs/r"]
    assert worker[4:] == ["--config.compilation_cache_dir=gs://bkt/jaxnet/xla-cache"]
    assert commands(out)[-2] == ["gcloud", "storage", "cp", "--recursive", worker[3], res]
    assert "at 40-10% of 16 chips' bf16 peak (275 TFLOP/s each)" in out


def test_a_compilation_cache_the_user_chose_is_kept(capsys):
    mine = "--config.compilation_cache_dir=gs://other/cache"
    code, out, err = planned(capsys, "--name", "c", "--bucket", "bkt", mine)
    assert code == 0, err
    assert [a for a in train_argv(out) if "compilation_cache" in a] == [mine]


def test_a_clean_run_with_a_bucket_runs_its_steps_in_order(tmp_path, capsys):
    cifar_cache(tmp_path)
    fake = FakeGcloud()
    assert launch_with(fake, "--bucket", "bkt", tmp_path=tmp_path) == 0
    assert fake.ran == ["archive", "bucket", "stage", *ALL[1:]]
    assert "launch.py: checked: data: the CIFAR-10 binary batches" in capsys.readouterr().err


@pytest.mark.parametrize("accelerator", ["v4-32", "v5litepod-16"])
def test_several_hosts_without_a_shared_workdir_are_refused(accelerator, capsys):
    with pytest.raises(SystemExit) as e:
        launch.parse_args(
            ["--name", "a", "--zone", "us-central2-b", "--accelerator-type", accelerator]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--accelerator-type {accelerator} spans several hosts" in err
    assert "give --bucket BUCKET or a gs:// --workdir" in err


def test_the_estimate_of_configs_tpu_on_a_v5e_8(capsys):
    code, out, err = planned(capsys, "--name", "e", "--accelerator-type", "v5litepod-8")
    assert code == 0, err
    # 98.2 M multiply-adds forward: 6 FLOPs each to train, 45,000 examples x 40 epochs
    assert "estimate, not measured: 1.10 PFLOP (40 epochs of 45000 examples at 0.59 GFLOP" in out
    assert "1.7-7.0 s at 40-10% of 8 chips' bf16 peak (197 TFLOP/s each)" in out
