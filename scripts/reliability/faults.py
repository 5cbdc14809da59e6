"""Fault matrix: every fault rule of the simulator (`haven sim fault --rule …`: errors per call,
TOO_BUSY, latency, session expiry, dropped NBD connections, master failover, failing tasks, full
SRs) and a repository on a full file system, crossed with the operations: a backup, a restore to
the pool, an apply (the backups due — CBT and delta —, the replication syncs — cbt with singlePass
backups, and xva —, prune), GC. Each run must end with exit 0, or 2 with an error message that
says what failed; never a crash or a hang (a run is killed after a timeout and counted as a
hang). After each cell the fault is cleared and the invariants of the kill sweep hold: versions
made restore bit-identically, the repository verifies, nothing is orphaned, the user's objects
are untouched, and the next apply succeeds with nothing left to do.
"""

import os
import random
import re
import shutil
import subprocess
import time

from common import check_orphans
from world import Bench

PASSWORD = "fault-matrix-pool-secret-91c4"

# (name, rule): {A} is the scenario's address prefix.
RULES = [
    ("VDI_IN_USE on data_destroy x50", "error:VDI.data_destroy:VDI_IN_USE@count=50"),
    ("TOO_BUSY x3 on any call", "error:*:TOO_BUSY@count=3"),
    ("INTERNAL_ERROR on 5% of calls", "error:*:INTERNAL_ERROR@p=0.05"),
    ("HANDLE_INVALID on VM.destroy x1", "error:VM.destroy:HANDLE_INVALID@count=1"),
    ("CBT chain broken (list_changed_blocks 460)", "error:VDI.list_changed_blocks:SR_BACKEND_FAILURE_460"),
    ("latency 150ms on every call", "latency:*:150ms"),
    ("latency 2s on VM.snapshot", "latency:VM.snapshot:2s"),
    ("session expiry after 1s", "session-expiry:1s"),
    ("NBD connection dropped after 300 KB", "nbd-drop:300000"),
    ("master failover to host 2", "failover:{A}.2"),
    ("task of VM.snapshot fails", "task-fail:VM.snapshot:VDI_IO_ERROR"),
    ("task of VDI.create fails", "task-fail:VDI.create:SR_BACKEND_FAILURE_78"),
    ("SR full: Local storage", "sr-full:Local storage"),
    ("SR full: Replica storage", "sr-full:Replica storage"),
]

if os.environ.get("RELIABILITY_FAULT_RULES"):
    # Some rules only (names containing one of the comma-separated words), to iterate on a cell.
    RULES = [(n, r) for n, r in RULES if any(w in n for w in os.environ["RELIABILITY_FAULT_RULES"].split(","))]

# backup: `backup now` of the CBT policy; apply: everything due (backups of both policies, the
# replication sync, prune); restore: a version back onto the pool; gc: `repo gc` after a forget.
# failover: `haven failover dr app --no-start` (then, without the fault, a fail-back); xva and
# appliance backups are in the apply (policies `archive` and `boxes` of the world).
OPERATIONS = ["backup", "apply", "restore", "gc", "failover"]
if os.environ.get("RELIABILITY_FAULT_OPS"):
    OPERATIONS = [o for o in OPERATIONS if o in os.environ["RELIABILITY_FAULT_OPS"].split(",")]
TIMEOUT = 180


