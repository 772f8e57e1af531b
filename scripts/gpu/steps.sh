# Sourced by the GPU run scripts (bash): time-budgeted steps and the carried test wheels.
# Needs BUDGET (seconds for the whole script); STEPS (default all) selects steps by name;
# MIN_LEFT (default 20) is the least budget a step still starts with.

step() {  # step NAME TIMEOUT CMD...: run if selected, with a time limit inside the budget; never abort
  local name=$1 limit=$2; shift 2
  if [ "${STEPS:-all}" != all ] && [[ " $STEPS " != *" $name "* ]]; then echo "== not selected: $name"; return; fi
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt "${MIN_LEFT:-20}" ]; then echo "== SKIP $name (only ${left}s left)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, t=${SECONDS}s)"
  timeout --kill-after=10 "$limit" "$@"
  echo "== $name rc=$? (t=${SECONDS}s)"
}

install_test_wheels() {  # pytest from the carried .whl/ when the machine has none (no index there)
  if ! python3 -c "import pytest" 2>/dev/null && ls .whl/pytest-*.whl >/dev/null 2>&1; then
    local whls
    whls=$(ls .whl/pytest-*.whl .whl/pluggy-*.whl .whl/iniconfig-*.whl .whl/pygments-*.whl)
    python3 -c "import packaging" 2>/dev/null || whls="$whls $(ls .whl/packaging-*.whl)"
    python3 -m pip install -q --no-index --no-deps --target /tmp/site $whls && export PYTHONPATH=/tmp/site:$PYTHONPATH
  fi
}
