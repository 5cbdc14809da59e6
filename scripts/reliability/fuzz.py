"""libFuzzer targets (Fuzz/, a package of its own so that `swift build` and `swift test` never
build them): built with `-sanitize=fuzzer,address` into .build-fuzz, each run from its committed
seed corpus (Fuzz/Corpus/<target>) for a time budget or a number of executions, whichever comes
first. A crash or a leak is a failure; its input is kept in .reliability/fuzz/<target>/ (once
fixed, it goes into the committed corpus with a regression test in the normal suite).
"""

import os
import re
import shutil
import subprocess
import time

from common import ROOT

TARGETS = [
    # (target, max input length)
    ("FuzzSpecYAML", 8192),
    ("FuzzXMLRPC", 16384),
    ("FuzzJSONRPC", 16384),
    ("FuzzCBTBitmap", 4096),
    ("FuzzDiskFormats", 65536),
    ("FuzzManifest", 16384),
]

SCRATCH = os.path.join(ROOT, ".build-fuzz")


def build(res):
    """The fuzz targets, with the package's own pinned dependencies (offline when .build has them)."""
    os.makedirs(SCRATCH, exist_ok=True)
    for d in ("repositories",):
        src, dst = os.path.join(ROOT, ".build", d), os.path.join(SCRATCH, d)
        if os.path.isdir(src) and not os.path.exists(dst):
            shutil.copytree(src, dst, symlinks=True)
    shutil.copyfile(os.path.join(ROOT, "Package.resolved"), os.path.join(ROOT, "Fuzz", "Package.resolved"))
    cmd = ["swift", "build", "--package-path", "Fuzz", "--scratch-path", SCRATCH, "-c", "release",
           "-Xswiftc", "-sanitize=fuzzer,address", "-Xswiftc", "-g"]
    start = time.monotonic()
    b = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if b.returncode != 0:
        res.fail("fuzz", "building the fuzz targets failed: " + " ".join(cmd), b.stdout[-4000:] + b.stderr[-4000:])
        return None, time.monotonic() - start
    path = subprocess.run(cmd + ["--show-bin-path"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return path, time.monotonic() - start


def run_target(res, bindir, work, target, max_len, seconds, runs):
    corpus = os.path.join(work, target, "corpus")
    artifacts = os.path.join(work, target, "artifacts") + "/"
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(artifacts, exist_ok=True)
    seeds = os.path.join(ROOT, "Fuzz", "Corpus", target)
    cmd = [os.path.join(bindir, target), corpus, seeds, "-max_total_time=%d" % seconds, "-runs=%d" % runs, "-max_len=%d" % max_len,
           "-timeout=10", "-rss_limit_mb=2048", "-artifact_prefix=" + artifacts, "-print_final_stats=1"]
    start = time.monotonic()
    # Swift's own crash backtracer is off: libFuzzer and ASan report the crash themselves, and the
    # backtracer reading memory under ASan failed ("unknown-crash in memserver_read") or took
    # minutes on a loaded machine.
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1", SWIFT_BACKTRACE="enable=no",
               LSAN_OPTIONS="suppressions=%s:print_suppressions=0" % os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsan-suppressions.txt"))
    limit = seconds * 3 + 120
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit)
        log, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        # A hang is a finding, not the end of the section: the other targets still run.
        log = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        rc = None
        res.fail("fuzz", "%s: still running after %d s (-max_total_time=%d): killed, counted as a hang" % (target, limit, seconds), log[-3000:])
    with open(os.path.join(work, target, "log.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n" + log)
    executions = int(m.group(1)) if (m := re.search(r"stat::number_of_executed_units:\s*(\d+)", log)) else 0
    found = sorted(os.listdir(artifacts))
    out = {"target": target, "executions": executions, "crashes": len(found), "seconds": round(time.monotonic() - start, 1),
           "seedInputs": len(os.listdir(seeds)) if os.path.isdir(seeds) else 0,
           "corpus": len(os.listdir(corpus)) + (len(os.listdir(seeds)) if os.path.isdir(seeds) else 0), "exit": rc}
    if (rc is not None and rc != 0) or found:
        tail = "\n".join(ln for ln in log.splitlines() if "ERROR" in ln or "SUMMARY" in ln or "Fatal" in ln or "#" in ln[:3])[-3000:]
        res.fail("fuzz", "%s: exit %s, %d crashing input(s) in %s; reproduce with: %s %s" % (
            target, rc, len(found), artifacts, os.path.join(bindir, target), os.path.join(artifacts, found[0]) if found else ""),
            tail or log[-3000:])
    return out


def run(res, root, bindir=None, build_seconds=0.0, seconds=60, runs=1_000_000, targets=None):
    start = time.monotonic()
    if bindir is None:
        bindir, build_seconds = build(res)
    out = {"buildSeconds": round(build_seconds, 1), "secondsPerTarget": seconds, "runsPerTarget": runs, "targets": []}
    if not bindir:
        return out
    work = os.path.join(root, "fuzz")
    for target, max_len in TARGETS:
        if targets and target not in targets:
            continue
        t = run_target(res, bindir, work, target, max_len, seconds, runs)
        print("    fuzz %-18s %12s executions  %d crashes  %5.0f s" % (target, "{:,}".format(t["executions"]), t["crashes"], t["seconds"]),
              flush=True)
        out["targets"].append(t)
    out["seconds"] = round(time.monotonic() - start, 1)
    return out
