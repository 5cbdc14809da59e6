"""Secrets scan: demo-like flows with known secret values — the pool password (from the
environment, and from a password file), the repository key (an encrypted repository), and a
token in haven's own environment that hooks must not inherit — then every output (stdout and
stderr of every command, debug logs, JSON of diff/status/history/backups, the saved plan), the
state directory (catalog as raw bytes and as an `sqlite3 .dump`, instance id, locks, scratch),
the repository's every file and what the hooks saw are searched for each secret in every form
it could leak in (plain, hex, base64, `user:password` base64, URL-encoded). Any hit fails.
"""

import base64
import os
import secrets as pysecrets
import shutil
import subprocess
import time
import urllib.parse

from common import Scenario, run_haven

VMS = """      - name: web
        power: Running
        networks: [net0]
        disks: [{name: web-root, size: 2Mi, fill: {seed: 31}}]
      - name: app
        power: Running
        disks: [{name: app-root, size: 1Mi, fill: {seed: 32}}]"""


def forms(secret):
    """The ways a secret could show up in a file or a log."""
    raw = secret if isinstance(secret, bytes) else secret.encode()
    out = {raw, base64.b64encode(raw), urllib.parse.quote(raw).encode()}
    if not isinstance(secret, bytes):
        out.add(base64.b64encode(b"root:" + raw))
    return {f for f in out if len(f) >= 8}


DAEMON_PATHS = ["/healthz", "/readyz", "/metrics", "/api/v1/status", "/api/v1/daemon", "/"]


def daemon_outputs(scn, env, log_format, outputs, res):
    """Runs `haven daemon` until it has reconciled (readyz) and reads every endpoint, then stops
    it with SIGTERM; its standard output and error (the log) and the endpoints' bodies join
    `outputs`."""
    import json
    import signal
    import urllib.request

    e = dict(env)
    e["HAVEN_LOG_LEVEL"] = "trace"
    p = scn.start_haven(["daemon", "-f", scn.config, "--listen", "%s.200:0" % scn.prefix, "--log-format", log_format,
                         "--shutdown-grace", "5s"], env=e)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url, bodies = None, []
    try:
        line = p.stdout.readline().decode(errors="replace")
        if "listening on " in line:
            url = line.strip().split("listening on ", 1)[1]
        else:
            res.fail("secrets", "haven daemon (%s log) did not say where it listens: %r" % (log_format, line))
            return
        ready = False
        for _ in range(240):
            try:
                with opener.open(url + "/readyz", timeout=10) as r:
                    ready = r.status == 200
            except Exception:
                ready = False
            if ready:
                break
            time.sleep(0.5)
        if not ready:
            res.fail("secrets", "haven daemon (%s log) was not ready within 120 s" % log_format)
        # Let the first reconcile (backups due) finish, then read every endpoint.
        for _ in range(240):
            try:
                with opener.open(url + "/api/v1/daemon", timeout=10) as r:
                    info = json.loads(r.read())
                if info.get("lastReconcile") and info.get("queue", {}).get("depth", 0) == 0 and not info.get("running"):
                    break
            except Exception:
                pass
            time.sleep(0.5)
        for path in DAEMON_PATHS:
            try:
                with opener.open(url + path, timeout=30) as r:
                    bodies.append(("daemon %s (%s log)" % (path, log_format), r.read().decode(errors="replace")))
            except urllib.error.HTTPError as err:
                bodies.append(("daemon %s (%s log)" % (path, log_format), err.read().decode(errors="replace")))
            except Exception as err:
                res.fail("secrets", "daemon endpoint %s did not answer: %s" % (path, err))
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
        outputs.append(("daemon (%s log)" % log_format, line + out.decode(errors="replace") + err.decode(errors="replace")))
        outputs.extend(bodies)
        if p.returncode != 0:
            res.fail("secrets", "haven daemon (%s log) exited %s after SIGTERM" % (log_format, p.returncode),
                     err.decode(errors="replace")[-2000:])


