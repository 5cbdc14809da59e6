"""Shared pieces of `make reliability`: running haven, a simulated pool with a configuration
pointing at it, reading the pool and the catalog, and the invariants every section checks.

Standard library only (Python 3.9+): the harness must run wherever `make test` runs.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import ssl
import subprocess
import tempfile
import time
import xmlrpc.client

# pyenv's shim puts its interpreter's own bin directory first on PATH; nbdkit's embedded Python
# (the simulator's NBD plugin) would then load that interpreter's standard library and fail.
os.environ["PATH"] = ":".join(p for p in os.environ.get("PATH", "").split(":") if "/.pyenv/versions/" not in p)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HAVEN = os.environ.get("HAVEN_BIN", os.path.join(ROOT, ".build", "debug", "haven"))

# Loopback addresses of the harness: 127.245-249.x.y, outside every test family
# (engine 20-39, mover 40-59, data 60-99, simulator 100-149, CLI 150-239, referee 240-241).
_next_net = [0]


def next_prefix():
    _next_net[0] += 1
    n = _next_net[0]
    return "127.%d.%d" % (245 + (os.getpid() + n // 250) % 5, n % 250 + 1)


class Run:
    def __init__(self, args, rc, out, err, seconds, timed_out=False):
        self.args, self.rc, self.out, self.err, self.seconds, self.timed_out = args, rc, out, err, seconds, timed_out

    @property
    def text(self):
        return self.out + self.err

    def brief(self, n=600):
        t = self.text.strip()
        return ("haven " + " ".join(self.args) + " -> rc %s" % self.rc + (" (timed out)" if self.timed_out else "")
                + ("\n" + t[-n:] if t else "") + failing_lines(t, self.rc))


def failing_lines(text, rc):
    """The lines of a failed run's output that say what failed (the tail alone often shows only
    the last action, which succeeded): appended after the tail, so that a report cut to its end
    keeps them."""
    if rc in (0, 99) or not text:
        return ""
    keep = [ln[:400] for ln in text.splitlines()
            if '"event":"failed"' in ln or "failed" in ln.lower() or "error" in ln.lower() or ln.startswith("haven:")]
    return ("\n-- lines of the output saying what failed:\n" + "\n".join(keep[-12:])) if keep else ""


def run_haven(args, env=None, timeout=300, cwd=None):
    """Runs the haven binary; a run that outlives `timeout` is killed and reported (rc None)."""
    full_env = dict(os.environ)
    full_env.pop("HAVEN_CRASH_AT", None)
    full_env.pop("HAVEN_CRASH_TRACE", None)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    start = time.monotonic()
    p = subprocess.Popen([HAVEN] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=cwd or ROOT,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return Run(args, p.returncode, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - start)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return Run(args, None, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - start, True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Pool:
    """A XenAPI session on the simulated pool, over XML-RPC (the official SDK's protocol)."""

    def __init__(self, hosts, password, username="root", port=4443):
        self.hosts, self.password, self.username, self.port = list(hosts), password, username, port
        self.ctx = ssl._create_unverified_context()

    def _proxy(self, host):
        return xmlrpc.client.ServerProxy("https://%s:%d/" % (host, self.port), context=self.ctx, allow_none=True)

    def session(self):
        last = None
        for host in self.hosts:
            proxy = self._proxy(host)
            r = proxy.session.login_with_password(self.username, self.password, "1.1", "reliability-harness")
            if r["Status"] == "Success":
                return proxy, r["Value"]
            last = r["ErrorDescription"]
            if last[0] == "HOST_IS_SLAVE":
                proxy = self._proxy(last[1])
                r = proxy.session.login_with_password(self.username, self.password, "1.1", "reliability-harness")
                if r["Status"] == "Success":
                    return proxy, r["Value"]
        raise RuntimeError("cannot log in to the simulated pool: %s" % last)

    def call(self, method, *params):
        proxy, s = self.session()
        try:
            obj = proxy
            for part in method.split("."):
                obj = getattr(obj, part)
            r = obj(s, *params)
            if r["Status"] != "Success":
                raise RuntimeError("%s failed: %s" % (method, r["ErrorDescription"]))
            return r["Value"]
        finally:
            try:
                proxy.session.logout(s)
            except Exception:
                pass

    def snapshot_of_pool(self):
        """Every VM, VDI and VBD record, in one session."""
        proxy, s = self.session()
        try:
            out = {}
            for cls in ("VM", "VDI", "VBD"):
                r = getattr(proxy, cls).get_all_records(s)
                if r["Status"] != "Success":
                    raise RuntimeError("%s.get_all_records: %s" % (cls, r["ErrorDescription"]))
                out[cls] = r["Value"]
            return out
        finally:
            try:
                proxy.session.logout(s)
            except Exception:
                pass


class Scenario:
    """`haven sim` serving one pool on a /24 of its own, a configuration pointing at it, and the
    state directory and repository of one haven instance."""

    def __init__(self, root, name, vms, docs, password, srs=None, networks=None, templates=""):
        self.name = name
        self.dir = os.path.join(root, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "config"))
        self.prefix = next_prefix()
        self.password = password
        self.sim_state = os.path.join(self.dir, "sim")
        self.state = os.path.join(self.dir, "state")
        self.repo = os.path.join(self.dir, "repo")
        self.config = os.path.join(self.dir, "config")
        self.now = time.time()
        srs = srs or "[{name: Local storage, type: ext, size: 64Gi, default: true}, {name: Replica storage, type: ext, size: 64Gi}]"
        networks = networks or "[{name: net0, purpose: [nbd], dhcp: \"%s.200-%s.249\"}]" % (self.prefix, self.prefix)
        world = ("pools:\n  - name: lab\n    port: 4443\n    credentials: {username: root, password: %s}\n"
                 "    hosts:\n      - {name: h1, address: \"%s.1\"}\n      - {name: h2, address: \"%s.2\"}\n"
                 "    srs: %s\n    networks: %s\n%s    vms:\n%s\n") % (password, self.prefix, self.prefix, srs, networks, templates, vms)
        with open(os.path.join(self.dir, "world.yaml"), "w") as f:
            f.write(world)
        pool_doc = ("apiVersion: haven/v1\nkind: Pool\nmetadata: {name: lab}\nspec:\n  url: https://%s.2:4443\n"
                    "  credentials: {username: root, passwordEnv: RELIABILITY_POOL_PASSWORD}\n"
                    "  tls: {caFile: %s/pools/lab/pki/pool-bundle.pem}\n") % (self.prefix, self.sim_state)
        with open(os.path.join(self.config, "haven.yaml"), "w") as f:
            f.write("---\n".join([pool_doc] + [d.replace("{REPO}", self.repo).replace("{PREFIX}", self.prefix) for d in docs]))
        self.sim_log = open(os.path.join(self.dir, "sim.log"), "w")
        self.sim = subprocess.Popen([HAVEN, "sim", "--world", os.path.join(self.dir, "world.yaml"), "--state", self.sim_state],
                                    stdout=self.sim_log, stderr=subprocess.STDOUT, start_new_session=True)
        endpoints = os.path.join(self.sim_state, "endpoints.json")
        for _ in range(600):
            if os.path.exists(endpoints) or self.sim.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(endpoints):
            raise RuntimeError("haven sim did not start: " + open(os.path.join(self.dir, "sim.log")).read())
        self.pool = Pool(["%s.1" % self.prefix, "%s.2" % self.prefix], password)
        self.env = {"HAVEN_STATE": self.state, "RELIABILITY_POOL_PASSWORD": password}

    def stop(self):
        if self.sim.poll() is None:
            self.sim.send_signal(signal.SIGTERM)
            try:
                self.sim.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.sim.pid, signal.SIGKILL)
                self.sim.wait()
        self.sim_log.close()

    def sim_alive(self):
        return self.sim.poll() is None

    def haven(self, args, env=None, timeout=300):
        e = dict(self.env)
        e["HAVEN_NOW"] = iso(self.now)
        e.update(env or {})
        return run_haven(args, env=e, timeout=timeout)

    def start_haven(self, args, env=None):
        """Starts haven without waiting (for kill -9 at a random moment)."""
        e = dict(os.environ)
        e.pop("HAVEN_CRASH_AT", None)
        e.update(self.env)
        e["HAVEN_NOW"] = iso(self.now)
        e.update(env or {})
        return subprocess.Popen([HAVEN] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=ROOT, start_new_session=True)

    def apply(self, env=None, extra=None, timeout=300):
        return self.haven(["apply", "-f", self.config, "--auto-approve"] + (extra or []), env=env, timeout=timeout)

    def sim_control(self, args):
        return run_haven(["sim"] + args + ["--state", self.sim_state], timeout=60)

    def fault(self, rule):
        r = self.sim_control(["fault", "--rule", rule])
        if r.rc != 0:
            raise RuntimeError("fault rule %r refused: %s" % (rule, r.text))

    def clear_faults(self):
        self.sim_control(["fault", "--clear"])

    def disk_file(self, uuid):
        return os.path.join(self.sim_state, "pools", "lab", "disks", uuid + ".img")

    def backups(self):
        r = self.haven(["backups", "list", "-f", self.config, "--output", "json"])
        if r.rc != 0:
            raise RuntimeError("backups list failed: " + r.brief())
        return json.loads(r.out)["backups"]

    def catalog(self):
        """The catalog's inventory, CBT marks and intents, read directly (read-only)."""
        path = os.path.join(self.state, "catalog.sqlite")
        if not os.path.exists(path):
            return {"owned": set(), "cbt": set(), "intents": set(), "backups": set()}
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
        try:
            return {
                "owned": {r[0] for r in db.execute("select uuid from ownedObject")},
                "cbt": {r[0] for r in db.execute("select vdiUUID from cbtMark")},
                "intents": {r[0] for r in db.execute("select name from snapshotIntent")},
                "backups": {r[0] for r in db.execute("select id from backup")},
            }
        finally:
            db.close()

    def catalog_db(self):
        return sqlite3.connect("file:%s?mode=ro" % os.path.join(self.state, "catalog.sqlite"), uri=True, timeout=30)

    def instance(self):
        p = os.path.join(self.state, "instance-id")
        return open(p).read().strip() if os.path.exists(p) else ""

    def source_disks(self, vm_names):
        """(vm name, userdevice) -> VDI uuid of the named VMs' disks."""
        pool = self.pool.snapshot_of_pool()
        out = {}
        for ref, vm in pool["VM"].items():
            if vm["name_label"] in vm_names and not vm["is_a_snapshot"] and not vm["is_a_template"]:
                for vbd in vm["VBDs"]:
                    b = pool["VBD"][vbd]
                    if b["type"] == "Disk" and b["VDI"] != "OpaqueRef:NULL":
                        out[(vm["name_label"], b["userdevice"])] = pool["VDI"][b["VDI"]]["uuid"]
        return out


