#!/usr/bin/env bash
# The project's test command (README, and .ci/run calls exactly this).
# Sets up what is missing, then runs the whole suite: unit, golden, runtime and the real
# two-node cluster tests (those need root; they skip with a reason otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
# With no arguments (README, CI) the suite runs as two pytest processes at once: the real-cluster tests,
# which mostly wait on Slurm and share one machine-wide cluster, and everything else. Their reports follow
# one another; the exit status fails if either fails. XGEN_TEST_SPLIT=0, or any argument, runs one pytest.
if (($#)) || [[ ${XGEN_TEST_SPLIT:-1} == 0 ]]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The split goes by folder: tests/cluster (real Slurm and namespaces, mostly waiting), tests/bench (the
# benchmark's smoke runs, which time whole commands) and tests/runtime/mm (vision-language training, about
# 2.5 min: it balances the two, measured 24:01 against 20:09 without it) in one process, everything else in
# the other.
beside_cluster=(tests/bench tests/runtime/mm)
cluster_log=$(mktemp -t xgen-cluster-tests.XXXXXX)
.venv/bin/python -m pytest tests/cluster "${beside_cluster[@]}" >"$cluster_log" 2>&1 &
cluster_pid=$!
trap 'kill "$cluster_pid" 2>/dev/null || true' INT TERM
rest=0
.venv/bin/python -m pytest --ignore=tests/cluster "${beside_cluster[@]/#/--ignore=}" || rest=$?
cluster=0
wait "$cluster_pid" || cluster=$?
echo
echo "=================== tests/cluster (with ${beside_cluster[*]}) ==================="
cat "$cluster_log"
rm -f "$cluster_log"
echo "exit status: tests/cluster $cluster, the rest $rest"
((rest == 0 && cluster == 0))