def run(res, root):
    start = time.monotonic()
    password = "pw-" + pysecrets.token_hex(12)
    token = "tok-" + pysecrets.token_hex(12)
    key_hex = pysecrets.token_hex(32)
    work = os.path.join(root, "secrets-files")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    key_file = os.path.join(work, "repo.key")
    with open(key_file, "w") as f:
        f.write(key_hex + "\n")
    os.chmod(key_file, 0o600)
    hook_out = os.path.join(work, "hook-env.txt")
    hook = os.path.join(work, "hook.sh")
    with open(hook, "w") as f:
        f.write("#!/bin/sh\nenv >> %s\necho \"hook ran for $HAVEN_VM\"\n" % hook_out)
    os.chmod(hook, 0o700)
    docs = [
        "apiVersion: haven/v1\nkind: Repository\nmetadata: {name: local}\nspec:\n  path: {REPO}\n  encryption: {keyFile: %s}\n" % key_file,
        ("apiVersion: haven/v1\nkind: BackupPolicy\nmetadata: {name: daily}\nspec:\n  pool: lab\n  vms: {names: [web]}\n"
         "  schedule: {every: 1h}\n  repository: local\n  retention: {keepLast: 1}\n"
         "  hooks:\n    preSnapshot: {command: [%s], timeout: 30s}\n    postSnapshot: {command: [%s], timeout: 30s}\n") % (hook, hook),
        ("apiVersion: haven/v1\nkind: ReplicationPolicy\nmetadata: {name: dr}\nspec:\n  source: lab\n  vms: {names: [app]}\n"
         "  target: {pool: lab, sr: Replica storage}\n  schedule: {every: 1h}\n  keep: 1\n"),
    ]
    scn = Scenario(root, "secrets", VMS, docs, password)
    outputs = []
    checked_files = 0
    try:
        env = {"RELIABILITY_SECRET_TOKEN": token, "HAVEN_LOG_LEVEL": "trace"}

        def haven(args, ok=(0,), extra=None):
            e = dict(env)
            e.update(extra or {})
            r = scn.haven(args, env=e)
            outputs.append((" ".join(args), r.out + r.err))
            if r.rc not in ok:
                res.fail("secrets", "flow step failed: haven " + " ".join(args), r.brief())
            return r

        init = run_haven(["repo", "init", scn.repo, "--encrypt", "--key-file", key_file], env={"HAVEN_STATE": scn.state})
        outputs.append(("repo init", init.out + init.err))
        plan = os.path.join(work, "plan.json")
        haven(["validate", "-f", scn.config])
        haven(["diff", "-f", scn.config], ok=(1,))
        haven(["diff", "-f", scn.config, "--output", "json"], ok=(1,))
        haven(["diff", "-f", scn.config, "--out", plan], ok=(1,))
        haven(["plan", "show", plan])
        haven(["plan", "show", plan, "--output", "json"])
        haven(["apply", "-f", scn.config, "--auto-approve", plan])
        scn.now += 3700
        haven(["sim", "write", "--state", scn.sim_state, "--vm", "web", "--percent", "5"])
        haven(["backup", "now", "-f", scn.config, "daily"])
        haven(["apply", "-f", scn.config, "--auto-approve"])
        for fmt in ([], ["--output", "json"]):
            haven(["status", "-f", scn.config] + fmt)
            haven(["history", "-f", scn.config] + fmt)
            haven(["backups", "list", "-f", scn.config] + fmt)
            haven(["history", "show", "1", "-f", scn.config] + fmt)
        vid = [ln.split()[0] for ln in haven(["backups", "list", "-f", scn.config]).out.splitlines()[1:] if ln.strip()][-1]
        haven(["backups", "show", vid, "-f", scn.config, "--output", "json"])
        haven(["restore", "-f", scn.config, "--backup", vid, "--disk", "0", "--to-file", os.path.join(work, "restored.raw")])
        haven(["restore", "-f", scn.config, "--backup", vid, "--to-pool", "lab", "--sr", "Local storage", "--name", "web-restored"])
        haven(["repo", "verify", "-f", scn.config])
        haven(["catalog", "rebuild", "-f", scn.config])
        # Error paths: a refused login, a failing call, an unknown key file.
        haven(["diff", "-f", scn.config], ok=(2,), extra={"RELIABILITY_POOL_PASSWORD": password + "-wrong"})
        scn.fault("error:VM.snapshot:INTERNAL_ERROR")
        scn.now += 3700
        haven(["apply", "-f", scn.config, "--auto-approve"], ok=(2,))
        scn.clear_faults()
        # The password from a file instead of the environment.
        pw_file = os.path.join(work, "pool-password")
        with open(pw_file, "w") as f:
            f.write(password + "\n")
        os.chmod(pw_file, 0o600)
        cfg = open(os.path.join(scn.config, "haven.yaml")).read().replace("passwordEnv: RELIABILITY_POOL_PASSWORD",
                                                                          "passwordFile: %s" % pw_file)
        cfg2 = os.path.join(work, "config-file-password")
        os.makedirs(cfg2, exist_ok=True)
        open(os.path.join(cfg2, "haven.yaml"), "w").write(cfg)
        haven(["diff", "-f", cfg2, "--output", "json"], ok=(0, 1), extra={"RELIABILITY_POOL_PASSWORD": None})
        haven(["status", "-f", cfg2, "--output", "json"], ok=(0, 3), extra={"RELIABILITY_POOL_PASSWORD": None})

        # The daemon: its log (trace, text and JSON) and every endpoint it serves, while it
        # reconciles (a due backup runs the hooks again) and after.
        scn.now += 3700
        for fmt in ("text", "json"):
            daemon_outputs(scn, env, fmt, outputs, res)

        # Where to look: every output, every file of the state directory and the repository, the
        # plan, a text dump of the catalog, and the hook's environment.
        blobs = [("output of haven " + name, text.encode()) for name, text in outputs]
        for base in (scn.state, scn.repo, plan):
            paths = [base] if os.path.isfile(base) else [os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs]
            for p in paths:
                try:
                    blobs.append((p, open(p, "rb").read()))
                except OSError:
                    pass
        dump = subprocess.run(["sqlite3", os.path.join(scn.state, "catalog.sqlite"), ".dump"], capture_output=True)
        blobs.append(("sqlite3 .dump of the catalog", dump.stdout))
        hook_env = open(hook_out, "rb").read() if os.path.exists(hook_out) else b""
        if not hook_env:
            res.fail("secrets", "the hook did not run (nothing to check its environment with)")
        blobs.append(("the hooks' environment", hook_env))
        checked_files = len(blobs)
        # The scan must be able to find a secret: the simulator's endpoints file holds the password.
        control = open(os.path.join(scn.sim_state, "endpoints.json"), "rb").read()
        if password.encode() not in control:
            res.fail("secrets", "positive control: the password is not found in the simulator's endpoints.json; the scan is blind")
        secrets = [("pool password", password), ("token in haven's environment", token),
                   ("repository key (hex)", key_hex), ("repository key (bytes)", bytes.fromhex(key_hex)),
                   ("repository key (upper-case hex)", key_hex.upper())]
        hits = []
        for what, secret in secrets:
            for form in forms(secret):
                for where, blob in blobs:
                    if form in blob:
                        hits.append("%s found in %s" % (what, where))
        for h in sorted(set(hits)):
            res.fail("secrets", h)
        return {"secrets": len(secrets), "placesSearched": checked_files, "commands": len(outputs), "hits": len(set(hits)),
                "seconds": round(time.monotonic() - start, 1)}
    finally:
        scn.stop()
