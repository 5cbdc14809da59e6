#!/usr/bin/env python3
"""`make reliability`: the harness that keeps looking for haven's reliability and security
defects (docs/RELIABILITY.md). Sections: the kill -9 sweep, the fault matrix, the libFuzzer
targets, the ownership property test with many seeds, and the secrets scan. Prints a summary
table, writes reliability-results.json, exits 1 when anything failed.

    scripts/reliability/run.py [--only kill,faults,fuzz,property,secrets] [--seed N]

Knobs (environment): RELIABILITY_KILLS (200), RELIABILITY_KILL_BUDGET (seconds, 900),
RELIABILITY_KILL_WORKERS (sweeps side by side, 3), RELIABILITY_FAULT_WORKERS (3),
RELIABILITY_FUZZ_SECONDS (per target, 60), RELIABILITY_FUZZ_RUNS (per target, 1000000),
RELIABILITY_PROPERTY_SEEDS (40), RELIABILITY_DIR (scratch, .reliability).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import HAVEN, ROOT, Results  # noqa: E402


def section(name):
    print("\n== %s" % name, flush=True)


def build_tests(res):
    """The test bundle the property section runs, built first (before anything else competes for
    the CPU, and so that an edit made while the harness runs cannot break its build)."""
    start = time.monotonic()
    build = subprocess.run(["swift", "build", "--build-tests"], cwd=ROOT, capture_output=True, text=True)
    if build.returncode != 0:
        res.fail("property", "swift build --build-tests failed", build.stdout[-3000:] + build.stderr[-3000:])
        return None
    return round(time.monotonic() - start, 1)


def run_property(res, seeds, built):
    """The ownership property test of the normal suite, with many seeds."""
    start = time.monotonic()
    env = dict(os.environ, HAVEN_PROPERTY_SEEDS=str(seeds))
    if built is None:
        return {"seeds": seeds, "passed": False}
    t = subprocess.run(["swift", "test", "--skip-build", "--disable-xctest", "--filter", "OwnershipPropertyTests"], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    out = t.stdout + t.stderr
    if t.returncode != 0:
        issues = [ln for ln in out.splitlines() if "recorded an issue" in ln or ("Expectation failed" in ln and not ln.startswith("2"))]
        res.fail("property", "OwnershipPropertyTests failed with HAVEN_PROPERTY_SEEDS=%d" % seeds, "\n".join(issues)[:6000] + "\n" + out[-2000:])
    checked = [ln for ln in out.splitlines() if "ownership property:" in ln]
    return {"seeds": seeds, "passed": t.returncode == 0, "report": checked[-1].split("ownership property:", 1)[1].strip() if checked else "",
            "seconds": round(time.monotonic() - start, 1)}


def table(results):
    rows = []
    k = results.get("killSweep")
    if k:
        rows.append(("kill -9 sweep", "%d kills (%d at crash points, %d SIGKILL at random moments), %d distinct points; "
                     "%d restores compared (every version after %d kills); %d clean applies after kills; leftovers counted %s; by operation %s" % (
                         k["kills"], k["crashPointKills"], k["randomSigkills"], k["distinctKillPoints"], k["restoresCompared"],
                         k.get("killsWithEveryVersionRestored", 0), k["cleanAppliesAfterKills"],
                         ", ".join("%s %d" % kv for kv in sorted(k.get("leftovers", {}).items())),
                         ", ".join("%s %d" % kv for kv in sorted(k.get("byOperation", {}).items()))), k["seconds"]))
    f = results.get("faultMatrix")
    if f:
        o = f["outcomes"]
        rows.append(("fault matrix", "%d cells: %d survived, %d failed cleanly, %d FAILED, %d not run" % (
            f["cells"], o.get("survived", 0), o.get("failed cleanly", 0), o.get("FAILED", 0), o.get("not run", 0)), f["seconds"]))
    z = results.get("fuzz")
    if z:
        for t in z.get("targets", []):
            rows.append(("fuzz %s" % t["target"], "%s executions, %s crashes, corpus %s" % (
                "{:,}".format(t.get("executions", 0)), t.get("crashes", "?"), t.get("corpus", "?")), t.get("seconds", 0)))
    p = results.get("property")
    if p:
        rows.append(("ownership property", "%d seeds: %s%s" % (p["seeds"], "passed" if p["passed"] else "FAILED",
                                                             (" (" + p["report"] + ")") if p.get("report") else ""), p.get("seconds", 0)))
    s = results.get("secrets")
    if s:
        rows.append(("secrets scan", "%d secrets x %d places (%d commands): %d hits" % (s["secrets"], s["placesSearched"], s["commands"],
                                                                                      s["hits"]), s["seconds"]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="kill,faults,fuzz,property,secrets")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("RELIABILITY_SEED", "13")))
    args = ap.parse_args()
    only = set(args.only.split(","))
    scratch = os.environ.get("RELIABILITY_DIR", os.path.join(ROOT, ".reliability"))
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    os.chmod(scratch, 0o700)
    if not os.path.exists(HAVEN):
        print("no haven binary at %s (make build first)" % HAVEN)
        return 2
    res = Results()
    results = {"seed": args.seed, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    start = time.monotonic()
    # The fuzzers are CPU-bound and the pool sections mostly wait on the simulator: the fuzzers
    # run on a thread of their own beside the secrets scan, the kill sweep and the fault matrix
    # (built first, so that compiling does not compete with them).
    built = None
    if "property" in only:
        section("test bundle for the ownership property (built first)")
        built = build_tests(res)
        print("    built in %s s" % built, flush=True)
        results["testBuildSeconds"] = built
    fuzz_thread = None
    if "fuzz" in only:
        import threading

        import fuzz
        section("libFuzzer targets (built now, run beside the next sections)")
        bindir, build_seconds = fuzz.build(res)
        print("    built in %.0f s" % build_seconds, flush=True)
        box = {}

        def fuzz_all():
            box["out"] = fuzz.run(res, scratch, bindir=bindir, build_seconds=build_seconds,
                                  seconds=int(os.environ.get("RELIABILITY_FUZZ_SECONDS", "60")),
                                  runs=int(os.environ.get("RELIABILITY_FUZZ_RUNS", "1000000")))

        fuzz_thread = threading.Thread(target=fuzz_all)
        fuzz_thread.start()
    if "secrets" in only:
        import secretscan
        section("secrets scan")
        results["secrets"] = secretscan.run(res, scratch)
    if "kill" in only:
        import killsweep
        section("kill -9 sweep (seed %d)" % args.seed)
        results["killSweep"] = killsweep.run(res, scratch, args.seed, target=int(os.environ.get("RELIABILITY_KILLS", "200")),
                                             budget=int(os.environ.get("RELIABILITY_KILL_BUDGET", "900")),
                                             workers=int(os.environ.get("RELIABILITY_KILL_WORKERS", "3")))
    if "faults" in only:
        import faults
        section("fault matrix (seed %d)" % args.seed)
        results["faultMatrix"] = faults.run(res, scratch, args.seed, workers=int(os.environ.get("RELIABILITY_FAULT_WORKERS", "3")))
    if fuzz_thread:
        fuzz_thread.join()
        results["fuzz"] = box.get("out", {"targets": []})
    if "property" in only:
        section("ownership property test")
        results["property"] = run_property(res, int(os.environ.get("RELIABILITY_PROPERTY_SEEDS", "40")), built)
    results["seconds"] = round(time.monotonic() - start, 1)
    load = os.getloadavg()
    results["loadAverageAtEnd"] = [round(x, 1) for x in load]
    results["failures"] = res.failures
    results["passed"] = not res.failures
    with open(os.path.join(ROOT, "reliability-results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print("\n== summary (seed %d, %.0f s, load average at the end %.1f %.1f %.1f)" % ((args.seed, results["seconds"]) + load))
    # The table docs/RELIABILITY.md carries.
    print("| section | figures | seconds |\n|---|---|---|")
    for name, what, secs in table(results):
        print("| %s | %s | %.0f |" % (name, what, secs))
    print("  %d failure%s; details in reliability-results.json" % (len(res.failures), "" if len(res.failures) == 1 else "s"))
    return 0 if not res.failures else 1


if __name__ == "__main__":
    sys.exit(main())
