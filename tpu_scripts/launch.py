#!/usr/bin/env python3
"""Train jaxnet on a Cloud TPU VM.

Check the run here, stage its data, create the VM, copy the code, install, train on every host,
fetch the results, delete the VM. E.g.:

    python tpu_scripts/launch.py --name my-tpu --zone us-central2-b --bucket my-bucket --dry-run \
        -- --config.epochs=5

Before any step, here: the training config the workers will run (the --config file, the
overrides, and what the launcher sets: the workdir, the data_dir, the compilation cache) goes
through train.py's own checks (`jaxnet.training.cli.validate_argv`), and where the workers get
the data is decided and checked (`plan_data`): a gs:// data_dir is listed, a local copy is staged
to the bucket, or the download host is probed. Either failing exits 2 with one line, dry run
included, and nothing is created. Then the steps, in order:

    archive  pack the committed tree (git archive HEAD) into a local tarball   (not with --repo-url)
    bucket   gcloud storage ls gs://BUCKET: the bucket exists and answers      (with a bucket)
    stage    upload the local copy of the dataset to gs://BUCKET/jaxnet/datasets/NAME
                                                                             (when it is staged)
    create   gcloud compute tpus tpu-vm create, with --accelerator-type and --version
    copy     scp the tarball to every worker, or git clone --repo-url on every worker
    unpack   unpack the tarball on every worker                                (not with --repo-url)
    install  pip install -U "jax[tpu]", then pip install -e . on every worker
    train    python3 train.py --config ... --workdir ... on ALL workers at once (--worker=all):
             multi-host JAX needs every host to run the same program
    fetch    copy the workdir from the bucket (or from worker 0) into --results-dir
    delete   gcloud compute tpus tpu-vm delete --quiet: ALWAYS, after a failure or Ctrl-C too,
             unless --keep-vm

With a bucket (--bucket, or the one of a gs:// --workdir) the workdir defaults to
gs://BUCKET/jaxnet/runs/NAME, shared by every host, and JAX's persistent compilation cache is
gs://BUCKET/jaxnet/xla-cache, so a rerun skips most of the compiling. A slice of several hosts
needs a gs:// workdir: without one the launcher refuses it.

Failure policy: after a failed step the remaining steps are skipped, except that `fetch` is still
tried when the failure came at or after `train` (partial metrics and checkpoints help to debug
it) and `delete` runs whenever `create` was attempted. Ctrl-C (or SIGTERM) skips `fetch` and goes
straight to `delete`. The exit status is 0 on success, 1 naming the first failed step, 130 after
Ctrl-C, and 2 for bad arguments, a config train.py would refuse, or data the workers could not
get.

The command list is built by the pure function `plan(args, data)`; `execute(steps, runner)` runs
it with an injectable runner (default: subprocess.run(argv, check=True), output streamed). The
checks before it take injectable `query` (read-only commands whose output is read) and `probe`
functions. jaxnet is imported only for those checks, so --help needs only the standard library.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
ARCHIVE_NAME = "jaxnet.tar.gz"  # the tarball's name in each worker's home directory
DATASETS_PREFIX = "jaxnet/datasets"  # gs://BUCKET/jaxnet/datasets/NAME: staged datasets
RUNS_PREFIX = "jaxnet/runs"  # gs://BUCKET/jaxnet/runs/NAME: the default workdir with a bucket
CACHE_PREFIX = "jaxnet/xla-cache"  # JAX's persistent compilation cache, shared by every run

# Runtime (software) version per TPU generation, for JAX; see the Cloud TPU "TPU software
# versions" page.
RUNTIME_VERSIONS = (
    ("v6e", "v2-alpha-tpuv6e"),
    ("v5p", "v2-alpha-tpuv5"),
    ("v5litepod", "v2-alpha-tpuv5-lite"),
    ("v5e", "v2-alpha-tpuv5-lite"),
    ("v4", "tpu-ubuntu2204-base"),
    ("v3", "tpu-ubuntu2204-base"),
    ("v2", "tpu-ubuntu2204-base"),
)

# When a step runs: NORMAL only while nothing has failed; SALVAGE also after a failure at or after
# the train step (not after Ctrl-C); CLEANUP whenever the create step was attempted, even after
# Ctrl-C.
NORMAL, SALVAGE, CLEANUP = "normal", "salvage", "cleanup"


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    about: str
    when: str = NORMAL
    local: bool = False  # runs on this machine only (no VM involved)

    def command(self) -> str:
        return shlex.join(self.argv)


@dataclasses.dataclass
class Outcome:
    ran: list[str] = dataclasses.field(
        default_factory=list
    )  # names of the steps attempted, in order
    skipped: list[str] = dataclasses.field(default_factory=list)
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (step name, why)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else (130 if self.interrupted else 1)


class UsageError(ValueError):
    """An argument that parses but makes no sense; reported as `launch.py: error: ...`, exit 2."""


# --------------------------------------------------------------------------------------------
# Arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="launch.py",
        description="Create a Cloud TPU VM, train jaxnet on all of its hosts, fetch the results, "
        "delete the VM.",
        epilog="Training overrides go after the options (or after --), each as --config.key=value; "
        "they are passed to train.py on every worker, shell-quoted.",
        allow_abbrev=False,
    )
    vm = p.add_argument_group("the TPU VM")
    vm.add_argument(
        "--name", required=True, help="TPU VM name (lowercase letters, digits, hyphens)."
    )
    vm.add_argument(
        "--zone", required=True, help="zone, e.g. us-central2-b (v4) or us-west4-a (v5e)."
    )
    vm.add_argument(
        "--project", help="Google Cloud project; default: gcloud's configured core/project."
    )
    vm.add_argument(
        "--accelerator-type",
        default="v4-8",
        help="e.g. v4-8, v5litepod-8, v5p-8, v6e-8 (default: %(default)s).",
    )
    vm.add_argument(
        "--version",
        help="TPU runtime version; default: chosen from the accelerator type "
        "(tpu-ubuntu2204-base for v2-v4, v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, "
        "v2-alpha-tpuv6e for v6e).",
    )
    cap = vm.add_mutually_exclusive_group()
    cap.add_argument(
        "--spot", action="store_true", help="create a Spot TPU VM (cheaper, may be preempted)."
    )
    cap.add_argument(
        "--preemptible",
        action="store_true",
        help="create a preemptible TPU VM (older model, 24 h at most).",
    )
    vm.add_argument(
        "--keep-vm",
        action="store_true",
        help="do not delete the VM at the end (you pay for it until you do).",
    )

    code = p.add_argument_group("the code")
    code.add_argument(
        "--repo-url",
        help="git clone this URL on every worker instead of copying `git archive HEAD` of this "
        "checkout.",
    )
    code.add_argument("--ref", help="with --repo-url: the branch, tag or commit to check out.")
    code.add_argument(
        "--remote-dir",
        default="~/jaxnet",
        help="where the code goes on each worker (default: %(default)s).",
    )
    code.add_argument(
        "--python", default="python3", help="the Python on the workers (default: %(default)s)."
    )

    run = p.add_argument_group("the run")
    run.add_argument(
        "--config",
        default="configs/tpu.py",
        help="config file, relative to the repository root (default: %(default)s).",
    )
    run.add_argument(
        "--bucket",
        help="a Cloud Storage bucket (NAME or gs://NAME) for the workdir, the compilation cache "
        "and staged data; default: the bucket of a gs:// --workdir, else none.",
    )
    run.add_argument(
        "--workdir",
        help="run folder: a gs:// path, or a folder on each worker "
        "(default: gs://BUCKET/jaxnet/runs/NAME with a bucket, else ~/jaxnet_runs/NAME).",
    )
    run.add_argument(
        "--results-dir",
        default="runs",
        help="local folder the workdir is fetched into, as RESULTS_DIR/<workdir name> "
        "(default: %(default)s).",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="print every command, numbered, and run nothing."
    )
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; errors exit with status 2 and a message naming the argument."""
    parser = build_parser()
    argv = list(argv)
    tail = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    args, extra = parser.parse_known_args(argv)
    args.overrides = extra + tail
    try:
        validate(args)
    except UsageError as e:
        parser.error(str(e))
    return args


