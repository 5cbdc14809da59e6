#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (Fuzz/Corpus/<target>/): small real
inputs — the YAML fixtures and examples, XML-RPC and JSON-RPC requests and replies captured from
`haven sim`, CBT bitmaps, VHD and XVA files, manifests and pack indexes of a real repository.
Run once after changing a format (needs the built haven binary); the output is committed.
"""

import base64
import glob
import hashlib
import io
import json
import os
import shutil
import ssl
import struct
import sys
import tarfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, Scenario, run_haven  # noqa: E402

CORPUS = os.path.join(ROOT, "Fuzz", "Corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def yaml_seeds():
    files = sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.yaml"), recursive=True))
    files += sorted(glob.glob(os.path.join(ROOT, "Tests", "HavenSpecTests", "Fixtures", "**", "*.yaml"), recursive=True))
    for i, f in enumerate(files):
        data = open(f, "rb").read()
        if len(data) <= 8192:
            put("FuzzSpecYAML", "%03d-%s" % (i, os.path.basename(f)), data)


def rpc_seeds(root):
    """Requests and replies of a real exchange with the simulator, both protocols."""
    vms = "      - name: web\n        power: Running\n        disks: [{name: web-root, size: 1Mi, fill: {seed: 1}}]"
    scn = Scenario(root, "seeds", vms, [], "seed-pw")
    ctx = ssl._create_unverified_context()
    url = "https://%s.1:4443" % scn.prefix
    try:
        def xml(method, params):
            body = ('<?xml version="1.0"?><methodCall><methodName>%s</methodName><params>%s</params></methodCall>'
                    % (method, "".join("<param><value>%s</value></param>" % p for p in params))).encode()
            reply = urllib.request.urlopen(urllib.request.Request(url + "/", body, {"Content-Type": "text/xml"}), context=ctx).read()
            return body, reply

        def jrpc(method, params, version2=True):
            req = {"method": method, "params": params, "id": 1}
            if version2:
                req["jsonrpc"] = "2.0"
            body = json.dumps(req).encode()
            reply = urllib.request.urlopen(urllib.request.Request(url + "/jsonrpc", body, {"Content-Type": "application/json"}),
                                           context=ctx).read()
            return body, reply

        body, reply = xml("session.login_with_password", ["root", "seed-pw", "1.1", "seeds"])
        put("FuzzXMLRPC", "login-request.xml", body.replace(b"seed-pw", b"password"))
        put("FuzzXMLRPC", "login-reply.xml", reply)
        session = reply.split(b"OpaqueRef:")[1].split(b"<")[0].decode()
        s = "OpaqueRef:" + session
        for m in ("VM.get_all_records", "VDI.get_all_records", "host.get_all_records", "pool.get_all_records", "network.get_all_records"):
            body, reply = xml(m, [s])
            put("FuzzXMLRPC", m + "-request.xml", body)
            put("FuzzXMLRPC", m + "-reply.xml", reply[:16384])
        _, reply = xml("VM.get_record", [s, "OpaqueRef:nonexistent"])
        put("FuzzXMLRPC", "handle-invalid-reply.xml", reply)
        put("FuzzXMLRPC", "nested-array.xml", "<?xml version='1.0'?><methodResponse><params><param><value>"
            + "<array><data><value>" * 40 + "x" + "</value></data></array>" * 40 + "</value></param></params></methodResponse>")
        put("FuzzXMLRPC", "types.xml", "<methodResponse><params><param><value><struct>"
            "<member><name>Status</name><value>Success</value></member><member><name>Value</name><value><struct>"
            "<member><name>i</name><value><int>-42</int></value></member><member><name>b</name><value><boolean>1</boolean></value></member>"
            "<member><name>d</name><value><double>1.5e3</double></value></member>"
            "<member><name>t</name><value><dateTime.iso8601>20240115T10:30:00Z</dateTime.iso8601></value></member>"
            "<member><name>x</name><value><base64>aGF2ZW4=</base64></value></member><member><name>n</name><value><nil/></value></member>"
            "<member><name>e</name><value>&lt;&amp;&gt;&#65;&#x42;</value></member>"
            "</struct></value></member></struct></value></param></params></methodResponse>")

        body, reply = jrpc("session.login_with_password", ["root", "seed-pw", "1.1", "seeds"])
        put("FuzzJSONRPC", "login-request.json", body.replace(b"seed-pw", b"password"))
        put("FuzzJSONRPC", "login-reply-v2.json", reply)
        s = json.loads(reply)["result"]
        for m in ("VM.get_all_records", "VDI.get_all_records", "host.get_all_records", "SR.get_all_records"):
            body, reply = jrpc(m, [s])
            put("FuzzJSONRPC", m + "-request.json", body)
            put("FuzzJSONRPC", m + "-reply.json", reply[:16384])
        _, reply = jrpc("VM.get_record", [s, "OpaqueRef:nonexistent"], version2=False)
        put("FuzzJSONRPC", "handle-invalid-reply-v1.json", reply)
        _, reply = jrpc("VM.get_record", [s, "OpaqueRef:nonexistent"])
        put("FuzzJSONRPC", "handle-invalid-reply-v2.json", reply)
        put("FuzzJSONRPC", "numbers.json", '{"jsonrpc":"2.0","result":[0,-1,9223372036854775807,-9223372036854775808,1.5e300,'
            '-0.0,"\\u00e9\\ud83d\\ude00\\n",true,false,null,{"a":{}},[]],"id":7}')

        # CBT bitmaps as the simulator gives them, after guest writes.
        scn.sim_control(["write", "--vm", "web", "--percent", "20", "--seed", "3"])
        for i, size in enumerate((1 << 20, 5 << 20, (1 << 20) + 1, 0)):
            bits = bytearray((size + 65535) // 65536 // 8 + 1)
            for b in range(0, (size + 65535) // 65536, 3):
                bits[b // 8] |= 0x80 >> (b % 8)
            put("FuzzCBTBitmap", "bitmap-%d" % i, b"\x00" + struct.pack("<q", size) + base64.b64encode(bytes(bits)))
        put("FuzzCBTBitmap", "raw-bits", b"\x01" + struct.pack("<q", 1 << 30) + bytes(range(256)))
        put("FuzzCBTBitmap", "padded", b"\x00" + struct.pack("<q", 64 << 20) + b"  " + base64.b64encode(b"\xff" * 128) + b"\n")
    finally:
        scn.stop()


def vhd_checksum(b):
    return (~sum(b) & 0xffffffff)


def make_vhd(size, block_size, blocks):
    """A dynamic VHD: footer copy, header, BAT, then the blocks given as {index: bytes}."""
    footer = bytearray(512)
    footer[0:8] = b"conectix"
    struct.pack_into(">I", footer, 8, 2)
    struct.pack_into(">I", footer, 12, 0x00010000)
    struct.pack_into(">Q", footer, 16, 512)
    footer[28:32] = b"hvn "
    struct.pack_into(">Q", footer, 40, size)
    struct.pack_into(">Q", footer, 48, size)
    struct.pack_into(">I", footer, 60, 3)
    struct.pack_into(">I", footer, 64, vhd_checksum(footer))
    entries = (size + block_size - 1) // block_size
    bat_size = (entries * 4 + 511) // 512 * 512
    header = bytearray(1024)
    header[0:8] = b"cxsparse"
    struct.pack_into(">Q", header, 8, 0xffffffffffffffff)
    struct.pack_into(">Q", header, 16, 1536)
    struct.pack_into(">I", header, 24, 0x00010000)
    struct.pack_into(">I", header, 28, entries)
    struct.pack_into(">I", header, 32, block_size)
    struct.pack_into(">I", header, 36, vhd_checksum(header))
    bat = bytearray(b"\xff" * bat_size)
    data = bytearray()
    offset = 1536 + bat_size
    bitmap_bytes = ((block_size // 512) // 8 + 511) // 512 * 512
    for index, content in sorted(blocks.items()):
        struct.pack_into(">I", bat, index * 4, offset // 512)
        data += b"\xff" * bitmap_bytes + content.ljust(block_size, b"\0")
        offset += bitmap_bytes + block_size
    return bytes(footer + header + bat + data + footer)


def disk_seeds():
    put("FuzzDiskFormats", "vhd-empty", b"\x00\x10" + make_vhd(64 << 10, 4096, {}))
    put("FuzzDiskFormats", "vhd-two-blocks", b"\x00\x40" + make_vhd(64 << 10, 4096, {0: b"haven" * 100, 7: bytes(range(256)) * 4}))
    put("FuzzDiskFormats", "vhd-odd-size", b"\x00\x03" + make_vhd(10000, 1024, {9: b"\x5a" * 1024}))

    def xva(chunks):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as t:
            def add(name, data):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            add("ova.xml", b"<value><struct><member><name>objects</name><value><array><data><value><struct>"
                b"<member><name>class</name><value>VDI</value></member><member><name>id</name><value>Ref:3</value></member>"
                b"</struct></value></data></array></value></member></struct></value>")
            for i, data in chunks:
                add("Ref:3/%08d" % i, data)
                add("Ref:3/%08d.checksum" % i, hashlib.sha1(data).hexdigest().encode())
        return out.getvalue()

    put("FuzzDiskFormats", "xva-two-chunks", b"\x01\x30" + xva([(0, b"boot" * 64), (5, b"\x00" * 512 + b"end")]))
    put("FuzzDiskFormats", "xva-metadata-only", b"\x01\x01" + xva([]))


def repository_seeds(root):
    """Manifests and pack indexes of a real repository holding a small image."""
    work = os.path.join(root, "repo-seeds")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    image = os.path.join(work, "disk.img")
    with open(image, "wb") as f:
        for i in range(40):
            f.write((b"block %d " % i) * (65536 // 16) if i % 3 else b"\0" * 65536)
    repo = os.path.join(work, "repo")
    assert run_haven(["repo", "init", repo, "--chunk-size", "64Ki"]).rc == 0
    r = run_haven(["repo", "import-image", "--repo", repo, "--file", image])
    assert r.rc == 0, r.text
    manifest = open(glob.glob(os.path.join(repo, "manifests", "*.json"))[0], "rb").read()
    vid = json.loads(manifest)["id"]
    # The target stores each input as version 20260101T000000Z-fuzz.
    put("FuzzManifest", "manifest", b"\x00" + manifest.replace(vid.encode(), b"20260101T000000Z-fuzz"))
    m = json.loads(manifest)
    m["id"] = "20260101T000000Z-fuzz"
    page = b"".join(bytes.fromhex("%064x" % (i * 7919 + 1)) for i in range(3))
    m["disks"] = [dict(m["disks"][0], size=3 * 65536, index={"root": "@ROOT@", "depth": 0, "entries": 3}, zeroChunks=0)]
    put("FuzzManifest", "index-page", b"\x01" + struct.pack("<H", len(page)) + page + json.dumps(m, sort_keys=True).encode())
    idx = open(glob.glob(os.path.join(repo, "index", "*.idx"))[0], "rb").read()
    put("FuzzManifest", "pack-index", b"\x02" + idx[: 44 * 8])


if __name__ == "__main__":
    root = os.path.join(ROOT, ".reliability", "seeds")
    os.makedirs(root, exist_ok=True)
    yaml_seeds()
    disk_seeds()
    rpc_seeds(root)
    repository_seeds(root)
    for t in sorted(os.listdir(CORPUS)):
        print("%-18s %3d seeds" % (t, len(os.listdir(os.path.join(CORPUS, t)))))