def strings_in(obj, out=None):
    """Every string in a JSON document (to find the uuids a plan acts on)."""
    out = set() if out is None else out
    if isinstance(obj, str):
        out.add(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            strings_in(v, out)
    elif isinstance(obj, list):
        for v in obj:
            strings_in(v, out)
    return out


def check_orphans(scn, user_uuids, diff=None):
    """Every pool object carrying this haven's owner mark is in the catalog's inventory or planned
    away by `haven diff`; every disk carrying its CBT mark is in the catalog's CBT marks or planned;
    every unmarked snapshot named like haven's (not one of the user's look-alikes) is planned away.
    Returns a list of problems (empty when none)."""
    problems = []
    instance = scn.instance()
    pool = scn.pool.snapshot_of_pool()
    cat = scn.catalog()
    d = diff or scn.haven(["diff", "-f", scn.config, "--output", "json"])
    if d.rc not in (0, 1):
        return ["haven diff failed: " + d.brief()]
    planned = strings_in(json.loads(d.out).get("actions", []))
    # A snapshot's disks carry the marks their source had; they are covered by the snapshot VM
    # they belong to (a restore point, a backup snapshot) when that VM is haven's.
    vm_uuid = {ref: vm["uuid"] for ref, vm in pool["VM"].items()}
    attached_to = {}
    for vbd in pool["VBD"].values():
        if vbd["VDI"] != "OpaqueRef:NULL":
            attached_to.setdefault(vbd["VDI"], set()).add(vm_uuid.get(vbd["VM"], ""))
    covered = cat["owned"] | planned
    for cls in ("VM", "VDI"):
        for ref, r in pool[cls].items():
            uuid = r["uuid"]
            if uuid in user_uuids:
                continue
            oc = r.get("other_config", {})
            owner = oc.get("haven.owner")
            if owner and owner == instance and uuid not in covered and not (attached_to.get(ref, set()) & covered):
                problems.append("%s %s (%s, role %s) carries haven's mark but is neither in the inventory nor planned"
                                % (cls, uuid, r["name_label"], oc.get("haven.role")))
            if owner and instance and owner != instance:
                problems.append("%s %s (%s) carries another owner mark %s" % (cls, uuid, r["name_label"], owner))
            # Snapshots copy their disk's other_config: only a live disk's CBT mark counts.
            if (cls == "VDI" and oc.get("haven.cbt") == instance and not r["is_a_snapshot"] and r["type"] != "cbt_metadata"
                    and uuid not in cat["cbt"] and uuid not in planned):
                problems.append("VDI %s (%s) carries haven's CBT mark but is not in the catalog's CBT marks" % (uuid, r["name_label"]))
            if (cls == "VM" and r["is_a_snapshot"] and r["name_label"].startswith("haven ") and not owner
                    and uuid not in planned):
                problems.append("unmarked snapshot %s (%s) named like haven's is not planned away" % (uuid, r["name_label"]))
    return problems


def user_records(pool_snapshot, user_uuids):
    """The full records of the user's objects, by uuid, for before/after comparison."""
    out = {}
    for cls in ("VM", "VDI"):
        for ref, r in pool_snapshot[cls].items():
            if r["uuid"] in user_uuids:
                out[r["uuid"]] = r
    return out


class Results:
    def __init__(self):
        self.sections = {}
        self.failures = []

    def fail(self, section, what, detail=""):
        self.failures.append({"section": section, "what": what, "detail": detail[-4000:]})
        print("  FAIL [%s] %s%s" % (section, what, ("\n    " + detail.strip().replace("\n", "\n    ")[-1500:]) if detail else ""),
              flush=True)