_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_ACCELERATOR = re.compile(r"v[0-9]+[a-z]*-[0-9]+")
_OVERRIDE = re.compile(r"--config\.[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=.*", re.DOTALL)


def validate(args: argparse.Namespace) -> None:
    """Check the arguments and fill in the defaults that depend on others; raise UsageError."""
    if not _NAME.fullmatch(args.name or ""):
        raise UsageError(
            f"--name {args.name!r}: a TPU name is 1-63 lowercase letters, digits and hyphens, "
            "starting with a letter"
        )
    if not _ZONE.fullmatch(args.zone or ""):
        raise UsageError(f"--zone {args.zone!r} does not look like a zone (e.g. us-central2-b)")
    if not _ACCELERATOR.fullmatch(args.accelerator_type):
        raise UsageError(
            f"--accelerator-type {args.accelerator_type!r} does not look like v4-8, v5litepod-8, "
            "v5p-8 or v6e-8"
        )
    if args.version is None:
        args.version = default_runtime_version(args.accelerator_type)
        if args.version is None:
            raise UsageError(
                "--version: no default runtime version known for "
                f"--accelerator-type {args.accelerator_type}; give one"
            )
    if args.ref and not args.repo_url:
        raise UsageError("--ref needs --repo-url")
    if os.path.isabs(args.config) or not os.path.isfile(os.path.join(REPO_ROOT, args.config)):
        raise UsageError(
            f"--config {args.config!r}: no such file relative to the repository root {REPO_ROOT}"
        )
    for name in ("remote_dir", "workdir"):
        value = getattr(args, name)
        if value is None:
            continue
        if any(c.isspace() for c in value):
            raise UsageError(
                f"--{name.replace('_', '-')} {value!r}: paths on the workers may not contain spaces"
            )
        if name == "workdir" and value.startswith("gs://"):
            if len(value) <= len("gs://"):
                raise UsageError(f"--workdir {value!r} names no bucket")
            continue
        if not (value.startswith("~/") or value.startswith("/")) or value.rstrip("/") in ("~", ""):
            raise UsageError(
                f"--{name.replace('_', '-')} {value!r}: give a path on the workers starting "
                "with ~/ or /"
            )
    _choose_bucket(args)
    if args.workdir is None:
        args.workdir = (
            f"gs://{args.bucket}/{RUNS_PREFIX}/{args.name}"
            if args.bucket
            else f"~/jaxnet_runs/{args.name}"
        )
    if is_multi_host(args.accelerator_type) and not args.workdir.startswith("gs://"):
        raise UsageError(
            f"--accelerator-type {args.accelerator_type} spans several hosts, and --workdir "
            f"{args.workdir} would be a separate folder on each of them (checkpoints need one "
            "shared workdir): give --bucket BUCKET or a gs:// --workdir"
        )
    for item in args.overrides:
        if not _OVERRIDE.fullmatch(item):
            raise UsageError(
                f"unrecognized argument {item!r}: training overrides must look like "
                "--config.key=value"
            )


