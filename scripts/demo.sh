#!/usr/bin/env bash
# `make demo`: the main job on the built-in simulated pool.
set -euo pipefail
cd "$(dirname "$0")/.."
haven=.build/debug/haven
state=.demo/sim

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Validate the desired state (examples/quickstart)"
$haven validate examples/quickstart

step "2. Start the simulated pool (haven sim)"
rm -rf "$state"
mkdir -p .demo
$haven sim --world examples/quickstart/sim/world.yaml --state "$state" > .demo/sim.log 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true; wait $sim 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do [ -f "$state/endpoints.json" ] && break; sleep 0.1; done
[ -f "$state/endpoints.json" ] || { cat .demo/sim.log; echo "simulator did not start"; exit 2; }
cat .demo/sim.log
export HAVEN_LAB_PASSWORD=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["password"])' "$state/endpoints.json")

step "3. Simulate guest activity: rewrite 2% of web's first disk"
$haven sim write --state "$state" --vm web --percent 2 --pattern clustered --seed 7

step "4. Inject a fault and clear it"
$haven sim fault --state "$state" --rule 'error:VDI.data_destroy:VDI_IN_USE@count=1'
$haven sim fault --state "$state" --clear

step "5. Stop the simulator"
kill $sim
wait $sim || true
trap - EXIT
echo "demo finished; the pool's state is kept in $state"
