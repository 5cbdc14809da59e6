"""kill -9 sweep: haven is killed at numbered durable steps (HAVEN_CRASH_AT: `_exit` with no
clean-up) and at random moments (SIGKILL, seeded) during backups (full and incremental), prune,
GC, replication (cbt incrementals with singlePass backups, xva), the fail-back of a failed-over
replica, restores (to a file and to the pool), `backups forget`, `catalog rebuild` and the
catalog writes inside them. After every kill:

- every version in the repository restores bit-identically (`haven restore --to-file`, compared
  with the source disk's bytes when the version was taken), and no version vanished that no
  prune or forget removed;
- `haven repo verify` passes (no dangling chunk reference, no damaged manifest);
- no orphan: every pool object with this haven's owner or CBT mark is in the catalog or planned
  away by `haven diff`, and unmarked snapshots named like haven's are planned away;
- the user's own objects (a look-alike snapshot, a VM and a disk with haven-like marks) are
  unchanged;
and the next `haven apply` succeeds, after which `haven diff` has nothing left to do.
"""

import os
import random
import signal
import time

from common import check_orphans, failing_lines, sha256_file
from world import Bench

# How often each operation is the one killed (apply covers incremental backups, prune, GC
# planning, replication sync, snapshot clean-up and the catalog writes of all of them).
OPERATIONS = [("apply", 8), ("backup-full", 2), ("backup-xva", 1), ("backup-abd", 1), ("repo-gc", 2), ("forget", 1), ("restore-file", 2),
              ("restore-pool", 2), ("catalog-rebuild", 1), ("failover", 1), ("failback", 1)]
if os.environ.get("RELIABILITY_KILL_OPS"):
    OPERATIONS = [(o, w) for o, w in OPERATIONS if o in os.environ["RELIABILITY_KILL_OPS"].split(",")]
RECOVER_EVERY = int(os.environ.get("RELIABILITY_RECOVER_EVERY", "4"))
REMOVES_VERSIONS = ("apply", "forget", "backup-full", "backup-xva", "backup-abd")
# Steps after which versions already in the repository may have changed (a manifest removed, a
# version forgotten, packs removed or rewritten by GC): a killed run that reached none of them
# cannot have touched an earlier version, and only the versions it made are restored after it
# (`repo verify` still reads every chunk of every version after every kill).
TOUCHES_VERSIONS = ("manifest removed", "catalog forget backup", "gc ")
ALWAYS_RESTORE_ALL = ("repo-gc", "forget")


class Killed:
    """What a killed (or not killed) run gave."""

    def __init__(self, how, point, rc, out, err, args, steps=None):
        self.how, self.point, self.rc, self.out, self.err, self.args = how, point, rc, out, err, args
        self.steps = steps      # the durable steps the run reached (its HAVEN_CRASH_TRACE), None if unknown

    def brief(self, n=600):
        return "haven %s -> rc %s\n%s%s" % (" ".join(self.args), self.rc, (self.out + self.err)[-n:],
                                            failing_lines((self.out + self.err).strip(), self.rc))