_BUCKET = re.compile(r"[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]")


def _choose_bucket(args: argparse.Namespace) -> None:
    """args.bucket: --bucket without gs:// and slashes, else the bucket of a gs:// workdir."""
    if args.bucket:
        bucket = args.bucket.removeprefix("gs://").rstrip("/")
        if not _BUCKET.fullmatch(bucket):
            raise UsageError(f"--bucket {args.bucket!r} is not a bucket name (e.g. my-bucket)")
        args.bucket = bucket
    elif args.workdir and args.workdir.startswith("gs://"):
        args.bucket = args.workdir[len("gs://") :].split("/", 1)[0]


def default_runtime_version(accelerator_type: str) -> str | None:
    generation = accelerator_type.rsplit("-", 1)[0]
    return dict(RUNTIME_VERSIONS).get(generation)


def is_multi_host(accelerator_type: str) -> bool:
    """Slices of more than 8 (cores for v2-v4 and v5p, chips for v5e and v6e) span several hosts."""
    return int(accelerator_type.rsplit("-", 1)[1]) > 8


# --------------------------------------------------------------------------------------------
# The checks made here before any step: the config, the data, an estimate


@dataclasses.dataclass(frozen=True)
class Found:
    """A copy of a dataset in a folder (local or gs://): raw files, or a prepared TFDS folder."""

    root: str
    what: str
    files: tuple[str, ...] = ()  # raw files (IDX, CIFAR-10 binary batches), relative to root
    folder: str = ""  # a prepared TFDS version folder (NAME/VERSION), relative to root

    @property
    def location(self) -> str:
        """The folder that holds the copy."""
        inner = self.folder or os.path.dirname(self.files[0])
        return f"{self.root.rstrip('/')}/{inner}" if inner else self.root


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """Where the workers get the data; what the launcher sets and uploads for it."""

    about: str
    data_dir: str | None = None  # the workers' --config.dataset.data_dir, if the launcher sets it
    stage: tuple[str, ...] | None = None  # the upload command, if the data is staged


@dataclasses.dataclass(frozen=True)
class Checked:
    """What the checks found: the data plan and the lines that report them."""

    data: DataPlan
    notes: tuple[str, ...]


_BUILT_IN = {
    "synthetic": "synthetic data, generated on each worker from the seed: nothing to stage",
    "digits": "scikit-learn's digits, installed on each worker by pip: nothing to stage",
}
_VERSION = re.compile(r"\d+\.\d+\.\d+")


def capture_command(argv: Sequence[str]) -> str:
    """The default query: run a read-only command here and return its standard output.

    A non-zero exit raises CalledProcessError, with the command's stderr.
    """
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def _jaxnet():
    """jaxnet's config checks, imported here only (so --help needs nothing but Python)."""
    if REPO_ROOT not in sys.path:  # this checkout's jaxnet and configs/, as on the workers
        sys.path.insert(0, REPO_ROOT)
    try:
        from jaxnet import data, download
        from jaxnet.training import cli
    except ImportError as error:
        raise UsageError(
            f"cannot check the training config: jaxnet does not import here "
            f"({type(error).__name__}: {error}); run launch.py with a Python that has jaxnet's "
            "requirements (pip install -e .)"
        ) from None
    return cli, data, download