class Matrix(Bench):
    def __init__(self, res, root, seed, rules=RULES, worker=0, filesystem=True):
        super().__init__(res, root, "faults-%d" % worker, "fault-matrix", PASSWORD)
        self.rules, self.filesystem = rules, filesystem
        self.rng = random.Random(seed)
        self.seed = seed
        self.worker = worker
        self.counter = 0
        self.cells = []
        self.reported = set()
        self.repeats = 0

    def args(self, op):
        scn = self.scn
        self.counter += 1
        if op == "backup":
            return ["backup", "now", "-f", scn.config, "daily"], self.guest_writes(self.rng, self.counter)
        if op == "apply":
            return ["apply", "-f", scn.config, "--auto-approve"], self.guest_writes(self.rng, self.counter)
        if op == "restore":
            vid = sorted(v for v, disks in self.expected.items() if "0" in disks)[-1]
            return ["restore", "-f", scn.config, "--backup", vid, "--to-pool", "lab", "--sr", "Local storage", "--name",
                    "fault-restore-%d" % self.counter], None
        if op == "failover":
            self.scn.now += 60
            return ["failover", "-f", scn.config, "dr", "app", "--no-start"], None
        if op == "gc":
            ids = sorted(self.expected)
            if len(ids) > 3:
                forget = self.scn.haven(["backups", "forget", "-f", scn.config, "--state", scn.state, "--yes", ids[0]])
                if forget.rc == 0:
                    del self.expected[ids[0]]
            return ["repo", "gc", "-f", scn.config, "--safety-window", "0s"], None
        raise ValueError(op)

    @staticmethod
    def judge(r):
        """'survived', 'failed cleanly: …', or a problem ('crash …', 'hang …', 'unclear error …')."""
        if r.timed_out:
            return None, "hang: still running after %d s" % TIMEOUT
        if r.rc == 0:
            return "survived", None
        if r.rc == 2:
            # The reason: the last line saying something failed. A bare xapi code (`haven:
            # SR_FULL [3145728, 68719476736]`) or a few words is not a reason a user can act on.
            lines = [ln.strip() for ln in (r.err + r.out).splitlines()
                     if re.search(r"error|failed|cannot|refused|not ", ln, re.I) and not ln.lstrip().startswith("{")]
            # A failed action is the cause; actions skipped because of it are consequences.
            causes = [ln for ln in lines if not ln.startswith(("skipped", "↷", "- skipped"))]
            reason = (causes or lines or [""])[-1]
            bare = re.fullmatch(r"(haven: )?(error: )?[A-Z0-9_]+( \[[^\]]*\])?", reason)
            if bare or len(reason.split()) < 5:
                return None, "exit 2 without a clear error: " + r.brief()
            return "failed cleanly: " + reason[:300], None
        return None, "crash or unexpected exit %s: %s" % (r.rc, r.brief())

    def cell(self, rule_name, rule, op):
        scn = self.scn
        args, hashes = self.args(op)
        scn.fault(rule.replace("{A}", scn.prefix))
        r = scn.haven(args, timeout=TIMEOUT)
        scn.clear_faults()
        outcome, problem = self.judge(r)
        problems = [problem] if problem else []
        if not scn.sim_alive():
            problems.append("the simulator died")
        problems += self.note_versions(hashes, op, allow_removal=op in ("backup", "apply", "gc"))
        problems += self.verify()
        if op == "failover":
            # Without the fault: an open failover is failed back, app runs again (orphans first).
            problems += check_orphans(scn, self.user_uuids)
            self.finish_failback("the failover under %s" % rule_name)
        # The next apply succeeds and leaves nothing behind.
        after, h = ["apply", "-f", scn.config, "--auto-approve"], self.guest_writes(self.rng, 1000 + self.counter)
        a = scn.haven(after, timeout=TIMEOUT)
        if a.rc != 0:
            problems.append("the next apply failed: " + a.brief())
        problems += self.note_versions(h, "apply", True)
        if a.rc == 0:
            problems += self.in_sync()
        problems += self.forget_single_pass()
        problems += self.check_user_objects()
        self.cells.append({"rule": rule_name, "operation": op, "outcome": outcome or "FAILED", "seconds": round(r.seconds, 1),
                           "problems": problems})
        # A leftover that stays is reported after the cell that made it, not after every later one.
        for p in problems:
            if p in self.reported:
                self.repeats += 1
                continue
            self.reported.add(p)
            self.res.fail("fault-matrix", "%s x %s" % (rule_name, op), p)
        print("    %-44s %-8s %s" % (rule_name, op, (outcome or "FAILED")[:100]), flush=True)

    def run(self):
        start = time.monotonic()
        self.start()
        r = self.scn.apply()
        if r.rc != 0:
            self.res.fail("fault-matrix", "the first apply failed", r.brief())
            return self.summary(start)
        self.note_versions(self.source_hashes(), "apply", True)
        h = self.guest_writes(self.rng, 0)
        if self.scn.apply().rc == 0:
            self.note_versions(h, "apply", True)
        self.learn_at_rest()
        for name, rule in self.rules:
            for op in OPERATIONS:
                # GC speaks to no pool: the pool's faults cannot reach it (its own row is the full file system).
                if op == "gc" and not rule.startswith("error:*"):
                    continue
                self.cell(name, rule, op)
            for p in self.restore_all("row"):
                self.res.fail("fault-matrix", "after the row %s" % name, p)
        if self.filesystem:
            self.full_filesystem()
        for p in self.restore_all("final"):
            self.res.fail("fault-matrix", "at the end", p)
        return self.summary(start)

    def full_filesystem(self):
        """A repository on a small tmpfs that fills up during a backup: exit 2 naming the full
        disk, no half version, and after room is made (the file system grows), the next backup works."""
        root = os.path.join(self.scn.dir, "small-fs")
        os.makedirs(root, exist_ok=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", root], capture_output=True)
        if mounted.returncode != 0:
            self.cells.append({"rule": "repository file system full", "operation": "backup", "outcome": "not run: cannot mount a tmpfs "
                               + mounted.stderr.decode(errors="replace").strip(), "problems": []})
            return
        try:
            scn = self.scn
            repo = os.path.join(root, "repo")
            cfg = os.path.join(scn.dir, "config-small")
            shutil.rmtree(cfg, ignore_errors=True)
            os.makedirs(cfg)
            text = open(os.path.join(scn.config, "haven.yaml")).read().replace(scn.repo, repo)
            open(os.path.join(cfg, "haven.yaml"), "w").write(text)
            init = scn.haven(["repo", "init", repo])
            problems = [] if init.rc == 0 else ["repo init on the small file system failed: " + init.brief()]
            state = os.path.join(scn.dir, "state-small")
            env = {"HAVEN_STATE": state}
            for op in ("backup", "gc"):
                args = (["backup", "now", "-f", cfg, "daily", "--full"] if op == "backup"
                        else ["repo", "gc", "-f", cfg, "--safety-window", "0s"])
                r = scn.haven(args, env=env, timeout=TIMEOUT)
                outcome, problem = self.judge(r)
                cell = problems + ([problem] if problem else [])
                v = scn.haven(["repo", "verify", "--repo", repo])
                if v.rc != 0:
                    cell.append("verify after a full file system: " + v.brief())
                self.cells.append({"rule": "repository file system full (3 MiB tmpfs)", "operation": op, "outcome": outcome or "FAILED",
                                   "seconds": round(r.seconds, 1), "problems": cell})
                for p in cell:
                    self.res.fail("fault-matrix", "repository file system full x %s" % op, p)
                print("    %-44s %-10s %s" % ("repository file system full", op, (outcome or "FAILED")[:90]), flush=True)
            # Room again: the next backup succeeds and restores.
            subprocess.run(["mount", "-o", "remount,size=64m", root], capture_output=True)
            r = scn.haven(["backup", "now", "-f", cfg, "daily"], env=env, timeout=TIMEOUT)
            if r.rc != 0:
                self.res.fail("fault-matrix", "repository file system full: the backup after room was made failed", r.brief())
            self.scn.haven(["diff", "-f", cfg], env=env)
        finally:
            subprocess.run(["umount", "-l", root], capture_output=True)

    def summary(self, start):
        outcomes = {}
        for c in self.cells:
            k = "survived" if c["outcome"] == "survived" else ("failed cleanly" if c["outcome"].startswith("failed cleanly")
                                                              else ("not run" if c["outcome"].startswith("not run") else "FAILED"))
            outcomes[k] = outcomes.get(k, 0) + 1
        return {"cells": len(self.cells), "outcomes": outcomes, "table": self.cells, "restoresCompared": self.restores,
                "seconds": round(time.monotonic() - start, 1), "seed": self.seed}


def run(res, root, seed, workers=3):
    """The rules shared out between `workers` matrices side by side, each on a pool of its own."""
    import concurrent.futures

    def one(i):
        m = Matrix(res, root, seed * 100 + i, rules=RULES[i::workers], worker=i, filesystem=i == 0)
        try:
            return m.run()
        finally:
            m.scn.stop()

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(one, range(workers)))
    out = {"cells": sum(p["cells"] for p in parts), "table": [c for p in parts for c in p["table"]],
           "restoresCompared": sum(p["restoresCompared"] for p in parts), "seconds": max(p["seconds"] for p in parts), "seed": seed,
           "workers": workers, "outcomes": {}}
    for p in parts:
        for k, v in p["outcomes"].items():
            out["outcomes"][k] = out["outcomes"].get(k, 0) + v
    return out
