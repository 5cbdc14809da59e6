/// The nbdkit Python plugin that serves a simulated host's disks the way xapi-nbd does: the
/// export name is `/<vdi-uuid>?session_id=<ref>`, checked against the simulator (which also
/// records the connection as a read-only VBD on dom0, as xapi-nbd does); reads must be
/// 512-byte aligned; nothing can be written.
enum NBDPlugin {
    static let source = #"""
import errno
import http.client
import json
import os
import ssl

import nbdkit

API_VERSION = 2
settings = {}


def config(key, value):
    settings[key] = value


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def control(payload):
    host, port = settings["control_host"], int(settings["control_port"])
    body = json.dumps(payload)
    headers = {"Content-Type": "application/json", "X-Haven-Sim-Token": settings["token"]}
    if settings.get("scheme", "https") == "https":
        ctx = ssl.create_default_context(cafile=settings["cafile"])
        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/haven-sim/control", body, headers)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def open(readonly):
    reply = control({"command": "nbd-open", "export": nbdkit.export_name(), "host": settings["control_host"]})
    if "error" in reply:
        nbdkit.set_error(errno.EACCES)
        raise Exception(reply["error"])
    fd = None
    if reply.get("path"):
        try:
            fd = os.open(reply["path"], os.O_RDONLY)
        except OSError:
            fd = None
    return {"fd": fd, "size": reply["size"], "vbd": reply["vbd"]}


def get_size(h):
    return h["size"]


def can_write(h):
    return False


def can_multi_conn(h):
    return False


def can_flush(h):
    return False


def can_trim(h):
    return False


def pread(h, buf, offset, flags):
    if offset % 512 or len(buf) % 512:
        nbdkit.set_error(errno.EINVAL)
        raise Exception("unaligned read")
    n = len(buf)
    data = os.pread(h["fd"], n, offset) if h["fd"] is not None else b""
    buf[:len(data)] = data
    if len(data) < n:
        buf[len(data):] = bytes(n - len(data))


def close(h):
    if h["fd"] is not None:
        os.close(h["fd"])
    try:
        control({"command": "nbd-close", "vbd": h["vbd"]})
    except Exception:
        pass
"""#
}