def check_config(args: argparse.Namespace, overrides: Sequence[str]):
    """The config train.py on the workers gets from these flags, checked as train.py checks it."""
    cli = _jaxnet()[0]
    argv = ["--config", os.path.join(REPO_ROOT, args.config), "--workdir", args.workdir]
    try:
        return cli.validate_argv(
            [*argv, *overrides], os.path.join(REPO_ROOT, "configs", "default.py")
        )
    except cli.ConfigError as error:
        raise UsageError(f"train.py would refuse this config: {error}") from None


def worker_overrides(args: argparse.Namespace, data: DataPlan | None) -> list[str]:
    """The --config.KEY=VALUE flags train.py gets: the user's, then the launcher's own."""
    mine = []
    if data is not None and data.data_dir:
        mine.append(f"--config.dataset.data_dir={data.data_dir}")
    if args.bucket and not _overrides_key(args.overrides, "compilation_cache_dir"):
        mine.append(f"--config.compilation_cache_dir=gs://{args.bucket}/{CACHE_PREFIX}")
    replaced = {o.split("=", 1)[0] for o in mine}
    return [o for o in args.overrides if o.split("=", 1)[0] not in replaced] + mine


def _overrides_key(overrides: Sequence[str], key: str) -> bool:
    return any(o.split("=", 1)[0] == f"--config.{key}" for o in overrides)


def dataset_files(name: str, names: set[str], root: str) -> Found | None:
    """The copy of `name` train.py would read in a folder whose files are `names` (relative).

    Raw files first, as data.py reads them (in root, or root/cifar-10-batches-bin, or
    root/NAME), then a prepared TFDS folder (root/NAME/VERSION): a few plain files are read
    from gs:// by anything, while array_record readers may not open gs:// paths.
    """
    data = _jaxnet()[1]
    if name == "cifar10":
        for sub in ("", "cifar-10-batches-bin/"):
            files = tuple(sub + f for f in data.CIFAR10_FILES)
            if all(f in names for f in files):
                return Found(root, "the CIFAR-10 binary batches", files)
    else:
        for sub in ("", f"{name}/"):
            files = tuple(_idx_file(names, sub + stem) for stem in data.IDX_FILES)
            if all(files):
                return Found(root, "the IDX files", files)
    versions = [
        v
        for v in {n.split("/")[1] for n in names if n.startswith(f"{name}/") and n.count("/") == 2}
        if _VERSION.fullmatch(v) and f"{name}/{v}/dataset_info.json" in names
    ]
    if versions:
        version = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
        return Found(root, f"the prepared TFDS {name}/{version}", folder=f"{name}/{version}")
    return None


def _idx_file(names: set[str], stem: str) -> str | None:
    """The name data.py would read for an IDX stem: gzipped or not, -idx or .idx."""
    head, base = stem.rsplit("/", 1) if "/" in stem else ("", stem)
    for variant in (base, base.replace("-idx", ".idx")):
        for suffix in (".gz", ""):
            candidate = f"{head}/{variant}{suffix}" if head else variant + suffix
            if candidate in names:
                return candidate
    return None


def local_names(folder: str, name: str) -> set[str]:
    """The files of `folder` that dataset_files looks at, relative to it."""
    names = set()
    for sub in ("", "cifar-10-batches-bin", name):
        here = os.path.join(folder, sub)
        if os.path.isdir(here):
            names |= {
                f"{sub}/{f}" if sub else f
                for f in os.listdir(here)
                if os.path.isfile(os.path.join(here, f))
            }
    tfds = os.path.join(folder, name)
    for version in os.listdir(tfds) if os.path.isdir(tfds) else ():
        if os.path.isfile(os.path.join(tfds, version, "dataset_info.json")):
            names.add(f"{name}/{version}/dataset_info.json")
    return names


def bucket_names(url: str, query: Callable[[Sequence[str]], str]) -> set[str]:
    """The objects under the gs:// folder `url`, relative to it, listed with gcloud storage."""
    prefix = url.rstrip("/") + "/"
    argv = ("gcloud", "storage", "ls", prefix + "**")
    try:
        out = query(argv)
    except subprocess.CalledProcessError as error:
        text = " ".join((error.stderr or "").split())
        if "matched no" in text.lower():  # an empty or missing folder
            return set()
        raise UsageError(f"cannot list {url} ({shlex.join(argv)}): {text or _why(error)}") from None
    except OSError as error:
        raise UsageError(f"cannot list {url} ({shlex.join(argv)}): {_why(error)}") from None
    lines = (line.strip() for line in out.splitlines())
    return {line[len(prefix) :] for line in lines if line.startswith(prefix)}


def find_local(dataset) -> Found | None:
    """This machine's copy of the dataset, where data.py looks for one; None if none."""
    _, data, download = _jaxnet()
    name, places = dataset.name, []
    if dataset.data_dir:
        places.append(os.path.abspath(os.path.expanduser(dataset.data_dir)))
    else:
        places += list(data.SYSTEM_DIRS.get(name, ()))
        places.append(os.path.join(download.cache_dir(dataset.cache_dir or None)[0], name))
        places.append(
            os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
        )
    for place in places:
        found = dataset_files(name, local_names(place, name), place)
        if found:
            return found
    return None


