#!/usr/bin/env bash
# The accelerator check on one NVIDIA GPU: JAX's CUDA build, the tests of the GPU code path, and
# bench/accelerator.py. Run from anywhere inside a checkout of this repo:
#
#     OUT=/tmp/gpu bash bench/gpu_check.sh
#
# Logs, the JUnit files and $OUT/accelerator.json land in $OUT (default ./gpu_check_out); the
# summary is $OUT/summary.txt. Budget: under 9 minutes of wall time (install <= 3 where needed,
# tests <= 4.5, bench <= 2.5), each stage under its own `timeout`.
#
# Settings (environment):
#   PYTHON     the interpreter (default python3)
#   WHEELS     a folder of wheels to install from, offline (pip download ... -d WHEELS elsewhere),
#              for a machine that reaches no package index; else pip uses the index
#   DATA_DIR   a folder with the four Fashion-MNIST IDX files, where the system has none
#              (apt-get install dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)
#   JAX_PIN    a version for the CUDA build, e.g. 0.10.2 (default: leave an installed GPU JAX, or
#              the newest)
#
# JAX's default GPU allocator takes 75% of the GPU's memory at start-up; the stages run one after
# another, so that is fine here. On a shared GPU, set XLA_PYTHON_CLIENT_MEM_FRACTION=.3.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
note() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
has_gpu() { "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; }

# --- 1. JAX with CUDA: CUDA 13 wheels need driver >= 580, older drivers take the CUDA 12 ones
driver=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
note "GPU: ${driver:-none found by nvidia-smi}"
major=$(echo "${driver##*, }" | cut -d. -f1)
cuda=cuda13
[ "${major:-0}" -lt 580 ] 2>/dev/null && cuda=cuda12
pip_install() {  # at most 90 s a call: two calls stay within the install's 3 minutes
  if [ -n "${WHEELS:-}" ]; then
    timeout 90 "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$@"
  else
    timeout 90 "$PY" -m pip install -q "$@"
  fi
}
if ! has_gpu || [ -n "${JAX_PIN:-}" ]; then
  spec="jax[$cuda]${JAX_PIN:+==$JAX_PIN}"
  note "installing $spec"
  pip_install -U "$spec" >"$OUT/install.log" 2>&1 || note "pip install $spec failed (install.log)"
fi
# the repo's own needs, where missing (an offline image may lack ml_collections, tensorboardX)
missing=$("$PY" -c '
import importlib.util
need = {"ml_collections": "ml-collections", "optax": "optax", "orbax": "orbax-checkpoint",
        "tensorboardX": "tensorboardX", "absl": "absl-py", "matplotlib": "matplotlib",
        "sklearn": "scikit-learn", "tqdm": "tqdm", "pytest": "pytest"}
print(" ".join(p for m, p in need.items() if importlib.util.find_spec(m) is None))')
if [ -n "$missing" ]; then
  note "installing the repo's missing needs: $missing"
  # shellcheck disable=SC2086
  pip_install $missing >>"$OUT/install.log" 2>&1 || note "pip install $missing failed (install.log)"
fi
"$PY" -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())" \
  >"$OUT/jax.txt" 2>&1
note "jax: $(tail -1 "$OUT/jax.txt")"
has_gpu || { note "JAX sees no GPU: stopping (install.log, jax.txt)"; exit 1; }

# --- 2. the tests of the accelerator path, on the GPU: tests/conftest.py only defaults
# JAX_PLATFORMS to cpu, so this makes the GPU the default backend (one device); the CPU's 8 fake
# devices stay for what asks for them. Deterministic GPU kernels, so that the resume tests'
# bit-equality holds. Two tests of test_training.py need 8 devices: deselected.
export JAX_PLATFORMS=cuda,cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_gpu_deterministic_ops=true"
run_tests() {  # name, time limit, pytest arguments...
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/$name.xml" "$@" \
    >"$OUT/$name.log" 2>&1
  note "$name: exit $? ($(grep -E '[0-9]+ (passed|failed)' "$OUT/$name.log" | tail -1))"
}
note "tests (4.5 minutes at most)"
run_tests tests_accelerator 90 tests/test_accelerator_path.py tests/test_mixed_precision.py
run_tests tests_training 180 -x tests/test_training.py \
  --deselect "tests/test_training.py::test_both_data_parallel_styles_equal_one_device_after_50_steps" \
  --deselect "tests/test_training.py::test_a_failed_start_names_the_problem_and_leaves_no_workdir"
unset XLA_FLAGS

# --- 3. the benchmark: both rows, full size
note "bench/accelerator.py (2.5 minutes at most)"
data=()
[ -n "${DATA_DIR:-}" ] && data=(--data-dir "$DATA_DIR")
timeout 150 "$PY" bench/accelerator.py "${data[@]}" --json "$OUT/accelerator.json" \
  >"$OUT/accelerator.txt" 2>"$OUT/accelerator.log"
note "bench: exit $?"
tee -a "$OUT/summary.txt" <"$OUT/accelerator.txt"