class Sweep(Bench):
    def __init__(self, res, root, seed, target, budget, worker=0):
        super().__init__(res, root, "killsweep-%d" % worker, "kill-sweep")
        self.worker = worker
        self.seed, self.target, self.budget = seed, target, budget
        self.rng = random.Random(seed)
        self.steps = {}           # operation -> steps of its last clean run
        self.durations = {}       # operation -> seconds of its last clean run
        self.tried = {}           # operation -> crash points already used
        self.kills = []
        self.labels = {}          # crash point label -> kills there
        self.leftovers = {"partial-files": 0, "partial-restored-vms": 0}
        self.counter = 0
        self.recoveries = 0
        # A leftover that stays is reported after the kill that made it, not again after every
        # later kill: one defect must not use up the failure budget and stop the sweep.
        self.reported = set()
        self.repeats = 0
        self.full_checks = 0      # kills after which every version was restored
        self.failed = 0           # problems this worker reported (its own failure budget)

    def prepare(self, op):
        """Arguments of one run of `op`, and the source hashes the versions it makes will hold
        (None: it makes none)."""
        scn = self.scn
        self.counter += 1
        if op in ("apply", "backup-full", "backup-xva", "backup-abd"):
            hashes = self.guest_writes(self.rng, self.counter)
            if op == "apply":
                return ["apply", "-f", scn.config, "--auto-approve"], hashes
            policy = {"backup-full": "daily", "backup-xva": "archive", "backup-abd": "boxes"}[op]
            return ["backup", "now", policy, "--full", "-f", scn.config], hashes
        ids = sorted(self.expected)
        if op == "repo-gc":
            return ["repo", "gc", "-f", scn.config, "--safety-window", "0s"], None
        if op == "forget":
            if len(ids) <= 3:
                return None, None
            return ["backups", "forget", "-f", scn.config, "--state", scn.state, "--yes", self.rng.choice(ids)], None
        if op == "restore-file":
            vid = self.rng.choice(ids)
            key = self.rng.choice(sorted(self.expected[vid]))
            path = os.path.join(scn.dir, "restore-target-%d.raw" % self.counter)
            self.restore_target = (path, self.expected[vid][key])
            return ["restore", "-f", scn.config, "--backup", vid, "--disk", key, "--to-file", path], None
        if op == "restore-pool":
            vid = self.rng.choice(ids)
            return ["restore", "-f", scn.config, "--backup", vid, "--to-pool", "lab", "--sr", "Local storage", "--name",
                    "restored-%d" % self.counter], None
        if op == "catalog-rebuild":
            return ["catalog", "rebuild", "-f", scn.config], None
        if op == "failover":
            # The failover itself is the run killed (without starting the replica); after the
            # checks, an open failover is failed back and app runs again.
            self.scn.now += 60
            return ["failover", "-f", scn.config, "dr", "app", "--no-start"], None
        if op == "failback":
            # app's replica failed over (not killed), written to, the original shut down: the
            # fail-back is the run killed.
            r = scn.haven(["failover", "-f", scn.config, "dr", "app", "--no-start"])
            if r.rc != 0:
                self.res.fail(self.section, "haven failover (before a fail-back) failed", r.brief())
                return None, None
            self.set_app_power("halted")
            return ["failback", "-f", scn.config, "dr", "app", "--auto-approve"], None
        raise ValueError(op)

    def clean_run(self, op, args):
        """A run of `op` without a kill, traced: learns its steps and duration."""
        trace = os.path.join(self.scn.dir, "trace-%s.txt" % op)
        if os.path.exists(trace):
            os.unlink(trace)
        r = self.scn.haven(args, env={"HAVEN_CRASH_TRACE": trace}, timeout=300)
        if r.rc == 0:
            self.steps[op] = sum(1 for _ in open(trace)) if os.path.exists(trace) else 0
            self.durations[op] = r.seconds
        return r

    def killed_run(self, op, args):
        """Runs `op` and kills it at a crash point (HAVEN_CRASH_AT) or, three times in ten, with
        SIGKILL at a random moment."""
        steps = self.steps.get(op, 0)
        trace = os.path.join(self.scn.dir, "trace-killed.txt")
        if os.path.exists(trace):
            os.unlink(trace)

        def reached():
            try:
                return [ln.split(" ", 1)[1].strip() for ln in open(trace) if " " in ln]
            except OSError:
                return []

        if steps and self.rng.random() < 0.7:
            tried = self.tried.setdefault(op, set())
            fresh = [k for k in range(1, steps + 1) if k not in tried]
            k = self.rng.choice(fresh or range(1, steps + 1))
            tried.add(k)
            r = self.scn.haven(args, env={"HAVEN_CRASH_AT": str(k), "HAVEN_CRASH_TRACE": trace}, timeout=300)
            if r.rc == 99:
                label = next((ln.split("(", 1)[1].rstrip(")") for ln in r.err.splitlines() if "crash point" in ln), "?")
                return Killed("crash-at", "%d %s" % (k, label), r.rc, r.out, r.err, args, reached())
            return Killed("finished", None, r.rc, r.out, r.err, args, reached())
        delay = self.rng.uniform(0.05, max(0.2, self.durations.get(op, 2.0)))
        p = self.scn.start_haven(args, env={"HAVEN_CRASH_TRACE": trace})
        time.sleep(delay)
        finished = p.poll() is not None
        if not finished:
            os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return Killed("finished" if finished else "sigkill", "t=%.2fs" % delay, p.returncode, out.decode(errors="replace"),
                      err.decode(errors="replace"), args, reached())

    def check_after(self, op, hashes, context, steps):
        before = set(self.expected)
        problems = self.note_versions(hashes, op, allow_removal=op in REMOVES_VERSIONS)
        problems += self.verify()
        if op in ALWAYS_RESTORE_ALL or steps is None or any(s.startswith(TOUCHES_VERSIONS) for s in steps):
            problems += self.restore_all("k%d" % self.counter)
            self.full_checks += 1
        else:
            problems += self.restore_all("k%d" % self.counter, only=set(self.expected) - before)
        problems += check_orphans(self.scn, self.user_uuids)
        if op in ("failback", "failover"):
            self.finish_failback(context)
        problems += self.check_user_objects()
        if op == "restore-file":
            path, digest = self.restore_target
            if os.path.exists(path) and sha256_file(path) != digest:
                problems.append("a killed restore left %s with wrong contents" % path)
            partial = [n for n in os.listdir(self.scn.dir) if ".haven-partial-" in n]
            self.leftovers["partial-files"] += len(partial)
            for n in partial:
                os.unlink(os.path.join(self.scn.dir, n))
            if os.path.exists(path):
                os.unlink(path)
        if op == "restore-pool":
            name = "restored-%d" % self.counter
            self.leftovers["partial-restored-vms"] += sum(1 for v in self.scn.pool.call("VM.get_all_records").values()
                                                          if v["name_label"] == name)
        self.report("after %s" % context, problems)

    def report(self, what, problems):
        for p in problems:
            if p in self.reported:
                self.repeats += 1
                continue
            self.reported.add(p)
            self.failed += 1
            self.res.fail(self.section, what, p)

    def recover(self, context):
        """The next apply succeeds and leaves nothing to do."""
        self.recoveries += 1
        args, hashes = self.prepare("apply")
        before = set(self.expected)
        r = self.clean_run("apply", args)
        problems = [] if r.rc == 0 else ["the next apply failed: " + r.brief()]
        problems += self.note_versions(hashes, "apply", allow_removal=True)
        problems += self.forget_single_pass()
        # This apply may have pruned and collected garbage: every version then, else its own.
        trace = os.path.join(self.scn.dir, "trace-apply.txt")
        steps = [ln.split(" ", 1)[1].strip() for ln in open(trace) if " " in ln] if os.path.exists(trace) else None
        if steps is None or any(s.startswith(TOUCHES_VERSIONS) for s in steps):
            problems += self.restore_all("r%d" % self.counter)
            self.full_checks += 1
        else:
            problems += self.restore_all("r%d" % self.counter, only=set(self.expected) - before)
        if r.rc == 0:
            problems += self.in_sync()
        self.report("recovery after %s" % context, problems)

    def run(self):
        start = time.monotonic()
        self.start()
        # The first apply: CBT on, full backups, the replica's initial sync.
        args, hashes = self.prepare("apply")
        r = self.clean_run("apply", args)
        if r.rc != 0:
            self.res.fail(self.section, "the first apply failed", r.brief())
            return self.summary(start)
        self.note_versions(hashes, "apply", True)
        # Every operation's steps, learnt from one clean run each.
        for op in [o for o, _ in OPERATIONS if o not in ("apply", "forget")]:
            a, h = self.prepare(op)
            if a is None:
                continue
            r = self.clean_run(op, a)
            if r.rc != 0:
                self.res.fail(self.section, "a clean %s failed" % op, r.brief())
            if op in ("failback", "failover"):
                self.finish_failback("the clean %s" % op)
            if h is not None:
                self.note_versions(h, op, True)
        self.steps["forget"] = 4
        # What stays between runs, from the pool after these clean runs and one more apply.
        a, h = self.prepare("apply")
        if self.clean_run("apply", a).rc == 0:
            self.note_versions(h, "apply", True)
        self.at_rest_learnt = self.learn_at_rest()
        ops, weights = [o for o, _ in OPERATIONS], [w for _, w in OPERATIONS]
        while len(self.kills) < self.target and time.monotonic() - start < self.budget:
            op = self.rng.choices(ops, weights)[0]
            args, hashes = self.prepare(op)
            if args is None:
                continue
            k = self.killed_run(op, args)
            if k.how == "finished":
                if k.rc != 0:
                    self.res.fail(self.section, "%s (not killed) failed" % op, k.brief())
                if op in ("failback", "failover"):
                    self.finish_failback("a %s not killed" % op)
                self.note_versions(hashes, op, allow_removal=op in REMOVES_VERSIONS)
                continue
            label = k.point.split(" ", 1)[1] if k.how == "crash-at" else "SIGKILL at a random moment"
            self.labels[label] = self.labels.get(label, 0) + 1
            self.kills.append({"operation": op, "how": k.how, "point": k.point, "worker": self.worker, "seed": self.seed})
            context = "worker %d: %s killed (%s %s)" % (self.worker, op, k.how, k.point)
            self.check_after(op, hashes, context, k.steps)
            # A later killed run recovers first (and must not fail before its kill point); after
            # every fourth kill a clean apply must succeed and leave nothing to do.
            if len(self.kills) % RECOVER_EVERY == 0:
                self.recover(context)
            if self.failed > 25:
                self.res.fail(self.section, "too many failures; the sweep stopped early")
                break
        self.recover("the sweep")
        for p in self.verify() + self.restore_all("final") + self.check_user_objects():
            self.res.fail(self.section, "at the end", p)
        return self.summary(start)

    def summary(self, start):
        distinct = {(k["operation"], k["point"]) for k in self.kills}
        by_op = {}
        for k in self.kills:
            by_op[k["operation"]] = by_op.get(k["operation"], 0) + 1
        at_points = sum(1 for k in self.kills if k["how"] == "crash-at")
        return {
            "kills": len(self.kills), "distinctKillPoints": len(distinct), "crashPointKills": at_points,
            "randomSigkills": len(self.kills) - at_points, "byOperation": by_op, "byStep": dict(sorted(self.labels.items())),
            "stepsPerCleanRun": self.steps, "cleanAppliesAfterKills": self.recoveries, "restoresCompared": self.restores,
            "killsWithEveryVersionRestored": self.full_checks,
            "versionsAtEnd": len(self.expected), "leftovers": self.leftovers, "repeatedProblems": self.repeats,
            "atRest": {"%s %s" % k: v for k, v in sorted(getattr(self, "at_rest_learnt", {}).items(), key=str)}, "seconds": round(time.monotonic() - start, 1),
            "seed": self.seed, "killList": self.kills,
        }