def stage_argv(found: Found, destination: str) -> tuple[str, ...]:
    """Upload a local copy: its files into DESTINATION/, or its TFDS folder beneath it.

    --no-clobber and rsync skip what an earlier run uploaded.
    """
    if found.folder:
        source = os.path.join(found.root, found.folder)
        return (
            "gcloud",
            "storage",
            "rsync",
            "--recursive",
            source,
            f"{destination}/{found.folder}",
        )
    files = [os.path.join(found.root, f) for f in found.files]
    return ("gcloud", "storage", "cp", "--no-clobber", *files, destination + "/")


def plan_data(args: argparse.Namespace, config, query, probe) -> DataPlan:
    """Where the workers get the config's dataset, checked from here; UsageError if nowhere."""
    d = config.dataset
    if d.name in _BUILT_IN:
        return DataPlan(_BUILT_IN[d.name])
    if "://" in d.data_dir:
        return _remote_data(d, query)
    found = find_local(d)
    if d.data_dir and found is None:
        raise UsageError(
            f"config.dataset.data_dir={d.data_dir!r} holds no {d.name} here: give a folder that "
            "does, a gs:// folder that does, or no data_dir"
        )
    if found and args.bucket:
        destination = f"gs://{args.bucket}/{DATASETS_PREFIX}/{d.name}"
        about = (
            f"{found.what} in {found.location}, staged to {destination}, read there by the workers"
        )
        return DataPlan(about, data_dir=destination, stage=stage_argv(found, destination))
    if d.data_dir:
        raise UsageError(
            f"config.dataset.data_dir={d.data_dir!r} is a folder on this machine, not on the "
            "workers: give --bucket BUCKET to stage it, or a gs:// data_dir"
        )
    return _download_data(d, found, probe)


def _remote_data(dataset, query) -> DataPlan:
    if not dataset.data_dir.startswith("gs://"):
        raise UsageError(
            f"config.dataset.data_dir={dataset.data_dir!r}: the launcher checks gs:// folders only"
        )
    found = dataset_files(dataset.name, bucket_names(dataset.data_dir, query), dataset.data_dir)
    if found is None:
        raise UsageError(
            f"config.dataset.data_dir={dataset.data_dir} holds no {dataset.name} train.py can "
            f"read: {_expected(dataset.name)}"
        )
    return DataPlan(f"{found.what} in {found.location} (listed from here), read by the workers")


def _expected(name: str) -> str:
    data = _jaxnet()[1]
    if name == "cifar10":
        files, where = data.CIFAR10_FILES, "in it or in cifar-10-batches-bin/"
    else:
        files, where = data.IDX_FILES, f"(each .gz or not) in it or in {name}/"
    return f"expected {', '.join(files)} {where}, or a prepared TFDS {name}/VERSION/"


def _download_data(dataset, found: Found | None, probe) -> DataPlan:
    _, _, download = _jaxnet()
    name = dataset.name
    kept = (
        f" ({found.what} in {found.location} stay here: --bucket would stage them)" if found else ""
    )
    if not (dataset.download and name in download.OFFICIAL):
        why = "config.dataset.download=False" if dataset.download is False else "no official files"
        where = f"it is only here{kept}" if found else "no copy here to stage"
        raise UsageError(
            f"the workers would have no {name}: {where}, no gs:// data_dir, and no download "
            f"({why}): give --bucket BUCKET with a local copy, or a gs:// data_dir"
        )
    url = download.source_url(name, dataset.mirror or None)
    try:
        (probe or download.probe)(url + download.OFFICIAL[name].files[0].name)
    except Exception as error:  # noqa: BLE001  (whatever the probe raises, said in one line)
        raise UsageError(
            f"the workers would download {name} from {url}, but from here: {error}; give "
            "--bucket BUCKET with a local copy, a gs:// data_dir, or --config.dataset.mirror=URL"
        ) from None
    return DataPlan(
        f"downloaded by each worker from {url} into its cache (the host answers from here){kept}"
    )


def preflight(
    args: argparse.Namespace,
    query: Callable[[Sequence[str]], str] = capture_command,
    probe: Callable[[str], None] | None = None,
) -> Checked:
    """Every check before a step: the config (as train.py checks it) and the workers' data."""
    config = check_config(args, worker_overrides(args, None))
    data = plan_data(args, config, query, probe)
    final = worker_overrides(args, data)
    if data.data_dir:  # the launcher changed the config: check what the workers really get
        config = check_config(args, final)
    problem = slice_problem(config, args.accelerator_type)
    if problem:
        raise UsageError(
            f"train.py would refuse this config on a {args.accelerator_type}: {problem}"
        )
    notes = [
        f"config: {args.config} with {len(final)} override(s), checked here as train.py checks "
        "it (keys, values, the network against the dataset's input shape, the batch split over "
        "the slice's devices)",
        f"data: {data.about}",
    ]
    guess = estimate(config, args.accelerator_type)
    if guess:
        notes.append(guess)
    return Checked(data, tuple(notes))


