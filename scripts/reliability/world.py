"""The protected world both the kill sweep and the fault matrix work on: a pool with four
protected VMs (web: CBT backups; db: delta backups, `method: auto` without CBT; app: replicated
with CBT incrementals and singlePass backup versions; legacy: replicated with `method: xva`) and
the user's own look-alikes, and the
checks that every version restores bit-identically, the repository verifies, nothing is left
behind and the user's objects are untouched."""

import concurrent.futures
import json
import os

from common import Scenario, check_orphans, sha256_file, user_records

PASSWORD = "kill-sweep-pool-secret-7f3a"

VMS = """      - name: web
        power: Running
        networks: [net0]
        disks: [{name: web-root, size: 3Mi, fill: {seed: 11}}, {name: web-data, size: 2Mi, fill: {seed: 12, unallocated: 0.5}}]
      - name: db
        disks: [{name: db-root, size: 2Mi, fill: {seed: 13, text: 0.5, random: 0.5}}]
      - name: app
        power: Running
        networks: [net0]
        disks: [{name: app-root, size: 2Mi, fill: {seed: 14}}]
      - name: legacy
        power: Running
        networks: [net0]
        disks: [{name: legacy-root, size: 1Mi, fill: {seed: 16}}]
      - name: arch
        power: Running
        networks: [net0]
        disks: [{name: arch-root, size: 1Mi, fill: {seed: 17}}, {name: arch-data, size: 1Mi, fill: {seed: 18, unallocated: 0.5}}]
      - name: box
        power: Running
        networks: [net0]
        disks: [{name: box-root, size: 1Mi, fill: {seed: 19}}]
      - name: user-vm
        power: Running
        tags: [mine]
        other_config: {haven.role: backup-snapshot, haven.policy: daily, haven.source: someone}
        disks: [{name: user-root, size: 1Mi, fill: {seed: 15}}]"""

DOCS = [
    "apiVersion: haven/v1\nkind: Repository\nmetadata: {name: local}\nspec: {path: {REPO}}\n",
    ("apiVersion: haven/v1\nkind: BackupPolicy\nmetadata: {name: daily}\nspec:\n  pool: lab\n  vms: {names: [web]}\n"
     "  schedule: {every: 1h}\n  cbt: true\n  repository: local\n  retention: {keepLast: 2}\n"),
    ("apiVersion: haven/v1\nkind: BackupPolicy\nmetadata: {name: nightly}\nspec:\n  pool: lab\n  vms: {names: [db]}\n"
     "  schedule: {every: 1h}\n  cbt: false\n  repository: local\n  retention: {keepLast: 2}\n"),
    ("apiVersion: haven/v1\nkind: ReplicationPolicy\nmetadata: {name: dr}\nspec:\n  source: lab\n  vms: {names: [app]}\n"
     "  target: {pool: lab, sr: Replica storage}\n  schedule: {every: 1h}\n  keep: 2\n"
     "  singlePass: {repository: local}\n"),
    ("apiVersion: haven/v1\nkind: ReplicationPolicy\nmetadata: {name: drx}\nspec:\n  source: lab\n  vms: {names: [legacy]}\n"
     "  target: {pool: lab, sr: Replica storage}\n  schedule: {every: 1h}\n  method: xva\n"),
    # `method: xva` backups: the whole VM as one archive, each disk restored out of it.
    ("apiVersion: haven/v1\nkind: BackupPolicy\nmetadata: {name: archive}\nspec:\n  pool: lab\n  vms: {names: [arch]}\n"
     "  schedule: {every: 1h}\n  method: xva\n  cbt: false\n  repository: local\n  retention: {keepLast: 2}\n"),
    # Backups read by an appliance (a VM running `haven mover`, on a static address).
    ("apiVersion: haven/v1\nkind: AppliancePool\nmetadata: {name: abd}\nspec:\n  pool: lab\n  template: haven-abd\n"
     "  sr: Local storage\n  network: net0\n  addresses: [{PREFIX}.50]\n  netmask: 255.255.255.0\n  dhcpFallback: false\n  max: 1\n"),
    ("apiVersion: haven/v1\nkind: BackupPolicy\nmetadata: {name: boxes}\nspec:\n  pool: lab\n  vms: {names: [box]}\n"
     "  schedule: {every: 1h}\n  repository: local\n  appliances: abd\n  retention: {keepLast: 2}\n"),
]

