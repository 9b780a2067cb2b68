#!/usr/bin/env python3
"""Train jaxnet on a Cloud TPU VM.

Create it, copy the code, install, train on every host, fetch the results, delete it. E.g.:

    python tpu_scripts/launch.py --name my-tpu --zone us-central2-b --dry-run -- --config.epochs=5

The steps, in order:

    archive  pack the committed tree (git archive HEAD) into a local tarball   (not with --repo-url)
    create   gcloud compute tpus tpu-vm create, with --accelerator-type and --version
    copy     scp the tarball to every worker, or git clone --repo-url on every worker
    unpack   unpack the tarball on every worker                                (not with --repo-url)
    install  pip install -U "jax[tpu]", then pip install -e . on every worker
    train    python3 train.py --config ... --workdir ... on ALL workers at once (--worker=all):
             multi-host JAX needs every host to run the same program
    fetch    copy the workdir from worker 0 (or from gs://) into --results-dir
    delete   gcloud compute tpus tpu-vm delete --quiet: ALWAYS, after a failure or Ctrl-C too,
             unless --keep-vm

Failure policy: after a failed step the remaining steps are skipped, except that `fetch` is still
tried when the failure came at or after `train` (partial metrics and checkpoints help to debug
it) and `delete` runs whenever `create` was attempted. Ctrl-C (or SIGTERM) skips `fetch` and goes
straight to `delete`. The exit status is 0 on success, 1 naming the first failed step, 130 after
Ctrl-C, and 2 for bad arguments.

The command list is built by the pure function `plan(args)`; `execute(steps, runner)` runs it with
an injectable runner (default: subprocess.run(argv, check=True), output streamed). Standard library
only, so it runs wherever gcloud does.
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
        "--workdir",
        help="run folder on each worker, or a gs:// path (default: ~/jaxnet_runs/NAME).",
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
    if args.workdir is None:
        args.workdir = f"~/jaxnet_runs/{args.name}"
    for item in args.overrides:
        if not _OVERRIDE.fullmatch(item):
            raise UsageError(
                f"unrecognized argument {item!r}: training overrides must look like "
                "--config.key=value"
            )


def default_runtime_version(accelerator_type: str) -> str | None:
    generation = accelerator_type.rsplit("-", 1)[0]
    return dict(RUNTIME_VERSIONS).get(generation)


def is_multi_host(accelerator_type: str) -> bool:
    """Slices of more than 8 (cores for v2-v4 and v5p, chips for v5e and v6e) span several hosts."""
    return int(accelerator_type.rsplit("-", 1)[1]) > 8


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


def plan(args: argparse.Namespace) -> list[Step]:
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
    train += [shlex.quote(o) for o in args.overrides]
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


def print_plan(args: argparse.Namespace, steps: Sequence[Step], stream=sys.stdout) -> None:
    w = lambda s="": print(s, file=stream)
    w(f"# jaxnet on a TPU VM: {len(steps)} steps (dry run: nothing is executed)")
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
    argv: Sequence[str] | None = None, runner: Callable[[Sequence[str]], None] = run_command
) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    steps = plan(args)
    if is_multi_host(args.accelerator_type) and not args.workdir.startswith("gs://"):
        print(
            f"launch.py: warning: {args.accelerator_type} spans several hosts and "
            f"--workdir {args.workdir} is local to each of them; only worker 0's copy is fetched, "
            "and multi-host checkpoints need a shared path (a gs:// workdir, if train.py can "
            "write one)",
            file=sys.stderr,
        )
    if args.dry_run:
        print_plan(args, steps)
        return 0
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
