#!/usr/bin/env bash
# `make demo`: the main job on the built-in simulated pool, start to finish.
set -euo pipefail
cd "$(dirname "$0")/.."
haven=.build/debug/haven
sim_state=.demo/sim
config=examples/quickstart
export HAVEN_STATE=.demo/haven

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

rm -rf .demo
mkdir -p .demo

step "1. The desired state: one pool, one repository, one backup policy"
run $haven validate $config

step "2. Start the simulated pool (haven sim): 2 hosts, 3 VMs, NBD over TLS"
$haven sim --world $config/sim/world.yaml --state $sim_state > .demo/sim.log 2>&1 &
sim=$!
trap 'kill $sim 2>/dev/null || true; wait $sim 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do [ -f "$sim_state/endpoints.json" ] && break; sleep 0.1; done
[ -f "$sim_state/endpoints.json" ] || { cat .demo/sim.log; echo "simulator did not start"; exit 2; }
cat .demo/sim.log
export HAVEN_LAB_PASSWORD=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["password"])' "$sim_state/endpoints.json")

step "3. What would change? (exit 1: changes pending)"
set +e; run $haven diff -f $config; code=$?; set -e
echo "exit status $code"

step "4. Apply: enable CBT, snapshot, full backups over NBD, purge snapshot data"
run $haven apply -f $config --auto-approve 2> .demo/apply-1.log
tail -n 3 .demo/apply-1.log

step "5. Nothing left to do (exit 0)"
run $haven diff -f $config

step "6. A day passes; the web VM's guest rewrites 2% of its first disk"
run $haven sim write --state $sim_state --vm web --percent 2 --pattern clustered --seed 7
export HAVEN_NOW=$(date -u -d '+25 hours' +%Y-%m-%dT%H:%M:%SZ)
set +e; run $haven diff -f $config; set -e

step "7. Apply: incrementals read only the changed blocks"
run $haven apply -f $config --auto-approve 2> .demo/apply-2.log
grep -h '"finished"' .demo/apply-2.log | sed 's/.*"result":"\([^"]*\)".*/  \1/' || true

step "8. Restore web's first disk from the newest backup and check it against the live disk"
id=$($haven backups list -f $config --output json | python3 -c 'import json,sys; print([b for b in json.load(sys.stdin)["backups"] if b["vm"]["name"]=="web"][-1]["id"])')
run $haven restore -f $config --backup "$id" --disk 0 --to-file .demo/web-disk0.raw
live=$(python3 - "$sim_state" <<'PY'
import json, sys
db = json.load(open(sys.argv[1] + "/pools/lab/db.json"))
for o in db["objects"].values():
    f = o["fields"]
    if o["cls"] == "VDI" and f["name_label"] == "web-root" and not f["is_a_snapshot"]:
        print(sys.argv[1] + "/pools/lab/disks/" + f["uuid"] + ".img")
PY
)
run qemu-img compare -f raw -F raw .demo/web-disk0.raw "$live"

step "9. Status: last good backup, next due, RPO"
run $haven status -f $config
run $haven backups list -f $config

step "10. Stop the simulator"
kill $sim
wait $sim || true
trap - EXIT
echo "demo finished: state in .demo/ (simulator $sim_state, catalog $HAVEN_STATE, repository .demo/repository)"
