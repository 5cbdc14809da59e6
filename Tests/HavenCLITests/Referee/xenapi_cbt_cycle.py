"""Referee: the official XenAPI Python SDK drives `haven sim` through a whole CBT cycle.

Usage: xenapi_cbt_cycle.py STATE_DIR HAVEN_BINARY WORKDIR
Prints one line per step; exits non-zero at the first step that does not hold.
"""
import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import urllib.parse

import XenAPI

state, haven, work = sys.argv[1], sys.argv[2], sys.argv[3]
ep = json.load(open(os.path.join(state, "endpoints.json")))[0]


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        sys.exit(1)


# 1. Login: a non-master answers HOST_IS_SLAVE with the master's address.
slave = XenAPI.Session(ep["hosts"][1]["url"], ignore_ssl=True)
try:
    slave.xenapi.login_with_password(ep["username"], ep["password"], "2.21", "referee")
    check(False, "login on a slave must fail")
except XenAPI.Failure as f:
    check(f.details == ["HOST_IS_SLAVE", ep["hosts"][0]["address"]], "HOST_IS_SLAVE names the master: %s" % f.details)

s = XenAPI.Session(ep["masterURL"], ignore_ssl=True)
s.xenapi.login_with_password(ep["username"], ep["password"], "2.21", "referee")
x = s.xenapi
token = getattr(x.event, "from")(["vm", "vdi", "vbd"], "", 0.0)["token"]

vms = x.VM.get_all_records()
web = [r for r, v in vms.items() if v["name_label"] == "web" and not v["is_a_snapshot"] and not v["is_a_template"]][0]


def disk0(vm):
    for vbd in x.VM.get_VBDs(vm):
        if x.VBD.get_userdevice(vbd) == "0" and x.VBD.get_type(vbd) == "Disk":
            return x.VBD.get_VDI(vbd)


vdi = disk0(web)
size = int(x.VDI.get_virtual_size(vdi))  # ints travel as strings in xapi's XML-RPC
check(size == 8 << 20, "virtual_size is 8 MiB (as a string on the wire: %r)" % x.VDI.get_virtual_size(vdi))

# 2. enable_cbt, snapshot
x.VDI.enable_cbt(vdi)
check(x.VDI.get_cbt_enabled(vdi) is True, "enable_cbt")
snap1 = x.VM.snapshot(web, "referee-1", [])
check(x.VM.get_is_a_snapshot(snap1) and x.VM.get_is_a_template(snap1), "snapshot is a snapshot and a template")
s1 = disk0(snap1)
check(x.VDI.get_cbt_enabled(s1) is True, "snapshot VDI inherits cbt_enabled")

# 3. guest writes through the simulator
out = subprocess.run([haven, "sim", "write", "--state", state, "--vm", "web", "--percent", "7", "--seed", "11",
                      "--output", "json"], check=True, capture_output=True, text=True).stdout
written = json.loads(out)["blocks"]
check(len(written) > 0, "guest wrote %d blocks" % len(written))

# 4. second snapshot, list_changed_blocks
snap2 = x.VM.snapshot(web, "referee-2", [])
s2 = disk0(snap2)
bitmap = base64.b64decode(x.VDI.list_changed_blocks(s1, s2))
changed = [i for i in range(len(bitmap) * 8) if bitmap[i // 8] & (0x80 >> (i % 8))]
check(changed == written, "list_changed_blocks == blocks written (%d)" % len(changed))
check(len(bitmap) == (size // 65536 + 7) // 8, "bitmap covers the disk (%d bytes)" % len(bitmap))

# 5. get_nbd_info, read the export over TLS with the returned certificate
info = x.VDI.get_nbd_info(s2)
check(len(info) >= 1 and int(info[0]["port"]) == 10809, "get_nbd_info gives an NBD server on 10809")
certdir = os.path.join(work, "nbd-ca")
os.makedirs(certdir, exist_ok=True)
open(os.path.join(certdir, "ca-cert.pem"), "w").write(info[0]["cert"])
uri = "nbds://%s:%s/%s?tls-certificates=%s" % (info[0]["address"], info[0]["port"],
                                               urllib.parse.quote(info[0]["exportname"], safe=""), certdir)
nbdinfo = subprocess.run(["nbdinfo", uri], capture_output=True, text=True)
check(nbdinfo.returncode == 0 and "is_read_only: true" in nbdinfo.stdout, "nbdinfo over TLS: read-only export")
image = os.path.join(work, "snap2.raw")
copy = subprocess.run(["nbdcopy", "--no-extents", uri, image], capture_output=True, text=True)
check(copy.returncode == 0, "nbdcopy over TLS " + copy.stderr.strip())
raw = subprocess.run(["curl", "-sk", "%s/export_raw_vdi?session_id=%s&vdi=%s&format=raw" % (ep["masterURL"], s._session, s2)],
                     capture_output=True)
check(hashlib.sha256(open(image, "rb").read()).hexdigest() == hashlib.sha256(raw.stdout).hexdigest(),
      "NBD bytes == /export_raw_vdi bytes")

# 6. destroy the old snapshot VM, data_destroy its VDI
try:
    x.VDI.data_destroy(s1)
    check(False, "data_destroy with a VBD must fail")
except XenAPI.Failure as f:
    check(f.details == ["VDI_IN_USE", s1, "data_destroy"], "data_destroy refused while a VBD exists: %s" % f.details)
x.VM.destroy(snap1)
x.VDI.data_destroy(s1)
check(x.VDI.get_type(s1) == "cbt_metadata", "data_destroy leaves cbt_metadata")

# 7. event.from saw it all
seen = getattr(x.event, "from")(["vm", "vdi", "vbd"], token, 1.0)
ops = {(e["class"], e["operation"], e["ref"]) for e in seen["events"]}
check(("vm", "add", snap2) in ops, "event: snapshot VM added")
check(("vm", "del", snap1) in ops or ("vm", "add", snap1) not in ops, "event: destroyed snapshot VM not reported as present")
check(("vdi", "mod", s1) in ops or ("vdi", "add", s1) in ops, "event: data_destroy shows on the VDI")
check(any(c == "vm" and o == "mod" and r == web for c, o, r in ops), "event: source VM modified")
x.session.logout()
print("referee passed")
