#!/usr/bin/env bash
# Starts the loopback Kubernetes test environment in the background (building it first
# if needed) and prints the KUBECONFIG to use.  Stop it with stop.sh.
#
# Usage: tools/k8s-testenv/start.sh [WORK_DIR] [--no-controller-manager] [--no-scheduler]
#   WORK_DIR default: ${CVMH_K8S_WORK:-${TMPDIR:-/tmp}/cvmharness-k8s-testenv} (must not exist
#   or be empty; it is removed again by stop.sh).  PID and log: WORK_DIR.pid, WORK_DIR.log
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
work="${CVMH_K8S_WORK:-${TMPDIR:-/tmp}/cvmharness-k8s-testenv}"
if [[ $# -gt 0 && "$1" != --* ]]; then work="$1"; shift; fi
work="$(realpath -m "$work")"
python="${PYTHON:-python3}"

if [[ -f "$work.pid" ]] && kill -0 "$(cat "$work.pid")" 2>/dev/null; then
  echo "already running (pid $(cat "$work.pid")): export KUBECONFIG=$work/kubeconfig"
  exit 0
fi

bash "$here/build.sh"

rm -f "$work.pid"
nohup "$python" "$repo/tests/k8senv/env.py" serve --work-dir "$work" "$@" \
  >"$work.log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$work.pid"

for _ in $(seq 1 600); do
  if [[ -s "$work/env.json" ]]; then
    echo "k8s-testenv running (pid $pid), log $work.log"
    cat "$work/env.json"
    echo "export KUBECONFIG=$work/kubeconfig"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "k8s-testenv failed to start; last lines of $work.log:" >&2
    tail -n 40 "$work.log" >&2
    rm -f "$work.pid"
    exit 1
  fi
  sleep 0.5
done
echo "k8s-testenv did not become ready in 300s; see $work.log (stop it with stop.sh)" >&2
exit 1