# Published peak bf16 compute per chip (TFLOP/s) and how many units of an accelerator type's
# number make a chip: TensorCores (2 per chip) for v3 and v4, chips for v5e. Cloud TPU docs.
PEAK_TFLOPS = {"v3": (123, 2), "v4": (275, 2), "v5litepod": (197, 1), "v5e": (197, 1)}
# How many units of an accelerator type's number make one JAX device: TensorCores for v2 and v3
# (each a device), chips for v4 and v5p (two TensorCores as one device), chips for v5e and v6e.
UNITS_PER_DEVICE = {"v2": 1, "v3": 1, "v4": 2, "v5p": 2, "v5litepod": 1, "v5e": 1, "v6e": 1}
# (training, test) examples of the datasets the estimate knows
SIZES = {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}


def slice_problem(config, accelerator_type: str) -> str | None:
    """Why the slice's devices cannot split the config's batch, as the trainer would say."""
    generation, count = accelerator_type.rsplit("-", 1)
    if generation not in UNITS_PER_DEVICE:
        return None
    devices = max(1, int(count) // UNITS_PER_DEVICE[generation])
    strategy = config.devices.strategy
    if strategy == "single":
        if is_multi_host(accelerator_type):
            return "config.devices.strategy='single' trains on one device of one host"
        return None
    batch = config.batch_size
    if batch == -1:
        n = SIZES.get(config.dataset.name, (None,))[0]
        if n is None:
            return None
        batch = n - _held_out(config.dataset.validation_size, n)
    if batch % devices:
        return (
            f"config.batch_size={config.batch_size}: {batch} examples do not split over the "
            f"{devices} devices (devices.strategy={strategy!r}): use a multiple of {devices}"
        )
    return None


def _held_out(size, n: int) -> int:
    """The validation examples of validation_size `size` (a fraction or a count) of n."""
    return int(size) if size >= 1 else round(size * n)


def estimate(config, accelerator_type: str) -> str | None:
    """A line: the run's FLOPs and their time at the slice's peak, or None if unknown here."""
    generation, count = accelerator_type.rsplit("-", 1)
    if generation not in PEAK_TFLOPS or config.dataset.name not in SIZES:
        return None
    from jaxnet import models, shapes
    from jaxnet.training import cli

    peak, per_chip = PEAK_TFLOPS[generation]
    chips = max(1, int(count) // per_chip)
    shape, classes = cli.INPUTS[config.dataset.name]
    macs = sum(shapes.multiply_adds(models.build_model(config.model, classes), shape))
    n, test = SIZES[config.dataset.name]
    held = _held_out(config.dataset.validation_size, n)
    # 2 FLOPs a multiply-add; training 3x the forward pass (forward, two gradients)
    flops = 6 * macs * (n - held) * config.epochs + 2 * macs * (held * config.epochs + test)
    seconds = flops / (chips * peak * 1e12)
    return (
        f"estimate, not measured: {flops / 1e15:.2f} PFLOP ({config.epochs} epochs of "
        f"{n - held} examples at {6 * macs / 1e9:.2f} GFLOP, and evaluation) take "
        f"{seconds / 0.4:.1f}-{seconds / 0.1:.1f} s at 40-10% of {chips} chips' bf16 peak "
        f"({peak} TFLOP/s each); creating the VM, installing and compiling take minutes "
        "(tpu_scripts/README.md)"
    )


# --------------------------------------------------------------------------------------------
# The plan: a pure function of the arguments


def remote_shell_path(path: str) -> str:
    """A worker path for a remote shell command: quoted, but with a leading ~/ left to expand."""
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def scp_remote_path(path: str) -> str:
    """A worker path for scp: relative paths are relative to the home directory, so drop the ~/."""
    return path[2:] if path.startswith("~/") else path


def archive_path(args: argparse.Namespace) -> str:
    return os.path.join(tempfile.gettempdir(), f"jaxnet-{args.name}.tar.gz")


def plan(args: argparse.Namespace, data: DataPlan) -> list[Step]:
    """Every command of the run, in order. Builds argv lists only; runs and touches nothing."""
    where = _where(args)

    def ssh_all(command: str) -> tuple[str, ...]:
        return (*TPU_VM, "ssh", args.name, *where, "--worker=all", "--command", command)

    remote_dir = remote_shell_path(args.remote_dir)
    py = remote_shell_path(args.python)
    steps = []

    if not args.repo_url:
        tarball = archive_path(args)
        steps.append(
            Step(
                "archive",
                (
                    "git",
                    "-C",
                    REPO_ROOT,
                    "archive",
                    "--format=tar.gz",
                    f"--output={tarball}",
                    "HEAD",
                ),
                "pack the committed tree of this checkout (uncommitted changes are not included)",
                local=True,
            )
        )

    if args.bucket:
        steps.append(
            Step(
                "bucket",
                ("gcloud", "storage", "ls", f"gs://{args.bucket}"),
                "check that the bucket exists and answers, before a VM costs anything",
                local=True,
            )
        )
    if data.stage:
        steps.append(
            Step(
                "stage",
                data.stage,
                "upload this machine's copy of the data to the bucket (what is there is kept)",
                local=True,
            )
        )

    create = [
        *TPU_VM,
        "create",
        args.name,
        *where,
        f"--accelerator-type={args.accelerator_type}",
        f"--version={args.version}",
    ]
    if args.spot:
        create.append("--spot")
    if args.preemptible:
        create.append("--preemptible")
    steps.append(
        Step(
            "create",
            tuple(create),
            f"create the TPU VM ({args.accelerator_type}, runtime {args.version})",
        )
    )

    if args.repo_url:
        clone = f"rm -rf {remote_dir} && git clone {shlex.quote(args.repo_url)} {remote_dir}"
        if args.ref:
            clone += f" && cd {remote_dir} && git checkout {shlex.quote(args.ref)}"
        steps.append(Step("copy", ssh_all(clone), "clone the repository on every worker"))
    else:
        steps.append(
            Step(
                "copy",
                (*TPU_VM, "scp", tarball, f"{args.name}:{ARCHIVE_NAME}", *where, "--worker=all"),
                "copy the tarball to every worker",
            )
        )
        unpack = (
            f"rm -rf {remote_dir} && mkdir -p {remote_dir} && "
            f"tar -xzf ~/{ARCHIVE_NAME} -C {remote_dir}"
        )
        steps.append(Step("unpack", ssh_all(unpack), "unpack it on every worker"))

    install = f'cd {remote_dir} && {py} -m pip install -U "jax[tpu]" && {py} -m pip install -e .'
    steps.append(
        Step("install", ssh_all(install), "install JAX for TPU, then jaxnet, on every worker")
    )

    train = [
        py,
        "train.py",
        "--config",
        shlex.quote(args.config),
        "--workdir",
        remote_shell_path(args.workdir),
    ]
    train += [shlex.quote(o) for o in worker_overrides(args, data)]
    steps.append(
        Step(
            "train",
            ssh_all(f"cd {remote_dir} && " + " ".join(train)),
            "train on ALL workers at once: multi-host JAX needs every host to run the same program",
        )
    )

    if args.workdir.startswith("gs://"):
        fetch = (
            "gcloud",
            "storage",
            "cp",
            "--recursive",
            args.workdir.rstrip("/"),
            args.results_dir,
        )
        steps.append(
            Step(
                "fetch",
                fetch,
                f"download the workdir into {args.results_dir}/",
                when=SALVAGE,
                local=True,
            )
        )
    else:
        remote = scp_remote_path(args.workdir.rstrip("/"))
        fetch = (
            *TPU_VM,
            "scp",
            f"{args.name}:{remote}",
            args.results_dir,
            *where,
            "--worker=0",
            "--recurse",
        )
        steps.append(
            Step(
                "fetch",
                fetch,
                f"copy the workdir from worker 0 into {args.results_dir}/",
                when=SALVAGE,
            )
        )

    if not args.keep_vm:
        steps.append(Step("delete", delete_argv(args), "delete the TPU VM", when=CLEANUP))
    return steps


def _where(args: argparse.Namespace) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def delete_argv(args: argparse.Namespace) -> tuple[str, ...]:
    return (*TPU_VM, "delete", args.name, *_where(args), "--quiet")


# --------------------------------------------------------------------------------------------
# Execution


def run_command(argv: Sequence[str]) -> None:
    """The default runner: output streams to this terminal.

    A non-zero exit raises CalledProcessError.
    """
    subprocess.run(list(argv), check=True)


def _why(error: BaseException) -> str:
    if isinstance(error, subprocess.CalledProcessError):
        return f"exited with status {error.returncode}"
    if isinstance(error, FileNotFoundError):
        return f"command not found: {error.filename or error}"
    return f"{type(error).__name__}: {error}"


def execute(
    steps: Sequence[Step],
    runner: Callable[[Sequence[str]], None] = run_command,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> Outcome:
    """Run the steps in order with `runner(argv)`, which raises on failure (like check=True).

    After a failure or KeyboardInterrupt the remaining steps are skipped except SALVAGE steps
    (after a non-interrupt failure at or after `train`) and CLEANUP steps (once `create` was
    attempted). A KeyboardInterrupt during a CLEANUP step is not swallowed: it propagates after
    being recorded.
    """
    out = Outcome()
    names = [s.name for s in steps]
    train_index = names.index("train") if "train" in names else len(steps)
    failed_at = None  # index of the first failed step
    for i, step in enumerate(steps):
        if failed_at is not None or out.interrupted:
            if step.when == CLEANUP:
                go = "create" in out.ran
            elif step.when == SALVAGE:
                go = not out.interrupted and failed_at is not None and failed_at >= train_index
            else:
                go = False
            if not go:
                out.skipped.append(step.name)
                log(f"--- [{i + 1}/{len(steps)}] {step.name}: skipped")
                continue
        log(f"==> [{i + 1}/{len(steps)}] {step.name}: {step.about}\n    {step.command()}")
        out.ran.append(step.name)
        try:
            runner(step.argv)
        except KeyboardInterrupt:
            if step.when == CLEANUP:
                out.failures.append((step.name, "interrupted"))
                out.interrupted = True
                raise
            out.interrupted = True
            if failed_at is None:
                failed_at = i
                out.failures.append((step.name, "interrupted (Ctrl-C or SIGTERM)"))
            log(f"!!! {step.name}: interrupted; cleaning up")
        except (subprocess.CalledProcessError, OSError) as e:
            out.failures.append((step.name, _why(e)))
            if failed_at is None:
                failed_at = i
            log(f"!!! {step.name}: {_why(e)}")
    return out


def report(args: argparse.Namespace, steps: Sequence[Step], out: Outcome) -> str:
    """The closing message: what failed, and whether the VM is gone."""
    total = len(steps)
    index = {s.name: i + 1 for i, s in enumerate(steps)}
    lines = []
    if out.ok:
        where = args.results_dir if "fetch" in out.ran else "(not fetched)"
        lines.append(f"launch.py: done; results in {where}")
    else:
        name, why = out.failures[0]
        lines.append(f"launch.py: step '{name}' ({index[name]}/{total}) failed: {why}")
        for other, other_why in out.failures[1:]:
            lines.append(
                f"launch.py: step '{other}' ({index[other]}/{total}) failed too: {other_why}"
            )
    delete_failed = any(name == "delete" for name, _ in out.failures)
    created = "create" in out.ran
    if created and (args.keep_vm or delete_failed):
        why = "--keep-vm" if args.keep_vm else "its delete step failed"
        lines.append(
            f"launch.py: the TPU VM {args.name!r} may still exist ({why}); "
            "it costs money until you run:\n"
            f"    {shlex.join(delete_argv(args))}"
        )
    elif created and "delete" in out.ran:
        lines.append(f"launch.py: the TPU VM {args.name!r} was deleted")
    return "\n".join(lines)


def print_plan(
    args: argparse.Namespace, steps: Sequence[Step], checked: Checked, stream=None
) -> None:
    w = lambda s="": print(s, file=stream or sys.stdout)
    w(f"# jaxnet on a TPU VM: {len(steps)} steps (dry run: nothing is executed)")
    for note in checked.notes:
        w(f"# checked: {note}")
    if not args.repo_url:
        w("# note: git archive HEAD ships committed files only; commit first")
    for i, step in enumerate(steps, 1):
        tags = {
            SALVAGE: " [also after a failed train]",
            CLEANUP: " [always, even after a failure or Ctrl-C]",
        }.get(step.when, "")
        local = " (local)" if step.local else ""
        w(f"# step {i}/{len(steps)}: {step.name}{local}{tags} -- {step.about}")
        w(step.command())
    if args.keep_vm:
        w(
            "# --keep-vm: the VM is not deleted; delete it yourself with:\n"
            f"#   {shlex.join(delete_argv(args))}"
        )


def _interrupt_on_sigterm() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, handler)


def main(
    argv: Sequence[str] | None = None,
    runner: Callable[[Sequence[str]], None] = run_command,
    query: Callable[[Sequence[str]], str] = capture_command,
    probe: Callable[[str], None] | None = None,
) -> int:
    """The command line; `runner` runs the steps, `query` and `probe` serve the checks."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        checked = preflight(args, query, probe)
    except UsageError as error:  # before any step: nothing was created
        print(f"launch.py: error: {error}", file=sys.stderr)
        return 2
    steps = plan(args, checked.data)
    if args.dry_run:
        print_plan(args, steps, checked)
        return 0
    for note in checked.notes:
        print(f"launch.py: checked: {note}", file=sys.stderr)
    os.makedirs(args.results_dir, exist_ok=True)
    if runner is run_command:
        _interrupt_on_sigterm()
    try:
        out = execute(steps, runner)
    except KeyboardInterrupt:  # a second Ctrl-C, during the delete step
        print(
            "\nlaunch.py: interrupted while deleting; "
            f"the TPU VM {args.name!r} may still exist. Delete it with:\n"
            f"    {shlex.join(delete_argv(args))}",
            file=sys.stderr,
        )
        return 130
    finally:
        if not args.repo_url and os.path.exists(archive_path(args)):
            os.remove(archive_path(args))
    print(report(args, steps, out), file=sys.stderr)
    return out.exit_code


if __name__ == "__main__":
    sys.exit(main())
