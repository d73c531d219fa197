#!/usr/bin/env bash
# The trainer's GPU checks in one go, for a machine with one NVIDIA GPU (run from anywhere):
#   1. `pytest -m gpu` (tests/integration/trainer/test_trainer_gpu.py): both examples under NCCL
#      through the launcher, a bf16 CUDA checkpoint round trip and resume, the robust hook's
#      collectives on the CUDA device;
#   2. both examples through the real CLI, `trainguard train --script ... --nproc 1` (init, login
#      with TOTP, preflight incl. the GPU foreign-process check, NCCL), result JSON checked;
#   3. a summary, one line per check; exit 0 only when every check passed.
#
# Environment: PY (default python3) must be a Python whose torch sees CUDA; a venv over its
# packages (--system-site-packages, so its CUDA torch is used) gets trainguard installed
# editable, offline. Missing dependencies (on the lent H200 image: cryptography, pyotp, pycasbin,
# skops, qrcode, py7zr, argcomplete...) come from WHEELS (default .gpu-wheels/ in the repo),
# made here beforehand, e.g.:
#   pip download -d .gpu-wheels --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 -c constraints.txt cryptography pyotp pycasbin skops \
#       qrcode py7zr argcomplete nvidia-ml-py prometheus-client
# (add .gpu-wheels to .git/info/exclude and carry it). Outputs go to $OUT (default a temp dir).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PY:-python3}
VENV=${VENV:-/tmp/tg-gpu-venv}
WHEELS=${WHEELS:-.gpu-wheels}
export PYTHONUNBUFFERED=1
declare -A STATUS

echo "== gpu_check: outputs in $OUT"
nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.txt"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        && [ -z "${ALLOW_CPU:-}" ]; then  # ALLOW_CPU=1: a dry run of this script's plumbing
    echo "gpu_check: $PY's torch sees no CUDA device; nothing to check"
    exit 2
fi

echo "== environment"
if "$PY" -c 'import trainguard.trainer, accelerate, pyotp' 2>/dev/null; then
    V="$PY"  # trainguard is installed there already
else
    "$PY" -m venv --system-site-packages "$VENV" || exit 2
    V="$VENV/bin/python"
    pip_args=(--no-index --no-build-isolation -q)
    [ -d "$WHEELS" ] && pip_args+=(--find-links "$WHEELS")
    if ! "$V" -m pip install "${pip_args[@]}" -e ".[accelerate]" >"$OUT/install.log" 2>&1; then
        echo "gpu_check: installing trainguard offline failed (a dependency missing from $WHEELS?):"
        tail -n 15 "$OUT/install.log"
        exit 2
    fi
fi
"$V" - <<'EOF' | tee "$OUT/versions.txt"
import torch, torch.distributed as dist
gpu = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name(0) if gpu else 'none'}, "
      f"nccl {'.'.join(map(str, torch.cuda.nccl.version())) if gpu else '-'}, "
      f"nccl backend {dist.is_nccl_available()}")
EOF

echo "== 1. pytest -m gpu"
"$V" -m pytest -m gpu -v -rA -p no:cacheprovider tests/integration/trainer/test_trainer_gpu.py \
    2>&1 | tee "$OUT/pytest-gpu.log"
if [ "${PIPESTATUS[0]}" -eq 0 ] && grep -q " passed" "$OUT/pytest-gpu.log" \
        && ! grep -q " skipped" "$OUT/pytest-gpu.log"; then
    STATUS[pytest-gpu]=PASS
else
    STATUS[pytest-gpu]=FAIL
fi

echo "== 2. both examples through trainguard train --script (NCCL, 1 GPU)"
WORK=$(mktemp -d)
export HOME="$WORK/user" XDG_CONFIG_HOME="$WORK/user/.config"
mkdir -p "$HOME"
TG=("$V" -m trainguard.cli.main)
"${TG[@]}" init --home "$WORK/home" --admin alice --format json >"$WORK/init.json" || exit 3
last_step=-1
for example in digits_plain digits_accelerate; do
    while [ $(( $(date +%s) / 30 )) -le "$last_step" ]; do sleep 1; done  # a code counts once
    last_step=$(( $(date +%s) / 30 ))
    code=$("$V" -c 'import json, sys, pyotp, urllib.parse as u
uri = json.load(open(sys.argv[1]))["admin"]["otpauth_uri"]
print(pyotp.TOTP(u.parse_qs(u.urlparse(uri).query)["secret"][0]).now())' "$WORK/init.json")
    "${TG[@]}" login --home "$WORK/home" --user alice --otp "$code" >/dev/null || exit 3
    "${TG[@]}" train --script "trainer/examples/$example.py" --home "$WORK/home" --user alice \
        --nproc 1 --checkpoint-dir "$WORK/ck-$example" --skip-deps-verify --timeout 500 \
        --format json -- --epochs 3 --checkpoint-every 25 \
        >"$OUT/$example.json" 2>"$OUT/$example.err"
    rc=$?
    verdict=$("$V" - "$OUT/$example.json" "$rc" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except ValueError:
    print(f"FAIL exit {sys.argv[2]}, no result JSON"); sys.exit()
ok = (sys.argv[2] == "0" and r["status"] == "completed" and r["backend"] == "nccl"
      and r["device"] == "cuda:0" and (r["final_accuracy"] or 0) >= 0.85
      and r["checkpoints"] and r["checkpoints"][-1]["step"] == r["steps"])
print(("PASS" if ok else "FAIL") + f" exit {sys.argv[2]}, {r['status']}, backend {r['backend']}, "
      f"device {r['device']}, accuracy {r['final_accuracy']}, steps {r['steps']}, "
      f"checkpoints {[c['step'] for c in r['checkpoints']]}, wall {r['timings']['wall_s']} s, "
      f"mean step {r['timings']['mean_step_s']} s")
EOF
)
    echo "$example: $verdict"
    [ "$rc" -eq 0 ] || tail -n 20 "$OUT/$example.err"
    STATUS[cli-$example]=${verdict%% *}
done

echo "== summary"
fail=0
for check in pytest-gpu cli-digits_plain cli-digits_accelerate; do
    echo "  ${STATUS[$check]:-FAIL}  $check"
    [ "${STATUS[$check]:-FAIL}" = PASS ] || fail=1
done
grep -E "^(PASSED|FAILED|SKIPPED|ERROR)" "$OUT/pytest-gpu.log" | sed 's/^/    /'
exit $fail
