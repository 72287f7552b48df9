#!/usr/bin/env bash
# The flakiness guard: run the signal, distributed and serve tests N times beside a CPU hog, and count.
#
#   scripts/stress_tests.sh [N] [pytest arguments ...]     # N defaults to 20
#
# Each round runs the tests once (all of them, slow ones included) while HOGS processes (default 2, the
# cores of this project's machines) spin on the CPU, so every race between processes is given room to
# show. It prints each round's counts, then the totals and every test that failed with the rounds it
# failed in; each failing round's log is kept under $LOGS (default a temporary folder). The exit status
# is 0 only when no test failed in any round: a flaky test is a race to find, never a retry.
#
# Environment: PYTHON (default .venv/bin/python), HOGS (default 2), LOGS (default: mktemp -d).
set -u
cd "$(dirname "$0")/.."
N=${1:-20}
shift $(( $# > 0 ? 1 : 0 ))
PYTHON=${PYTHON:-.venv/bin/python}
HOGS=${HOGS:-2}
LOGS=${LOGS:-$(mktemp -d -t cascade-stress-XXXXXX)}
TESTS=(
  tests/apps/test_apps_signals.py          # Ctrl-C and SIGTERM: every command, every executor
  tests/executors/test_exec_semantics.py   # the distributed executor against the reference, spawned ranks
  tests/executors/test_exec_conditioning.py
  tests/executors/test_exec_gang_keep.py
  tests/executors/test_exec_trace_names.py
  tests/executors/test_exec_failures.py
  tests/apps/test_apps_serve.py            # the server in-process: pacing, switches, clients
  tests/apps/test_apps_serve_cli.py        # its command: busy port, background SIGINT
  tests/apps/test_apps_serve_ranks.py      # served on N ranks: torchrun, a rank killed mid-stream
  tests/apps/test_apps_serve_soak.py       # cycles and a crowd of clients against a server process
)

hogs=()
stop_hogs() { for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null; done; }
trap stop_hogs EXIT
for _ in $(seq "$HOGS"); do
  "$PYTHON" -c 'while True: pass' &
  hogs+=($!)
done

echo "stress: $N rounds of ${#TESTS[@]} test groups beside $HOGS CPU hog(s); logs in $LOGS"
green=0; passed=0; failed=0
declare -A failures=()
for round in $(seq "$N"); do
  log="$LOGS/round-$round.log"
  start=$(date +%s)
  "$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@" > "$log" 2>&1
  status=$?
  summary=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed).* =+$' "$log" | tail -1 | tr -d '=')
  p=$(grep -oE '[0-9]+ passed' <<< "$summary" | grep -oE '[0-9]+' || echo 0)
  f=$(grep -oE '[0-9]+ failed' <<< "$summary" | grep -oE '[0-9]+' || echo 0)
  e=$(grep -oE '[0-9]+ errors?' <<< "$summary" | grep -oE '[0-9]+' || echo 0)
  passed=$((passed + p)); failed=$((failed + f + e))
  if [ "$status" -eq 0 ]; then
    green=$((green + 1)); rm -f "$log"
  else
    while read -r name; do failures[$name]+=" $round"; done < <(grep -E '^(FAILED|ERROR) ' "$log" | awk '{print $2}')
  fi
  echo "round $round/$N: ${summary:-no summary (status $status)} in $(( $(date +%s) - start )) s"
done

echo "stress: $green of $N rounds green; $passed tests passed, $failed failed"
for name in "${!failures[@]}"; do echo "  failed: $name in round(s)${failures[$name]}"; done
[ "$failed" -eq 0 ] && [ "$green" -eq "$N" ]