def merge(parts):
    out = {"workers": len(parts), "seed": parts[0]["seed"], "seconds": max(p["seconds"] for p in parts)}
    out["killList"] = [k for p in parts for k in p["killList"]]
    # The same step number of the same operation counts once, whichever pool it was killed on.
    out["distinctKillPoints"] = len({(k["operation"], k["point"]) for k in out["killList"] if k["how"] == "crash-at"}) + sum(
        1 for k in out["killList"] if k["how"] != "crash-at")
    for key in ("kills", "crashPointKills", "randomSigkills", "cleanAppliesAfterKills", "restoresCompared", "killsWithEveryVersionRestored",
                "versionsAtEnd", "repeatedProblems"):
        out[key] = sum(p[key] for p in parts)
    for key in ("byOperation", "byStep", "leftovers"):
        merged = {}
        for p in parts:
            for k, v in p[key].items():
                merged[k] = merged.get(k, 0) + v
        out[key] = dict(sorted(merged.items()))
    out["stepsPerCleanRun"] = parts[0]["stepsPerCleanRun"]
    out["atRest"] = parts[0].get("atRest", {})
    return out


def run(res, root, seed, target=200, budget=900, workers=2):
    """`workers` sweeps side by side, each on a pool of its own (seeds seed*100+i), sharing the
    target number of kills."""
    import concurrent.futures

    def one(i):
        sweep = Sweep(res, root, seed * 100 + i, (target + workers - 1 - i) // workers, budget, worker=i)
        try:
            return sweep.run()
        finally:
            sweep.scn.stop()

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(one, range(workers)))
    summary = merge(parts)
    summary["seed"] = seed
    if summary["kills"] < target:
        res.fail("kill-sweep", "only %d kills within the time budget (%d s); %d wanted" % (summary["kills"], budget, target))
    return summary