TEMPLATES = "    templates: [{name: haven-abd, appliance: true, memory: 128Mi, disks: [{size: 4Mi}]}]\n"


# What haven keeps on the pool between runs, by (class, role): a CBT anchor per protected disk
# (web's two, app's one for the replication), the replica and its disk, `keep: 2` restore points
# and their disks. After a successful apply anything beyond this is a leftover.
# Roles added later (the delta base of `db`, `legacy`'s xva replica and its restore point…) are
# learnt from the pool after the first clean runs.
AT_REST = {("VDI", "cbt-anchor"): 3, ("VM", "replica"): 1, ("VDI", "replica-disk"): 3, ("VM", "restore-point"): 2}


class Bench:
    """One scenario of the protected world and what the harness knows it should hold."""

    def __init__(self, res, root, name, section, password=None):
        self.res, self.section = res, section
        self.scn = Scenario(root, name, VMS, DOCS, password or PASSWORD, templates=TEMPLATES)
        self.expected = {}        # version id -> {disk key: sha256}
        self.restores = 0
        self.tag = 0

    # --- the pool and the user's objects ------------------------------------------------------

    def make_user_objects(self):
        """The user's own snapshot named like haven's, and a disk with haven-like marks."""
        pool = self.scn.pool
        web = [r for r, v in pool.call("VM.get_all_records").items() if v["name_label"] == "web" and not v["is_a_snapshot"]][0]
        pool.call("VM.snapshot", web, "haven daily web by hand")
        sr = [r for r, v in pool.call("SR.get_all_records").items() if v["name_label"] == "Local storage"][0]
        pool.call("VDI.create", {"name_label": "user scratch", "name_description": "", "SR": sr, "virtual_size": str(1 << 20),
                                 "type": "user", "sharable": False, "read_only": False,
                                 "other_config": {"haven.role": "cbt-anchor", "haven.policy": "daily"}})
        snap = self.scn.pool.snapshot_of_pool()
        self.user_uuids = set()
        for cls in ("VM", "VDI"):
            for r in snap[cls].values():
                self.user_uuids.add(r["uuid"])
        self.user_before = user_records(snap, self.user_uuids)

    def check_user_objects(self):
        snap = self.scn.pool.snapshot_of_pool()
        after = user_records(snap, self.user_uuids)
        problems = []
        # Fields haven may change on a protected VM or disk: its snapshot lists, operations in
        # flight, and (on a protected disk) CBT with haven's CBT mark.
        # The kill sweep shuts app down for a fail-back and starts it again, as its user would:
        # a new domain id.
        volatile = {"snapshots", "allowed_operations", "current_operations", "VBDs", "cbt_enabled", "other_config", "resident_on",
                    "physical_utilisation", "domid"}
        protected = {"web", "db", "app", "legacy", "arch", "box", "web-root", "web-data", "db-root", "app-root", "legacy-root", "arch-root",
                     "arch-data", "box-root"}
        for uuid, before in self.user_before.items():
            now = after.get(uuid)
            if now is None:
                problems.append("user object %s (%s) is gone" % (uuid, before["name_label"]))
                continue
            for k, v in before.items():
                if k in volatile and before["name_label"] in protected:
                    if k == "other_config":
                        extra = {a: b for a, b in now[k].items() if a not in v}
                        changed = {a for a in v if now[k].get(a) != v[a]}
                        if changed or set(extra) - {"haven.cbt"}:
                            problems.append("%s: other_config changed %s %s" % (before["name_label"], sorted(changed), sorted(extra)))
                    continue
                # xapi's own bookkeeping of relations: a snapshot taken of a VM becomes its
                # `parent` and joins the `children` of the one before.
                if k in ("snapshots", "allowed_operations", "current_operations", "parent", "children"):
                    continue
                if now.get(k) != v:
                    problems.append("user object %s (%s): %s changed from %r to %r" % (uuid, before["name_label"], k, v, now.get(k)))
        return problems

    # --- failover and fail-back of `app` (the replication dr) -------------------------------

    def failed_over(self):
        db = self.scn.catalog_db()
        try:
            return any(r[0] for r in db.execute("select failedOverAt from replica"))
        finally:
            db.close()

    def set_app_power(self, state):
        pool = self.scn.pool
        ref = [r for r, v in pool.call("VM.get_all_records").items() if v["name_label"] == "app" and not v["is_a_snapshot"]
               and not v["is_a_template"]][0]
        power = pool.call("VM.get_power_state", ref)
        if state == "halted" and power != "Halted":
            pool.call("VM.hard_shutdown", ref)
        elif state == "running" and power != "Running":
            pool.call("VM.start", ref, False, False)

    def finish_failback(self, context):
        """After a (killed) fail-back: a clean `haven failback` completes it when the failover is
        still open, and app runs again (as its user would start it)."""
        # Later than the killed run (the clock is frozen between runs): a run never shares its
        # start time, which names its snapshots, with the one before.
        self.scn.now += 60
        if self.failed_over():
            self.set_app_power("halted")
            r = self.scn.haven(["failback", "-f", self.scn.config, "dr", "app", "--auto-approve"])
            if r.rc != 0:
                self.res.fail(self.section, "the fail-back after %s failed" % context, r.brief())
        self.set_app_power("running")

    # --- versions and their bytes -------------------------------------------------------------

    def source_hashes(self):
        return {key: sha256_file(self.scn.disk_file(uuid)) for key, uuid in self.disks.items()}

    def note_versions(self, hashes, op, allow_removal):
        """Adds the versions that appeared (their content: the sources' bytes before the run),
        drops those pruned. Returns problems."""
        listed = {b["id"]: b for b in self.scn.backups()}
        problems = []
        for vid in list(self.expected):
            if vid not in listed:
                if allow_removal:
                    del self.expected[vid]
                else:
                    problems.append("version %s vanished during %s, which removes no version" % (vid, op))
                    del self.expected[vid]
        for vid, b in listed.items():
            if vid in self.expected:
                continue
            if hashes is None:
                problems.append("version %s appeared during %s, which makes no version" % (vid, op))
                continue
            vm = b["vm"]["name"]
            if [d["key"] for d in b["disks"]] == ["xva"]:
                # An XVA archive: each of the VM's disks is restored out of it by its userdevice.
                self.expected[vid] = {key: h for (name, key), h in hashes.items() if name == vm}
            else:
                self.expected[vid] = {d["key"]: hashes[(vm, d["key"])] for d in b["disks"]}
        return problems

    def restore_all(self, tag, only=None):
        """Every version (or those in `only`) restores bit-identically. Returns problems."""
        jobs = [(vid, key, digest) for vid, disks in sorted(self.expected.items()) for key, digest in sorted(disks.items())
                if only is None or vid in only]
        outdir = os.path.join(self.scn.dir, "restores")
        os.makedirs(outdir, exist_ok=True)

        def one(job):
            vid, key, digest = job
            out = os.path.join(outdir, "%s-%s-%s.raw" % (tag, vid, key))
            r = self.scn.haven(["restore", "-f", self.scn.config, "--backup", vid, "--disk", key, "--to-file", out, "--force"], timeout=120)
            try:
                if r.rc != 0:
                    return "restore of %s disk %s failed: %s" % (vid, key, r.brief())
                got = sha256_file(out)
                return None if got == digest else "version %s disk %s restores to different bytes (%s, expected %s)" % (vid, key, got, digest)
            finally:
                if os.path.exists(out):
                    os.unlink(out)

        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(one, jobs))
        self.restores += len(jobs)
        return [p for p in results if p]

    def forget_single_pass(self, keep=2):
        """Single-pass versions (the replication `dr`'s) have no retention: they stay until
        forgotten. The harness forgets all but the newest `keep`, as an operator would, so that
        the restores after every kill do not grow without bound. Returns problems."""
        ids = sorted(b["id"] for b in self.scn.backups() if b.get("policy") == "dr")
        problems = []
        for vid in ids[:-keep] if len(ids) > keep else []:
            r = self.scn.haven(["backups", "forget", "-f", self.scn.config, "--state", self.scn.state, "--yes", vid])
            if r.rc != 0:
                problems.append("backups forget %s (a single-pass version) failed: %s" % (vid, r.brief()))
            else:
                self.expected.pop(vid, None)
        return problems

    def verify(self):
        r = self.scn.haven(["repo", "verify", "-f", self.scn.config], timeout=300)
        return [] if r.rc == 0 else ["repo verify failed: " + r.brief()]

    def start(self):
        self.make_user_objects()
        # app's versions are the replication's single-pass backups.
        self.disks = self.scn.source_disks(["web", "db", "app", "arch", "box"])

    def guest_writes(self, rng, counter):
        """Guest writes on some of the protected VMs, then the clock moves on past every schedule;
        returns the sources' hashes (what versions made next must restore to)."""
        for vm, seed in (("web", 1), ("db", 2), ("app", 3), ("legacy", 4), ("arch", 5), ("box", 6)):
            if rng.random() < 0.6:
                self.scn.sim_control(["write", "--vm", vm, "--percent", str(rng.choice([2, 5, 12])), "--seed", str(counter * 10 + seed)])
        self.scn.now += 3700
        return self.source_hashes()

    def in_sync(self):
        """diff after a successful apply: nothing to do, nothing orphaned. Returns problems."""
        d = self.scn.haven(["diff", "-f", self.scn.config, "--output", "json"])
        problems = []
        if d.rc != 0:
            try:
                actions = [a.get("headline", a.get("kind")) for a in json.loads(d.out).get("actions", [])]
            except ValueError:
                actions = [d.brief()]
            problems.append("after a successful apply, diff still plans %s" % actions)
        return problems + check_orphans(self.scn, self.user_uuids, diff=d) + self.leftovers_at_rest()

    def learn_at_rest(self):
        """What haven keeps between runs, as the pool holds it after clean runs (no kill, no fault)."""
        counts, _ = self.haven_objects()
        self.at_rest = dict(AT_REST)
        for key, n in counts.items():
            self.at_rest[key] = max(n, self.at_rest.get(key, 0))
        return self.at_rest

    def haven_objects(self):
        pool = self.scn.pool.snapshot_of_pool()
        instance = self.scn.instance()
        counts = {}
        problems = []
        for cls in ("VM", "VDI"):
            for r in pool[cls].values():
                if r["other_config"].get("haven.owner") == instance:
                    key = (cls, r["other_config"].get("haven.role"))
                    counts[key] = counts.get(key, 0) + 1
                elif cls == "VM" and r["is_a_snapshot"] and r["uuid"] not in self.user_uuids:
                    problems.append("leftover: snapshot %s (%s) without haven's mark" % (r["uuid"], r["name_label"]))
        return counts, problems

    def leftovers_at_rest(self):
        """After a successful apply: nothing of haven's beyond what it keeps between runs, and no
        snapshot without its mark (a look-alike of the user's excepted)."""
        at_rest = getattr(self, "at_rest", None) or AT_REST
        counts, problems = self.haven_objects()
        for key, n in sorted(counts.items(), key=str):
            if n > at_rest.get(key, 0):
                problems.append("leftover: %d %s of role %s where %d stay between runs" % (n, key[0], key[1], at_rest.get(key, 0)))
        return problems

