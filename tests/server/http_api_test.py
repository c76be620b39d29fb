#!/usr/bin/env python3
"""HTTP-level tests of bucketfs-server: every Hub bucket route and every Xet CAS route.

Starts the real server binary (env BUCKETFS_SERVER_BINARY) on 127.0.0.1 port 0 with its own
temporary data folder and tokens file, uploads the xorbs and shards captured from the npm client
(env BUCKETFS_TEST_DATA/npm), and checks answers, refusals and side effects over HTTP.

A second server with `--token-lifetime 2` checks CAS-token and signed-URL expiry.

Prints exactly one summary line `N passed, N failed` and exits non-zero on any failure.
Python 3 standard library only.
"""

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import shutil
import unittest
import urllib.parse

SERVER_BINARY = os.environ.get("BUCKETFS_SERVER_BINARY", "")
TEST_DATA = os.environ.get("BUCKETFS_TEST_DATA", "")
NPM_DATA = os.path.join(TEST_DATA, "npm")

# Hub tokens (the tokens file format: `<token> <read|write> <ns>[,<ns>]`).
ALICE_W = "hf_alice_write_token_0001"
ALICE_R = "hf_alice_read_token_0001"
BOB_W = "hf_bob_write_token_0001"
BOB_R = "hf_bob_read_token_0001"
CAROL_W = "hf_carol_write_token_0001"  # namespaces carol,cteam: `me` is carol
UNKNOWN = "hf_not_in_the_tokens_file"
TOKENS_TEXT = (
    "# test tokens\n"
    f"{ALICE_W} write alice\n"
    f"{ALICE_R} read alice\n"
    f"{BOB_W} write bob\n"
    f"{BOB_R} read bob\n"
    f"{CAROL_W} write carol,cteam\n"
)

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# The JS client's Link parser (parseLinkHeader).
JS_LINK = re.compile(r'<(https?://[^>]+)>;\s+rel="([^"]+)"')
ZERO_HASH = "0" * 64
UNKNOWN_HASH = "ab" * 32

MANIFEST = None
CASES = {}
MAIN = None  # the main Server
CHECKED_4XX = [0]  # how many 4xx answers had their JSON `error` body checked


# ---- inputs ---------------------------------------------------------------------------------------

def splitmix64(seed, size):
    mask = (1 << 64) - 1
    state = seed & mask
    out = bytearray()
    pack = struct.Struct("<Q").pack
    for _ in range((size + 7) // 8):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        out += pack(z)
    return bytes(out[:size])


def text_like(size):
    words = ["tensor", "layer", "weight", "bias", "grad", "step", "loss", "adam", "epoch", "shard"]
    rnd = splitmix64(7, size)
    out = bytearray()
    r = 0
    while len(out) < size:
        word = words[rnd[r % size] % 10]
        r += 1
        word += "\n" if rnd[r % size] % 4 == 0 else " "
        r += 1
        out += word.encode()
    return bytes(out[:size])


_INPUT_CACHE = {}


def generate(generator):
    kind = generator["kind"]
    size = generator.get("size", 0)
    if kind == "splitmix64":
        return splitmix64(generator["seed"], size)
    if kind == "constant":
        return bytes([generator["byte"]]) * size
    if kind == "text_like":
        return text_like(size)
    if kind == "float32_ramp":
        return b"".join(struct.pack("<f", i / 1024) for i in range(size // 4))
    if kind == "edit":
        base = bytearray(input_of(generator["base"]))
        for edit in generator["edits"]:
            if edit["op"] == "xor":
                for k in range(edit["start"], edit["end"]):
                    base[k] ^= edit["value"]
            elif edit["op"] == "insert":
                base[edit["at"]:edit["at"]] = bytes([edit["value"]]) * edit["count"]
        return bytes(base)
    raise ValueError("unknown generator " + kind)


def file_of(name_or_path):
    for case in MANIFEST["cases"]:
        for f in case["files"]:
            if f["name"] == name_or_path or f["path"] == name_or_path:
                return f
    raise KeyError(name_or_path)


def input_of(name_or_path):
    """The regenerated input bytes of a manifest file, checked against its sha256."""
    f = file_of(name_or_path)
    if f["path"] not in _INPUT_CACHE:
        data = generate(f["input"]["generator"])
        assert hashlib.sha256(data).hexdigest() == f["input"]["sha256"], "generator mismatch for " + f["path"]
        _INPUT_CACHE[f["path"]] = data
    return _INPUT_CACHE[f["path"]]


def read_data(relative):
    with open(os.path.join(NPM_DATA, relative), "rb") as handle:
        return handle.read()


def hash_bytes(text):
    """The 32 raw bytes of a hash in the Xet string form (four little-endian u64 words)."""
    return b"".join(int(text[i:i + 16], 16).to_bytes(8, "little") for i in range(0, 64, 16))


def decode_xorb_chunks(data, count=None):
    """Uncompressed chunks of serialized xorb bytes (scheme 0 only)."""
    chunks = []
    pos = 0
    while pos < len(data) and (count is None or len(chunks) < count):
        header = data[pos:pos + 8]
        if len(header) < 8:
            raise AssertionError("truncated chunk header")
        compressed = int.from_bytes(header[1:4], "little")
        scheme = header[4]
        uncompressed = int.from_bytes(header[5:8], "little")
        if scheme != 0:
            raise AssertionError("test decoder only handles uncompressed chunks")
        body = data[pos + 8:pos + 8 + compressed]
        if len(body) != compressed or compressed != uncompressed:
            raise AssertionError("bad uncompressed chunk")
        chunks.append(body)
        pos += 8 + compressed
    return chunks


# ---- the server -----------------------------------------------------------------------------------

class Server:
    def __init__(self, name, extra_args=()):
        self.root = tempfile.mkdtemp(prefix="bucketfs-apitest-" + name + "-")
        self.data = os.path.join(self.root, "data")
        self.tokens = os.path.join(self.root, "tokens")
        self.ready = os.path.join(self.root, "ready")
        self.log_path = os.path.join(self.root, "server.log")
        self.extra_args = list(extra_args)
        self.process = None
        self.base = None

    def start(self):
        with open(self.tokens, "w") as handle:
            handle.write(TOKENS_TEXT)
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [SERVER_BINARY, "--data", self.data, "--tokens", self.tokens, "--listen", "127.0.0.1:0",
             "--ready-file", self.ready] + self.extra_args,
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_ready("did not become ready")

    def wait_ready(self, failure):
        """Waits until the started process writes its ready file (base URL, host and port from
        it); RuntimeError `failure` with the log when it exits first or 30 s pass."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(self.ready):
                with open(self.ready) as handle:
                    text = handle.read().strip()
                if text:
                    self.base = text
                    parsed = urllib.parse.urlsplit(text)
                    self.host, self.port = parsed.hostname, parsed.port
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError("bucketfs-server " + failure + ": " + self.log_text())

    def log_text(self):
        try:
            with open(self.log_path, "rb") as handle:
                return handle.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def cleanup(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Response:
    def __init__(self, method, target, status, headers, body):
        self.method, self.target = method, target
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        return self.headers.get(name)

    def json(self):
        return json.loads(self.body.decode())

    def __repr__(self):
        return f"<{self.method} {self.target} -> {self.status} {self.body[:300]!r}>"


def request(method, target, body=None, token=None, headers=None, server=None):
    """One HTTP request on a fresh connection. `target` is a path (on `server`) or an absolute URL.

    Every 4xx answer to a non-HEAD request must carry a JSON body with an `error` string."""
    server = server or MAIN
    if target.startswith("http://"):
        parsed = urllib.parse.urlsplit(target)
        host, port = parsed.hostname, parsed.port
        target = parsed.path + ("?" + parsed.query if parsed.query else "")
    else:
        host, port = server.host, server.port
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = "Bearer " + token
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        try:
            connection.request(method, target, body=body, headers=all_headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (and closed) before the whole body was sent: read that answer
        raw = connection.getresponse()
        data = raw.read()
        response = Response(method, target, raw.status, raw.headers, data)
    finally:
        connection.close()
    if 400 <= response.status < 500 and method != "HEAD":
        content_type = response.header("Content-Type") or ""
        assert content_type.startswith("application/json"), f"4xx without JSON Content-Type: {response!r}"
        try:
            parsed = json.loads(data.decode())
        except ValueError:
            raise AssertionError(f"4xx body is not JSON: {response!r}")
        assert isinstance(parsed, dict) and isinstance(parsed.get("error"), str) and parsed["error"], \
            f"4xx body has no `error`: {response!r}"
        CHECKED_4XX[0] += 1
    return response


def q(text):
    return urllib.parse.quote(text, safe="")


def create_bucket(bucket_id, token=ALICE_W, private=False, server=None):
    r = request("POST", "/api/buckets/" + bucket_id, {"private": private}, token=token, server=server)
    assert r.status == 200, r
    return r


def xet_token(bucket_id, token, write=True, server=None):
    r = request("GET", f"/api/buckets/{bucket_id}/xet-{'write' if write else 'read'}-token", token=token,
                server=server)
    assert r.status == 200, r
    return r.json()["accessToken"]


def upload_xorb(xorb_hash, cas_token, server=None, body=None):
    if body is None:
        body = read_data(f"xorbs/{xorb_hash}.xorb")
    return request("POST", f"/v1/xorbs/default/{xorb_hash}", body, token=cas_token, server=server)


def upload_shard(shard_file, cas_token, server=None, body=None):
    if body is None:
        body = read_data(shard_file)
    return request("POST", "/v1/shards", body, token=cas_token, server=server)


def batch(bucket_id, lines, token=ALICE_W, trailing_newline=True, server=None):
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    if trailing_newline:
        text += "\n"
    return request("POST", f"/api/buckets/{bucket_id}/batch", text, token=token,
                   headers={"Content-Type": "application/x-ndjson"}, server=server)


def add_line(path, xet_hash, **extra):
    line = {"type": "addFile", "path": path, "xetHash": xet_hash}
    line.update(extra)
    return line


def upload_case(bucket_id, case_name, token=ALICE_W, add=True, server=None):
    """What the npm client does: xorbs, then shards, then the batch addFile."""
    case = CASES[case_name]
    cas = xet_token(bucket_id, token, server=server)
    for xorb in case["xorbs_uploaded"]:
        r = upload_xorb(xorb["hash"], cas, server=server)
        assert r.status == 200, r
    for shard in case["shards"]:
        r = upload_shard(shard, cas, server=server)
        assert r.status == 200, r
    if add:
        r = batch(bucket_id, [add_line(f["path"], f["xet_hash"]) for f in case["files"]], token=token,
                  trailing_newline=False, server=server)
        assert r.status == 200, r
    return case


def tree(bucket_id, prefix="", query="", token=ALICE_W, server=None):
    path = f"/api/buckets/{bucket_id}/tree" + (("/" + prefix) if prefix else "") + (("?" + query) if query else "")
    return request("GET", path, token=token, server=server)


def paths_info(bucket_id, paths, token=ALICE_W):
    return request("POST", f"/api/buckets/{bucket_id}/paths-info", {"paths": paths}, token=token)


def bucket_info(bucket_id, token=ALICE_W):
    return request("GET", "/api/buckets/" + bucket_id, token=token)


def metrics():
    r = request("GET", "/metrics")
    assert r.status == 200, r
    values = {}
    for line in r.body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def request_count(values, route, status):
    return values.get(f'bucketfs_http_requests_total{{route="{route}",status="{status}"}}', 0)


def reconstruct(recon, first=0, length=None, server=None):
    """Downloads the terms of a v2 reconstruction through its signed URLs (uncompressed chunks only)."""
    out = bytearray()
    for term in recon["terms"]:
        start, end = term["range"]["start"], term["range"]["end"]
        data = None
        for entry in recon["xorbs"][term["hash"]]:
            for rng in entry["ranges"]:
                if rng["chunks"]["start"] <= start and end <= rng["chunks"]["end"]:
                    r = request("GET", entry["url"],
                                headers={"Range": f"bytes={rng['bytes']['start']}-{rng['bytes']['end']}"},
                                server=server)
                    assert r.status == 206, r
                    assert len(r.body) == rng["bytes"]["end"] - rng["bytes"]["start"] + 1
                    chunks = decode_xorb_chunks(r.body)
                    data = b"".join(chunks[start - rng["chunks"]["start"]:end - rng["chunks"]["start"]])
                    break
            if data is not None:
                break
        assert data is not None, f"no fetch entry covers term {term}"
        assert len(data) == term["unpacked_length"]
        out += data
    out = bytes(out[recon["offset_into_first_range"]:])
    if length is not None:
        out = out[:length]
    return out


# ---- module set-up: one server, a public and a private data bucket ---------------------------------

DATA_BUCKET = "alice/data"          # public; most fixture cases
PRIVATE_BUCKET = "alice/private-data"  # private; random_102400
BOB_PUBLIC = "bob/shared"           # public; multi_file
BOB_PRIVATE = "bob/hidden"          # private; one_byte
DATA_CASES = ["empty", "one_byte_seed1", "random_102400_seed1", "random_1000000_seed0", "const59_1000000",
              "dedup_base", "dedup_edited", "multi_file"]


def setUpModule():
    global MANIFEST, MAIN
    if not SERVER_BINARY or not os.access(SERVER_BINARY, os.X_OK):
        raise RuntimeError("set BUCKETFS_SERVER_BINARY to the bucketfs-server binary")
    with open(os.path.join(NPM_DATA, "manifest.json")) as handle:
        MANIFEST = json.load(handle)
    for case in MANIFEST["cases"]:
        CASES[case["name"]] = case
    MAIN = Server("main")
    unittest.addModuleCleanup(MAIN.cleanup)
    MAIN.start()
    create_bucket(DATA_BUCKET)
    create_bucket(PRIVATE_BUCKET, private=True)
    create_bucket(BOB_PUBLIC, token=BOB_W)
    create_bucket(BOB_PRIVATE, token=BOB_W, private=True)
    for name in DATA_CASES:
        upload_case(DATA_BUCKET, name)
    upload_case(PRIVATE_BUCKET, "random_102400_seed1")
    upload_case(BOB_PUBLIC, "multi_file", token=BOB_W)
    upload_case(BOB_PRIVATE, "one_byte_seed1", token=BOB_W)


class ApiTestCase(unittest.TestCase):
    def assertStatus(self, response, status, msg=None):
        self.assertEqual(response.status, status, msg or repr(response))

    def assertNotFound(self, response, code="RepoNotFound"):
        self.assertStatus(response, 404)
        self.assertEqual(response.header("X-Error-Code"), code, repr(response))


# ---- Hub: buckets -----------------------------------------------------------------------------------

class BucketCreateTest(ApiTestCase):
    def test_create_public_returns_url_and_id(self):
        r = request("POST", "/api/buckets/alice/created-public", {}, token=ALICE_W)
        self.assertStatus(r, 200)
        body = r.json()
        self.assertEqual(body["id"], "alice/created-public")
        self.assertEqual(body["url"], MAIN.base + "/buckets/alice/created-public")
        info = bucket_info("alice/created-public", token=None)
        self.assertStatus(info, 200)
        self.assertIs(info.json()["private"], False)

    def test_create_without_body_is_public(self):
        r = request("POST", "/api/buckets/alice/created-nobody", token=ALICE_W)
        self.assertStatus(r, 200)
        self.assertIs(bucket_info("alice/created-nobody").json()["private"], False)

    def test_create_private_with_private_flag_and_visibility(self):
        self.assertStatus(request("POST", "/api/buckets/alice/created-priv1", {"private": True}, token=ALICE_W), 200)
        self.assertStatus(request("POST", "/api/buckets/alice/created-priv2", {"visibility": "private"},
                                  token=ALICE_W), 200)
        self.assertStatus(request("POST", "/api/buckets/alice/created-pub3",
                                  {"visibility": "public", "region": "us", "resourceGroupId": "x"}, token=ALICE_W), 200)
        for name, private in (("created-priv1", True), ("created-priv2", True), ("created-pub3", False)):
            info = bucket_info("alice/" + name)
            self.assertStatus(info, 200)
            self.assertIs(info.json()["private"], private, name)
        # Private ones are invisible to others.
        self.assertNotFound(bucket_info("alice/created-priv1", token=BOB_W))
        self.assertStatus(bucket_info("alice/created-priv2", token=None), 401)

    def test_create_in_me_namespace_uses_first_namespace(self):
        r = request("POST", "/api/buckets/me/mine", {}, token=CAROL_W)
        self.assertStatus(r, 200)
        self.assertEqual(r.json()["id"], "carol/mine")
        self.assertEqual(r.json()["url"], MAIN.base + "/buckets/carol/mine")
        self.assertStatus(bucket_info("carol/mine", token=CAROL_W), 200)
        self.assertNotFound(bucket_info("me/mine", token=CAROL_W))
        # `me` without a token cannot be resolved.
        self.assertStatus(request("POST", "/api/buckets/me/anon", {}), 401)

    def test_create_existing_is_409_with_url(self):
        create_bucket("alice/twice")
        r = request("POST", "/api/buckets/alice/twice", {"private": True}, token=ALICE_W)
        self.assertStatus(r, 409)
        body = r.json()
        self.assertEqual(body["url"], MAIN.base + "/buckets/alice/twice")
        self.assertIn("error", body)
        # The 409 changed nothing: still public.
        self.assertIs(bucket_info("alice/twice").json()["private"], False)
        # Through `me` as well.
        create_bucket("carol/twice", token=CAROL_W)
        r = request("POST", "/api/buckets/me/twice", {}, token=CAROL_W)
        self.assertStatus(r, 409)
        self.assertEqual(r.json()["url"], MAIN.base + "/buckets/carol/twice")

    def test_invalid_names_are_400_and_create_nothing(self):
        for name in ["-lead", "trail-", ".dot", "dot.", "a..b", "a--b", "has%20space", "x" * 97, "semi%3Bcolon",
                     "%C3%A9t%C3%A9"]:
            r = request("POST", "/api/buckets/alice/" + name, {}, token=ALICE_W)
            self.assertStatus(r, 400, name)
        r = request("POST", "/api/buckets/bad..ns/fine", {}, token=ALICE_W)
        self.assertStatus(r, 400)
        listed = [b["id"] for b in request("GET", "/api/buckets/alice", token=ALICE_W).json()]
        for bucket_id in listed:
            self.assertNotIn("..", bucket_id)
            self.assertNotIn("--", bucket_id)
            self.assertNotIn(" ", bucket_id)

    def test_create_refusals(self):
        self.assertStatus(request("POST", "/api/buckets/alice/anon-create", {}), 401)
        self.assertStatus(request("POST", "/api/buckets/alice/unknown-create", {}, token=UNKNOWN), 401)
        self.assertStatus(request("POST", "/api/buckets/alice/read-create", {}, token=ALICE_R), 403)
        self.assertStatus(request("POST", "/api/buckets/alice/bob-create", {}, token=BOB_W), 403)
        for body in ["not json", "[1,2]", '{"private": "yes"}', '{"visibility": "secret"}', '{"visibility": 3}']:
            r = request("POST", "/api/buckets/alice/bad-body", body, token=ALICE_W,
                        headers={"Content-Type": "application/json"})
            self.assertStatus(r, 400, body)
        for name in ["anon-create", "unknown-create", "read-create", "bob-create", "bad-body"]:
            self.assertNotFound(bucket_info("alice/" + name))


class BucketInfoListTest(ApiTestCase):
    def test_info_fields_and_formats(self):
        r = bucket_info(DATA_BUCKET, token=None)
        self.assertStatus(r, 200)
        body = r.json()
        self.assertEqual(body["id"], DATA_BUCKET)
        self.assertIs(body["private"], False)
        self.assertRegex(body["createdAt"], ISO_Z)
        self.assertRegex(body["updatedAt"], ISO_Z)
        self.assertGreaterEqual(body["updatedAt"], body["createdAt"])
        files = [f for name in DATA_CASES for f in CASES[name]["files"]]
        self.assertEqual(body["totalFiles"], len(files))
        self.assertEqual(body["size"], sum(f["size"] for f in files))
        # Unknown query parameters (JS repoExists) are ignored.
        self.assertStatus(request("GET", f"/api/buckets/{DATA_BUCKET}?expand[]=likes"), 200)

    def test_info_of_new_bucket_and_update_moves_updated_at(self):
        create_bucket("alice/info-new")
        before = bucket_info("alice/info-new").json()
        self.assertEqual((before["size"], before["totalFiles"]), (0, 0))
        self.assertEqual(before["createdAt"], before["updatedAt"])
        time.sleep(0.01)
        f = file_of("random_102400_seed1.bin")
        upload_case("alice/info-new", "random_102400_seed1")
        after = bucket_info("alice/info-new").json()
        self.assertEqual((after["size"], after["totalFiles"]), (f["size"], 1))
        self.assertEqual(after["createdAt"], before["createdAt"])
        self.assertGreater(after["updatedAt"], before["updatedAt"])

    def test_info_missing_is_404_repo_not_found(self):
        self.assertNotFound(bucket_info("alice/never-created"))
        self.assertNotFound(bucket_info("alice/never-created", token=None))
        self.assertNotFound(bucket_info("nobody/never-created", token=BOB_W))

    def test_list_namespace_owner_sees_all_others_only_public(self):
        create_bucket("alice/list-pub")
        create_bucket("alice/list-priv", private=True)
        owner = [b["id"] for b in request("GET", "/api/buckets/alice", token=ALICE_W).json()]
        self.assertIn("alice/list-pub", owner)
        self.assertIn("alice/list-priv", owner)
        self.assertIn(PRIVATE_BUCKET, owner)
        reader = [b["id"] for b in request("GET", "/api/buckets/alice", token=ALICE_R).json()]
        self.assertIn("alice/list-priv", reader)
        for token in (BOB_W, None):
            r = request("GET", "/api/buckets/alice", token=token)
            self.assertStatus(r, 200)
            seen = [b["id"] for b in r.json()]
            self.assertIn("alice/list-pub", seen)
            self.assertIn(DATA_BUCKET, seen)
            self.assertNotIn("alice/list-priv", seen)
            self.assertNotIn(PRIVATE_BUCKET, seen)
            self.assertTrue(all(b["private"] is False for b in r.json()))

    def test_list_entries_have_info_fields(self):
        r = request("GET", "/api/buckets/alice", token=ALICE_W)
        self.assertStatus(r, 200)
        self.assertIsInstance(r.json(), list)
        for b in r.json():
            self.assertTrue(b["id"].startswith("alice/"))
            for key in ("private", "createdAt", "updatedAt", "size", "totalFiles"):
                self.assertIn(key, b)
            self.assertRegex(b["createdAt"], ISO_Z)
            self.assertRegex(b["updatedAt"], ISO_Z)

    def test_list_me_and_search(self):
        create_bucket("carol/search-alpha", token=CAROL_W)
        create_bucket("carol/search-beta", token=CAROL_W, private=True)
        mine = [b["id"] for b in request("GET", "/api/buckets/me", token=CAROL_W).json()]
        self.assertIn("carol/search-alpha", mine)
        self.assertIn("carol/search-beta", mine)
        self.assertTrue(all(i.startswith("carol/") for i in mine))
        found = [b["id"] for b in request("GET", "/api/buckets/carol?search=alpha", token=CAROL_W).json()]
        self.assertEqual(found, ["carol/search-alpha"])
        self.assertStatus(request("GET", "/api/buckets/me"), 401)

    def test_list_bad_namespace_is_404(self):
        self.assertNotFound(request("GET", "/api/buckets/bad..ns", token=ALICE_W))
        # An empty namespace with no buckets lists nothing.
        r = request("GET", "/api/buckets/emptyns", token=ALICE_W)
        self.assertIn(r.status, (200, 404))
        if r.status == 200:
            self.assertEqual(r.json(), [])

    def test_one_segment_bucket_routes_are_404(self):
        self.assertNotFound(request("DELETE", "/api/buckets/alice", token=ALICE_W))
        self.assertNotFound(request("GET", "/buckets/alice", token=ALICE_W))


class BucketDeleteMoveTest(ApiTestCase):
    def test_delete_then_404_and_recreate_is_empty(self):
        create_bucket("alice/to-delete")
        upload_case("alice/to-delete", "one_byte_seed1")
        self.assertEqual(bucket_info("alice/to-delete").json()["totalFiles"], 1)
        r = request("DELETE", "/api/buckets/alice/to-delete", token=ALICE_W,
                    headers={"Content-Type": "application/json"})
        self.assertTrue(200 <= r.status < 300, r)
        self.assertNotFound(bucket_info("alice/to-delete"))
        self.assertNotFound(request("DELETE", "/api/buckets/alice/to-delete", token=ALICE_W))
        self.assertNotFound(tree("alice/to-delete"))
        self.assertNotFound(request("GET", "/buckets/alice/to-delete/resolve/one_byte_seed1.bin", token=ALICE_W))
        names = [b["id"] for b in request("GET", "/api/buckets/alice", token=ALICE_W).json()]
        self.assertNotIn("alice/to-delete", names)
        create_bucket("alice/to-delete")
        info = bucket_info("alice/to-delete").json()
        self.assertEqual((info["totalFiles"], info["size"]), (0, 0))
        self.assertEqual(tree("alice/to-delete").json(), [])

    def test_delete_keeps_buckets_with_longer_ids(self):
        create_bucket("alice/del")
        create_bucket("alice/del2")
        upload_case("alice/del", "one_byte_seed1")
        upload_case("alice/del2", "one_byte_seed1")
        self.assertStatus(request("DELETE", "/api/buckets/alice/del", token=ALICE_W), 200)
        self.assertEqual([e["path"] for e in tree("alice/del2").json()], ["one_byte_seed1.bin"])
        self.assertEqual(bucket_info("alice/del2").json()["totalFiles"], 1)
        cas = xet_token("alice/del2", ALICE_W, write=False)
        self.assertStatus(request("GET", f"/v2/reconstructions/{file_of('one_byte_seed1.bin')['xet_hash']}",
                                  token=cas), 200)

    def test_delete_refusals_leave_the_bucket(self):
        create_bucket("alice/keep-pub")
        create_bucket("alice/keep-priv", private=True)
        self.assertStatus(request("DELETE", "/api/buckets/alice/keep-pub"), 401)
        self.assertStatus(request("DELETE", "/api/buckets/alice/keep-pub", token=UNKNOWN), 401)
        self.assertStatus(request("DELETE", "/api/buckets/alice/keep-pub", token=ALICE_R), 403)
        self.assertStatus(request("DELETE", "/api/buckets/alice/keep-pub", token=BOB_W), 403)
        self.assertNotFound(request("DELETE", "/api/buckets/alice/keep-priv", token=BOB_W))
        self.assertStatus(request("DELETE", "/api/buckets/alice/keep-priv"), 401)
        self.assertStatus(bucket_info("alice/keep-pub"), 200)
        self.assertStatus(bucket_info("alice/keep-priv"), 200)

    def test_move_renames_with_contents(self):
        create_bucket("alice/mv-src", private=True)
        case = upload_case("alice/mv-src", "random_102400_seed1")
        f = case["files"][0]
        r = request("POST", "/api/repos/move", {"fromRepo": "alice/mv-src", "toRepo": "alice/mv-dst",
                                                "type": "bucket"}, token=ALICE_W)
        self.assertTrue(200 <= r.status < 300, r)
        self.assertNotFound(bucket_info("alice/mv-src"))
        info = bucket_info("alice/mv-dst")
        self.assertStatus(info, 200)
        self.assertEqual(info.json()["id"], "alice/mv-dst")
        self.assertIs(info.json()["private"], True)
        self.assertEqual(info.json()["totalFiles"], 1)
        got = request("GET", f"/buckets/alice/mv-dst/resolve/{f['path']}", token=ALICE_W)
        self.assertStatus(got, 200)
        self.assertEqual(got.body, input_of(f["path"]))
        # The moved bucket's CAS tokens may still read its file.
        cas = xet_token("alice/mv-dst", ALICE_W, write=False)
        self.assertStatus(request("GET", f"/v2/reconstructions/{f['xet_hash']}", token=cas), 200)
        # Into another namespace the token can write.
        r = request("POST", "/api/repos/move", {"fromRepo": "carol/mv-x", "toRepo": "cteam/mv-x", "type": "bucket"},
                    token=CAROL_W)
        self.assertNotFound(r)
        create_bucket("carol/mv-x", token=CAROL_W)
        r = request("POST", "/api/repos/move", {"fromRepo": "carol/mv-x", "toRepo": "cteam/mv-x", "type": "bucket"},
                    token=CAROL_W)
        self.assertTrue(200 <= r.status < 300, r)
        self.assertStatus(bucket_info("cteam/mv-x", token=CAROL_W), 200)

    def test_move_refusals(self):
        create_bucket("alice/mv-a")
        create_bucket("alice/mv-b")
        create_bucket("alice/mv-hidden", private=True)

        def move(body, token=ALICE_W):
            return request("POST", "/api/repos/move", body, token=token)

        self.assertStatus(move({"fromRepo": "alice/mv-a", "toRepo": "alice/mv-b", "type": "bucket"}), 409)
        self.assertNotFound(move({"fromRepo": "alice/mv-none", "toRepo": "alice/mv-c", "type": "bucket"}))
        self.assertStatus(move({"fromRepo": "alice/mv-a", "toRepo": "bob/mv-a", "type": "bucket"}), 403)
        self.assertStatus(move({"fromRepo": "alice/mv-a", "toRepo": "alice/mv-c", "type": "bucket"}, ALICE_R), 403)
        self.assertStatus(move({"fromRepo": "alice/mv-a", "toRepo": "alice/mv-c", "type": "bucket"}, None), 401)
        self.assertNotFound(move({"fromRepo": "alice/mv-hidden", "toRepo": "bob/mv-hidden", "type": "bucket"}, BOB_W))
        self.assertStatus(move({"fromRepo": "alice/mv-a", "toRepo": "alice/mv-c", "type": "model"}), 400)
        self.assertStatus(move({"fromRepo": "alice/mv-a", "toRepo": "alice/bad..name", "type": "bucket"}), 400)
        self.assertStatus(move({"fromRepo": "alice/mv-a", "toRepo": "a/b/c", "type": "bucket"}), 400)
        self.assertStatus(move({"fromRepo": "alice/mv-a"}), 400)
        self.assertStatus(request("POST", "/api/repos/move", "garbage", token=ALICE_W), 400)
        for name in ("mv-a", "mv-b", "mv-hidden"):
            self.assertStatus(bucket_info("alice/" + name), 200)
        self.assertNotFound(bucket_info("alice/mv-c"))
        self.assertNotFound(bucket_info("bob/mv-a", token=BOB_W))
        self.assertNotFound(bucket_info("bob/mv-hidden", token=BOB_W))


# ---- Hub: authorization -----------------------------------------------------------------------------

class AuthTest(ApiTestCase):
    def hub_reads(self, bucket_id):
        return [
            ("GET", f"/api/buckets/{bucket_id}", None),
            ("GET", f"/api/buckets/{bucket_id}/tree", None),
            ("POST", f"/api/buckets/{bucket_id}/paths-info", {"paths": ["random_102400_seed1.bin"]}),
            ("GET", f"/buckets/{bucket_id}/resolve/random_102400_seed1.bin", None),
            ("GET", f"/api/buckets/{bucket_id}/xet-read-token", None),
        ]

    def test_unknown_hub_token_is_401(self):
        for method, path, body in self.hub_reads(DATA_BUCKET) + [("GET", "/api/buckets/alice", None),
                                                                 ("GET", "/api/whoami-v2", None)]:
            self.assertStatus(request(method, path, body, token=UNKNOWN), 401, path)
        r = request("GET", f"/api/buckets/{DATA_BUCKET}", headers={"Authorization": "Basic abc"})
        self.assertStatus(r, 401)

    def test_anonymous_on_private_is_401(self):
        for method, path, body in self.hub_reads(PRIVATE_BUCKET):
            self.assertStatus(request(method, path, body), 401, path)

    def test_other_namespace_on_private_is_404_repo_not_found(self):
        for method, path, body in self.hub_reads(PRIVATE_BUCKET) + [
                ("POST", f"/api/buckets/{PRIVATE_BUCKET}/batch", "{\"type\":\"deleteFile\",\"path\":\"x\"}"),
                ("GET", f"/api/buckets/{PRIVATE_BUCKET}/xet-write-token", None),
                ("DELETE", f"/api/buckets/{PRIVATE_BUCKET}", None)]:
            for token in (BOB_W, BOB_R):
                self.assertNotFound(request(method, path, body, token=token))
        self.assertStatus(bucket_info(PRIVATE_BUCKET), 200)

    def test_owner_and_public_reads_succeed(self):
        for method, path, body in self.hub_reads(PRIVATE_BUCKET):
            self.assertStatus(request(method, path, body, token=ALICE_R), 200, path)
        for token in (BOB_W, None):
            for method, path, body in self.hub_reads(DATA_BUCKET):
                self.assertStatus(request(method, path, body, token=token), 200, path)

    def test_read_token_writing_is_403(self):
        line = json.dumps(add_line("ro.bin", ZERO_HASH))
        self.assertStatus(request("POST", f"/api/buckets/{DATA_BUCKET}/batch", line, token=ALICE_R), 403)
        self.assertStatus(request("GET", f"/api/buckets/{DATA_BUCKET}/xet-write-token", token=ALICE_R), 403)
        self.assertStatus(request("POST", f"/api/buckets/{DATA_BUCKET}/batch", line, token=BOB_W), 403)
        self.assertStatus(request("POST", f"/api/buckets/{DATA_BUCKET}/batch", line), 401)
        self.assertEqual(paths_info(DATA_BUCKET, ["ro.bin"]).json(), [])

    def test_whoami(self):
        r = request("GET", "/api/whoami-v2", token=CAROL_W)
        self.assertStatus(r, 200)
        body = r.json()
        self.assertEqual(body["name"], "carol")
        self.assertEqual([o["name"] for o in body["orgs"]], ["cteam"])
        self.assertEqual(body["auth"]["accessToken"]["role"], "write")
        self.assertRegex(body["auth"]["accessToken"]["createdAt"], ISO_Z)
        self.assertStatus(request("GET", "/api/whoami-v2"), 401)


class XetTokenTest(ApiTestCase):
    def test_cas_token_dies_with_its_bucket(self):
        """A CAS token outlives neither its bucket nor a bucket re-created under the same name."""
        create_bucket("alice/regen")
        old = xet_token("alice/regen", ALICE_W)
        self.assertStatus(request("HEAD", "/v1/files/" + ZERO_HASH, token=old), 404)  # valid token, no file
        self.assertStatus(request("DELETE", "/api/buckets/alice/regen", token=ALICE_W), 200)
        r = request("GET", "/v1/reconstructions/" + ZERO_HASH, token=old)
        self.assertStatus(r, 401)
        time.sleep(0.01)
        create_bucket("alice/regen")
        self.assertStatus(request("POST", "/v1/shards", b"x", token=old), 401)
        fresh = xet_token("alice/regen", ALICE_W)
        self.assertStatus(request("HEAD", "/v1/files/" + ZERO_HASH, token=fresh), 404)

    def test_read_and_write_token_fields(self):
        for kind, token in (("read", ALICE_R), ("write", ALICE_W), ("read", None), ("read", BOB_R)):
            now = time.time()
            r = request("GET", f"/api/buckets/{DATA_BUCKET}/xet-{kind}-token", token=token)
            self.assertStatus(r, 200)
            body = r.json()
            self.assertIsInstance(body["accessToken"], str)
            self.assertTrue(body["accessToken"])
            self.assertIsInstance(body["exp"], int)
            self.assertLessEqual(abs(body["exp"] - (now + 3600)), 5)
            self.assertEqual(body["casUrl"], MAIN.base)
            self.assertFalse(body["casUrl"].endswith("/"))
            self.assertEqual(r.header("X-Xet-Access-Token"), body["accessToken"])

    def test_write_token_refused_without_write_access(self):
        self.assertStatus(request("GET", f"/api/buckets/{DATA_BUCKET}/xet-write-token", token=ALICE_R), 403)
        self.assertStatus(request("GET", f"/api/buckets/{DATA_BUCKET}/xet-write-token", token=BOB_W), 403)
        self.assertStatus(request("GET", f"/api/buckets/{DATA_BUCKET}/xet-write-token"), 401)
        self.assertNotFound(request("GET", "/api/buckets/alice/no-such/xet-read-token", token=ALICE_W))
        self.assertNotFound(request("GET", "/api/buckets/alice/no-such/xet-write-token", token=ALICE_W))

    def test_read_cas_token_may_read_but_not_write(self):
        cas = xet_token(DATA_BUCKET, ALICE_W, write=False)
        f = file_of("random_102400_seed1.bin")
        self.assertStatus(request("GET", f"/v2/reconstructions/{f['xet_hash']}", token=cas), 200)
        xorb = CASES["one_byte_seed1"]["xorbs_uploaded"][0]["hash"]
        self.assertStatus(upload_xorb(xorb, cas), 403)
        self.assertStatus(upload_shard(CASES["random_102400_seed1"]["shards"][0], cas), 403)
        # A Hub token is not a CAS token.
        self.assertStatus(request("GET", f"/v2/reconstructions/{f['xet_hash']}", token=ALICE_W), 401)


# ---- CAS: xorbs and shards --------------------------------------------------------------------------

class CasXorbTest(ApiTestCase):
    CASE = "random_3000000_seed2"

    @classmethod
    def setUpClass(cls):
        create_bucket("alice/xorbs")
        cls.cas = xet_token("alice/xorbs", ALICE_W)
        cls.read_cas = xet_token("alice/xorbs", ALICE_W, write=False)
        cls.xorb = CASES[cls.CASE]["xorbs_uploaded"][0]["hash"]
        cls.body = read_data(f"xorbs/{cls.xorb}.xorb")

    def test_a_refusals_store_nothing(self):
        before = metrics()
        tampered = bytearray(self.body)
        tampered[100] ^= 0x01  # a data byte of the first (uncompressed) chunk
        self.assertStatus(upload_xorb(self.xorb, self.cas, body=bytes(tampered)), 400)
        other = CASES["random_102400_seed1"]["xorbs_uploaded"][0]["hash"]
        self.assertStatus(upload_xorb(other, self.cas, body=self.body), 400)  # URL hash is not the body's
        self.assertStatus(upload_xorb(self.xorb, self.cas, body=self.body[:-5]), 400)  # truncated chunk
        self.assertStatus(upload_xorb(self.xorb, self.cas, body=b""), 400)
        self.assertStatus(upload_xorb("nothex", self.cas, body=self.body), 400)
        self.assertStatus(request("POST", f"/v1/xorbs/other/{self.xorb}", self.body, token=self.cas), 400)
        # Token refusals come before the body is read: small bodies, so that no unread data resets the
        # connection before the answer is read.
        small = CASES["one_byte_seed1"]["xorbs_uploaded"][0]["hash"]
        self.assertStatus(upload_xorb(small, self.read_cas), 403)
        self.assertStatus(upload_xorb(small, None), 401)
        self.assertStatus(upload_xorb(small, "xet_forged.0000"), 401)
        self.assertStatus(upload_xorb(small, self.cas[:-1] + ("0" if self.cas[-1] != "0" else "1")), 401)
        self.assertStatus(upload_xorb(small, ALICE_W), 401)
        self.assertStatus(request("HEAD", f"/v1/xorbs/default/{self.xorb}", token=self.cas), 404)
        after = metrics()
        self.assertEqual(after["bucketfs_xorb_bytes_stored"], before["bucketfs_xorb_bytes_stored"])
        self.assertEqual(after["bucketfs_xorb_bytes_received_total"], before["bucketfs_xorb_bytes_received_total"])

    def test_b_upload_inserted_then_not_and_head(self):
        before = metrics()
        r = upload_xorb(self.xorb, self.cas)
        self.assertStatus(r, 200)
        self.assertIs(r.json()["was_inserted"], True)
        middle = metrics()
        r = upload_xorb(self.xorb, self.cas)
        self.assertStatus(r, 200)
        self.assertIs(r.json()["was_inserted"], False)
        after = metrics()
        size = len(self.body)
        self.assertEqual(middle["bucketfs_xorb_bytes_stored"] - before["bucketfs_xorb_bytes_stored"], size)
        self.assertEqual(after["bucketfs_xorb_bytes_stored"], middle["bucketfs_xorb_bytes_stored"])
        self.assertEqual(after["bucketfs_xorb_bytes_received_total"] - before["bucketfs_xorb_bytes_received_total"],
                         2 * size)
        head = request("HEAD", f"/v1/xorbs/default/{self.xorb}", token=self.read_cas)
        self.assertStatus(head, 200)
        self.assertEqual(int(head.header("Content-Length")), size)
        self.assertEqual(head.body, b"")
        self.assertStatus(request("HEAD", f"/v1/xorbs/default/{UNKNOWN_HASH}", token=self.read_cas), 404)
        self.assertStatus(request("HEAD", f"/v1/xorbs/default/zz{UNKNOWN_HASH[2:]}", token=self.read_cas), 400)
        self.assertStatus(request("HEAD", f"/v1/xorbs/default/{self.xorb}"), 401)

    def raw_exchange(self, head):
        """Sends request headers only and reads one response: (status, headers text, body)."""
        with socket.create_connection((MAIN.host, MAIN.port), timeout=10) as sock:
            sock.sendall(head.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
            header_text, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", header_text)
            while length and len(body) < int(length.group(1)):
                piece = sock.recv(65536)
                if not piece:
                    break
                body += piece
        status = int(header_text.split(b" ", 2)[1])
        return status, header_text.decode(errors="replace"), body

    def test_c_body_over_the_limit_is_413(self):
        # Announce 80 MiB (over the 64 MiB xorb limit plus slack): the answer comes on the headers alone.
        status, headers, body = self.raw_exchange(
            f"POST /v1/xorbs/default/{self.xorb} HTTP/1.1\r\nHost: {MAIN.host}\r\n"
            f"Authorization: Bearer {self.cas}\r\nContent-Length: {80 << 20}\r\n\r\n")
        self.assertEqual(status, 413, headers)
        self.assertIsInstance(json.loads(body)["error"], str)
        # An unauthorized oversized upload is refused on its headers too (401, not 413).
        status, headers, body = self.raw_exchange(
            f"POST /v1/xorbs/default/{self.xorb} HTTP/1.1\r\nHost: {MAIN.host}\r\n"
            f"Content-Length: {80 << 20}\r\n\r\n")
        self.assertEqual(status, 401, headers)
        self.assertIsInstance(json.loads(body)["error"], str)
        self.assertTrue(MAIN.alive())


class CasShardTest(ApiTestCase):
    def tamper(self, shard, offset):
        body = bytearray(shard)
        body[offset] ^= 0x01
        return bytes(body)

    def test_shard_before_its_xorbs_is_400_and_nothing_recorded(self):
        create_bucket("alice/shards1")
        case = CASES["text_like_262144"]
        f = case["files"][0]
        cas = xet_token("alice/shards1", ALICE_W)
        self.assertStatus(upload_shard(case["shards"][0], cas), 400)
        self.assertStatus(request("HEAD", f"/v1/files/{f['xet_hash']}", token=cas), 404)
        self.assertStatus(request("GET", f"/v2/reconstructions/{f['xet_hash']}", token=cas), 404)
        r = batch("alice/shards1", [add_line(f["path"], f["xet_hash"])])
        self.assertStatus(r, 422)
        self.assertEqual(tree("alice/shards1").json(), [])
        # In order it works, and the bytes come back (LZ4 chunks decoded by the server).
        for xorb in case["xorbs_uploaded"]:
            self.assertStatus(upload_xorb(xorb["hash"], cas), 200)
        r = upload_shard(case["shards"][0], cas)
        self.assertStatus(r, 200)
        self.assertIn(r.json()["result"], (0, 1))
        head = request("HEAD", f"/v1/files/{f['xet_hash']}", token=cas)
        self.assertStatus(head, 200)
        self.assertEqual(int(head.header("Content-Length")), f["size"])
        self.assertStatus(batch("alice/shards1", [add_line(f["path"], f["xet_hash"])]), 200)
        got = request("GET", f"/buckets/alice/shards1/resolve/{f['path']}", token=ALICE_W)
        self.assertStatus(got, 200)
        self.assertEqual(got.body, input_of(f["path"]))
        # Uploading the same shard again is fine.
        self.assertStatus(upload_shard(case["shards"][0], cas), 200)

    def test_tampered_shards_are_400_and_nothing_recorded(self):
        create_bucket("alice/shards2")
        case = CASES["float32_ramp_262144"]
        f = case["files"][0]
        decoded = case["shard_decoded"][0]
        cas = xet_token("alice/shards2", ALICE_W)
        for xorb in case["xorbs_uploaded"]:
            self.assertStatus(upload_xorb(xorb["hash"], cas), 200)
        shard = read_data(case["shards"][0])
        file_offset = decoded["footer"]["file_info_offset"]  # the first file's hash
        num_terms = decoded["files"][0]["num_entries"]
        verification_offset = file_offset + 48 + 48 * num_terms
        self.assertEqual(shard[file_offset:file_offset + 32], hash_bytes(f["xet_hash"]))
        self.assertEqual(shard[verification_offset:verification_offset + 32],
                         hash_bytes(decoded["files"][0]["verification"][0]))
        term_offset = file_offset + 48
        self.assertStatus(upload_shard(None, cas, body=self.tamper(shard, verification_offset + 5)), 400)
        self.assertStatus(upload_shard(None, cas, body=self.tamper(shard, file_offset + 3)), 400)
        self.assertStatus(upload_shard(None, cas, body=self.tamper(shard, term_offset + 40)), 400)  # unpacked len
        cas_offset = decoded["cas_info_offset"]
        self.assertStatus(upload_shard(None, cas, body=self.tamper(shard, cas_offset + 48 + 1)), 400)  # chunk hash
        self.assertStatus(upload_shard(None, cas, body=shard[:40]), 400)
        self.assertStatus(upload_shard(None, cas, body=b"not a shard at all" * 10), 400)
        self.assertStatus(upload_shard(None, cas, body=b""), 400)
        self.assertStatus(request("HEAD", f"/v1/files/{f['xet_hash']}", token=cas), 404)
        self.assertStatus(batch("alice/shards2", [add_line(f["path"], f["xet_hash"])]), 422)
        # Refusals by token.
        self.assertStatus(upload_shard(None, xet_token("alice/shards2", ALICE_W, write=False), body=shard), 403)
        self.assertStatus(upload_shard(None, None, body=shard), 401)
        self.assertStatus(request("POST", "/v2/shards", shard, token=cas), 404)
        self.assertStatus(request("HEAD", f"/v1/files/{f['xet_hash']}", token=cas), 404)
        # The genuine shard is accepted afterwards.
        self.assertStatus(upload_shard(None, cas, body=shard), 200)
        self.assertStatus(request("HEAD", f"/v1/files/{f['xet_hash']}", token=cas), 200)

    def test_head_file(self):
        cas = xet_token(DATA_BUCKET, ALICE_W, write=False)
        for name in ("random_1000000_seed0", "const59_1000000"):
            f = CASES[name]["files"][0]
            head = request("HEAD", f"/v1/files/{f['xet_hash']}", token=cas)
            self.assertStatus(head, 200)
            self.assertEqual(int(head.header("Content-Length")), f["size"])
        self.assertStatus(request("HEAD", f"/v1/files/{UNKNOWN_HASH}", token=cas), 404)
        self.assertStatus(request("HEAD", "/v1/files/xyz", token=cas), 400)
        self.assertStatus(request("HEAD", f"/v1/files/{UNKNOWN_HASH}"), 401)


class DedupTest(ApiTestCase):
    def test_first_chunk_of_uploaded_file_answers_a_shard(self):
        cas = xet_token(DATA_BUCKET, ALICE_W, write=False)
        case = CASES["random_102400_seed1"]
        first_chunk = case["files"][0]["npm_chunker"]["chunks"][0][1]
        xorb = case["xorbs_uploaded"][0]["hash"]
        # The first chunk is also in the shard's CAS section.
        self.assertEqual(case["shard_decoded"][0]["xorbs"][0]["chunks"][0]["chunk_hash"], first_chunk)
        for prefix in ("default", "default-merkledb"):
            r = request("GET", f"/v1/chunks/{prefix}/{first_chunk}", token=cas)
            self.assertStatus(r, 200)
            self.assertTrue(r.body.startswith(b"HFRepoMetaData"), r.body[:32])
            version, footer_size = struct.unpack_from("<QQ", r.body, 32)
            self.assertEqual(version, 2)
            self.assertGreater(footer_size, 0)
            self.assertIn(hash_bytes(xorb), r.body)

    def test_dedup_of_multi_xorb_shard_lists_its_xorbs(self):
        cas = xet_token(DATA_BUCKET, ALICE_W, write=False)
        edited = CASES["dedup_edited"]
        first_chunk = edited["files"][0]["npm_chunker"]["chunks"][0][1]
        r = request("GET", f"/v1/chunks/default/{first_chunk}", token=cas)
        self.assertStatus(r, 200)
        # The first chunk is deduplicated against dedup_base's xorb: that xorb answers.
        base_xorb = CASES["dedup_base"]["xorbs_uploaded"][0]["hash"]
        self.assertIn(hash_bytes(base_xorb), r.body)

    def test_dedup_refusals(self):
        cas = xet_token(DATA_BUCKET, ALICE_W, write=False)
        self.assertStatus(request("GET", f"/v1/chunks/default/{UNKNOWN_HASH}", token=cas), 404)
        first_chunk = CASES["random_102400_seed1"]["files"][0]["npm_chunker"]["chunks"][0][1]
        self.assertStatus(request("GET", f"/v1/chunks/bogus/{first_chunk}", token=cas), 400)
        self.assertStatus(request("GET", "/v1/chunks/default/1234", token=cas), 400)
        self.assertStatus(request("GET", f"/v1/chunks/default/{first_chunk}"), 401)
        self.assertStatus(request("GET", f"/v1/chunks/default/{first_chunk}", token="xet_00.00"), 401)


# ---- CAS: reconstruction and signed xorb URLs -------------------------------------------------------

class ReconstructionTest(ApiTestCase):
    @classmethod
    def setUpClass(cls):
        cls.cas = xet_token(DATA_BUCKET, ALICE_R, write=False)

    def recon(self, name, version=2, range_header=None, token=None):
        f = file_of(name)
        headers = {"Range": range_header} if range_header else None
        return request("GET", f"/v{version}/reconstructions/{f['xet_hash']}", token=token or self.cas,
                       headers=headers)

    def test_v2_shape_and_bytes(self):
        for name in ("random_102400_seed1.bin", "dedup_edited.bin", "multi/sub dir/b.bin", "one_byte_seed1.bin"):
            f = file_of(name)
            r = self.recon(name)
            self.assertStatus(r, 200)
            body = r.json()
            self.assertEqual(body["offset_into_first_range"], 0)
            self.assertEqual(sum(t["unpacked_length"] for t in body["terms"]), f["size"])
            self.assertEqual(set(body["xorbs"]), {t["hash"] for t in body["terms"]})
            for term in body["terms"]:
                self.assertRegex(term["hash"], r"^[0-9a-f]{64}$")
                self.assertLess(term["range"]["start"], term["range"]["end"])
            for entries in body["xorbs"].values():
                for entry in entries:
                    self.assertTrue(entry["url"].startswith("http://"))
                    self.assertEqual(len(entry["ranges"]), 1)  # one range per fetch entry
                    for rng in entry["ranges"]:
                        self.assertLessEqual(rng["bytes"]["start"], rng["bytes"]["end"])
            self.assertEqual(reconstruct(body), input_of(name), name)
        # dedup_edited really spans two xorbs (its own and dedup_base's).
        self.assertEqual(len(self.recon("dedup_edited.bin").json()["xorbs"]), 2)

    def test_v2_range_sets_offset_into_first_range(self):
        data = input_of("dedup_edited.bin")
        for first, last in ((0, 0), (30000, 40000), (299990, 450020), (len(data) - 7, len(data) - 1),
                            (123456, len(data) + 1000)):
            r = self.recon("dedup_edited.bin", range_header=f"bytes={first}-{last}")
            self.assertStatus(r, 200)
            body = r.json()
            term_starts, offset = [], 0
            terms = self.recon("dedup_edited.bin").json()["terms"]
            for t in terms:
                term_starts.append(offset)
                offset += t["unpacked_length"]
            containing = max(s for s in term_starts if s <= first)
            # Whole chunks, not whole terms: the first term is trimmed to the chunk holding
            # `first`, so the skip is at most the containing term's and below one chunk (128 KiB).
            self.assertLessEqual(body["offset_into_first_range"], first - containing)
            self.assertLess(body["offset_into_first_range"], 128 * 1024)
            served = sum(t["unpacked_length"] for t in body["terms"])
            self.assertLessEqual(served, min(last, len(data) - 1) - first + 1 + 2 * 128 * 1024, (first, last))
            expected = data[first:last + 1]
            self.assertEqual(reconstruct(body, length=len(expected)), expected, (first, last))
        r = self.recon("random_102400_seed1.bin", range_header="bytes=30000-40000")
        self.assertLessEqual(r.json()["offset_into_first_range"], 30000)
        self.assertEqual(reconstruct(r.json(), length=10001), input_of("random_102400_seed1.bin")[30000:40001])

    def test_range_start_at_or_past_end_is_416(self):
        f = file_of("random_102400_seed1.bin")
        for version in (1, 2):
            self.assertStatus(self.recon(f["path"], version, f"bytes={f['size']}-{f['size'] + 10}"), 416)
            self.assertStatus(self.recon(f["path"], version, f"bytes={f['size'] + 5}-"), 416)
            self.assertStatus(self.recon(f["path"], version, f"bytes={f['size'] - 1}-{f['size'] - 1}"), 200)
        self.assertStatus(self.recon(f["path"], 2, "bytes=oops"), 400)

    def test_v1_shape(self):
        f = file_of("random_1000000_seed0.bin")
        r = self.recon(f["path"], version=1)
        self.assertStatus(r, 200)
        body = r.json()
        self.assertEqual(body["offset_into_first_range"], 0)
        self.assertIn("fetch_info", body)
        self.assertNotIn("xorbs", body)
        self.assertEqual(sum(t["unpacked_length"] for t in body["terms"]), f["size"])
        for xorb, entries in body["fetch_info"].items():
            for entry in entries:
                self.assertIn("start", entry["range"])
                self.assertIn("end", entry["range"])
                first, last = entry["url_range"]["start"], entry["url_range"]["end"]
                got = request("GET", entry["url"], headers={"Range": f"bytes={first}-{last}"})
                self.assertStatus(got, 206)
                self.assertEqual(len(got.body), last - first + 1)
                self.assertTrue(got.header("Content-Range").startswith(f"bytes {first}-{last}/"))

    def test_signed_urls(self):
        body = self.recon("random_102400_seed1.bin").json()
        entry = next(iter(body["xorbs"].values()))[0]
        rng = entry["ranges"][0]["bytes"]
        url = entry["url"]
        whole = request("GET", url, headers={"Range": f"bytes={rng['start']}-{rng['end']}"})
        self.assertStatus(whole, 206)
        self.assertEqual(len(whole.body), rng["end"] - rng["start"] + 1)
        self.assertEqual(whole.body, read_data(f"xorbs/{next(iter(body['xorbs']))}.xorb")[rng["start"]:rng["end"] + 1])
        # A sub-range and two ranges (multipart) inside the signed range.
        part = request("GET", url, headers={"Range": f"bytes={rng['start'] + 10}-{rng['start'] + 19}"})
        self.assertStatus(part, 206)
        self.assertEqual(part.body, whole.body[10:20])
        multi = request("GET", url, headers={"Range": f"bytes={rng['start']}-{rng['start'] + 3},"
                                                      f"{rng['start'] + 8}-{rng['start'] + 9}"})
        self.assertStatus(multi, 206)
        content_type = multi.header("Content-Type")
        self.assertTrue(content_type.startswith("multipart/byteranges"), content_type)
        boundary = re.search(r"boundary=\"?([^\";]+)", content_type).group(1).encode()
        parts = []
        for piece in multi.body.split(b"--" + boundary)[1:]:
            if piece.startswith(b"--"):
                break
            head, _, data = piece.partition(b"\r\n\r\n")
            self.assertTrue(data.endswith(b"\r\n"))
            parts.append((re.search(rb"Content-Range: bytes (\d+)-(\d+)/", head, re.I).groups(), data[:-2]))
        self.assertEqual(parts, [((str(rng["start"]).encode(), str(rng["start"] + 3).encode()), whole.body[0:4]),
                                 ((str(rng["start"] + 8).encode(), str(rng["start"] + 9).encode()), whole.body[8:10])])
        # Outside the signed range.
        self.assertStatus(request("GET", url, headers={"Range": f"bytes={rng['start']}-{rng['end'] + 1}"}), 403)
        # A tampered signature, range, expiry or xorb.
        parsed = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parsed.query))

        def with_query(**changes):
            q2 = dict(query, **changes)
            return f"{parsed.path}?{urllib.parse.urlencode(q2)}"

        sig = query["sig"]
        self.assertStatus(request("GET", with_query(sig=sig[:-1] + ("0" if sig[-1] != "0" else "1"))), 403)
        self.assertStatus(request("GET", with_query(sig="")), 403)
        self.assertStatus(request("GET", with_query(range=f"{rng['start']}-{rng['end'] + 100}")), 403)
        self.assertStatus(request("GET", with_query(expires=str(int(query["expires"]) + 1000))), 403)
        self.assertStatus(request("GET", parsed.path), 403)
        other = CASES["random_1000000_seed0"]["xorbs_uploaded"][0]["hash"]
        self.assertStatus(request("GET", f"/xorb-data/{other}?{parsed.query}"), 403)
        # The genuine URL still works without Authorization and without Range (whole signed range).
        plain = request("GET", url)
        self.assertIn(plain.status, (200, 206))
        self.assertEqual(plain.body, whole.body)

    def test_other_bucket_token_gets_404(self):
        create_bucket("bob/stranger", token=BOB_W)
        stranger = xet_token("bob/stranger", BOB_W)
        for name in ("random_102400_seed1.bin", "dedup_edited.bin"):
            f = file_of(name)
            self.assertStatus(request("GET", f"/v2/reconstructions/{f['xet_hash']}", token=stranger), 404)
            self.assertStatus(request("GET", f"/v1/reconstructions/{f['xet_hash']}", token=stranger), 404)
            self.assertStatus(request("HEAD", f"/v1/files/{f['xet_hash']}", token=stranger), 404)
            r = request("POST", "/v1/reconstructions", [{"prefix": "default", "hash": f["xet_hash"]}], token=stranger)
            self.assertStatus(r, 404)
        # Bob's private bucket's file, read with Alice's token: not hers either.
        bob_file = file_of("one_byte_seed1.bin")
        self.assertStatus(request("GET", f"/v2/reconstructions/{bob_file['xet_hash']}",
                                  token=xet_token(PRIVATE_BUCKET, ALICE_W)), 404)

    def test_reconstruction_refusals(self):
        self.assertStatus(request("GET", f"/v2/reconstructions/{UNKNOWN_HASH}", token=self.cas), 404)
        self.assertStatus(request("GET", "/v2/reconstructions/not-a-hash", token=self.cas), 400)
        f = file_of("random_102400_seed1.bin")
        self.assertStatus(request("GET", f"/v2/reconstructions/{f['xet_hash']}"), 401)
        self.assertStatus(request("GET", f"/v2/reconstructions/{f['xet_hash']}", token="xet_bogus"), 401)
        self.assertStatus(request("POST", f"/v2/reconstructions/{f['xet_hash']}", token=self.cas), 405)

    def test_batch_reconstruction(self):
        a = file_of("random_102400_seed1.bin")
        b = file_of("multi/a.bin")
        keys = [{"prefix": "default", "hash": a["xet_hash"]}, {"prefix": "default", "hash": b["xet_hash"]},
                {"prefix": "default", "hash": a["xet_hash"]}]
        r = request("POST", "/v1/reconstructions", keys, token=self.cas)
        self.assertStatus(r, 200)
        body = r.json()
        self.assertEqual(set(body["files"]), {a["xet_hash"], b["xet_hash"]})
        for f in (a, b):
            terms = body["files"][f["xet_hash"]]
            self.assertEqual(sum(t["unpacked_length"] for t in terms), f["size"])
            for t in terms:
                self.assertIn(t["hash"], body["fetch_info"])
                for entry in body["fetch_info"][t["hash"]]:
                    self.assertIn("url_range", entry)
        self.assertStatus(request("POST", "/v1/reconstructions",
                                  keys + [{"prefix": "default", "hash": UNKNOWN_HASH}], token=self.cas), 404)
        self.assertStatus(request("POST", "/v1/reconstructions", {"hash": a["xet_hash"]}, token=self.cas), 400)
        self.assertStatus(request("POST", "/v1/reconstructions", [{"prefix": "default"}], token=self.cas), 400)
        self.assertStatus(request("POST", "/v1/reconstructions", "[", token=self.cas), 400)
        self.assertStatus(request("POST", "/v1/reconstructions", [{"prefix": "default", "hash": "x"}],
                                  token=self.cas), 400)
        self.assertStatus(request("POST", "/v1/reconstructions", keys), 401)

    def test_empty_file_has_no_reconstruction_and_resolves_empty(self):
        r = request("GET", "/buckets/alice/data/resolve/empty.bin", token=ALICE_W)
        self.assertStatus(r, 200)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.header("X-Xet-Hash"), ZERO_HASH)


# ---- Hub: batch -------------------------------------------------------------------------------------

class BatchTest(ApiTestCase):
    @classmethod
    def setUpClass(cls):
        create_bucket("alice/batch")
        upload_case("alice/batch", "one_byte_seed1", add=False)
        upload_case("alice/batch", "random_102400_seed1", add=False)
        cls.one = file_of("one_byte_seed1.bin")
        cls.big = file_of("random_102400_seed1.bin")

    def state(self, bucket="alice/batch"):
        info = bucket_info(bucket).json()
        listing = sorted((e["path"], e["xetHash"]) for e in tree(bucket).json())
        return info["totalFiles"], info["size"], listing

    def test_add_file_with_mtime_and_content_type(self):
        before = metrics()
        r = batch("alice/batch", [add_line("added/one.bin", self.one["xet_hash"], mtime=1727278262346,
                                           contentType="text/plain")])
        self.assertStatus(r, 200)
        self.assertEqual(r.json(), {"success": True, "processed": 1, "succeeded": 1, "failed": []})
        entry = paths_info("alice/batch", ["added/one.bin"]).json()[0]
        self.assertEqual(entry["mtime"], "2024-09-25T15:31:02.346Z")
        self.assertRegex(entry["uploadedAt"], ISO_MS_Z)
        self.assertEqual(entry["size"], 1)
        got = request("GET", "/buckets/alice/batch/resolve/added/one.bin", token=ALICE_W)
        self.assertEqual(got.header("Content-Type"), "text/plain")
        self.assertEqual(got.body, input_of("one_byte_seed1.bin"))
        after = metrics()
        self.assertEqual(after["bucketfs_file_bytes_committed_total"] - before["bucketfs_file_bytes_committed_total"], 1)

    def test_unknown_hash_with_valid_line_is_422_and_nothing_applied(self):
        before = self.state()
        m_before = metrics()
        r = batch("alice/batch", [add_line("valid.bin", self.big["xet_hash"]),
                                  add_line("bogus.bin", UNKNOWN_HASH),
                                  {"type": "deleteFile", "path": "added/one.bin"}])
        self.assertStatus(r, 422)
        body = r.json()
        self.assertIs(body["success"], False)
        self.assertEqual([f["path"] for f in body["failed"]], ["bogus.bin"])
        self.assertTrue(body["failed"][0]["error"])
        self.assertEqual(self.state(), before)
        self.assertEqual(paths_info("alice/batch", ["valid.bin", "bogus.bin"]).json(), [])
        self.assertEqual(metrics()["bucketfs_file_bytes_committed_total"],
                         m_before["bucketfs_file_bytes_committed_total"])

    def test_refused_key_names_are_422(self):
        before = self.state()
        for key in ["/lead", "trail/", "a//b", "../x", "a/../b", "a/..", "..", ".", "./x", "a/./b", "back\\slash",
                    "nul\0byte", "", "ctl\x01char", "x" * 1025]:
            r = batch("alice/batch", [add_line("fine-" + str(len(key)) + ".bin", self.one["xet_hash"]),
                                      add_line(key, self.one["xet_hash"])])
            self.assertStatus(r, 422, repr(key))
            self.assertEqual([f["path"] for f in r.json()["failed"]], [key], repr(key))
            r = batch("alice/batch", [{"type": "deleteFile", "path": key}])
            self.assertStatus(r, 422, repr(key))
        self.assertEqual(self.state(), before)
        # Keys the Hub accepts.
        good = ["name#1", "with space", "a..b", ".hidden", "dir/.hidden", "百科/文件", "q?x=1", "pct%41"]
        r = batch("alice/batch", [add_line("ok/" + k, self.one["xet_hash"]) for k in good])
        self.assertStatus(r, 200)
        found = {e["path"] for e in paths_info("alice/batch", ["ok/" + k for k in good]).json()}
        self.assertEqual(found, {"ok/" + k for k in good})
        for k in good:
            got = request("GET", "/buckets/alice/batch/resolve/" + urllib.parse.quote("ok/" + k), token=ALICE_W)
            self.assertStatus(got, 200, k)
        self.assertStatus(batch("alice/batch", [{"type": "deleteFile", "path": "ok/" + k} for k in good]), 200)

    def test_malformed_lines_are_400_and_nothing_applied(self):
        before = self.state()
        valid = json.dumps(add_line("never.bin", self.one["xet_hash"]))
        for bad in ['{"type":"addFile","path":"x.bin"', "[1,2]", "42", '"text"',
                    '{"type":"renameFile","path":"x.bin"}', '{"path":"x.bin"}',
                    '{"type":"addFile","xetHash":"' + self.one["xet_hash"] + '"}',
                    '{"type":"addFile","path":7,"xetHash":"' + self.one["xet_hash"] + '"}',
                    '{"type":"addFile","path":"x.bin","xetHash":"abc"}',
                    '{"type":"addFile","path":"x.bin"}',
                    '{"type":"addFile","path":"x.bin","xetHash":"' + self.one["xet_hash"] + '","mtime":"yesterday"}',
                    '{"type":"addFile","path":"x.bin","xetHash":"' + self.one["xet_hash"] + '","mtime":1.5}',
                    '{"type":"addFile","path":"x.bin","xetHash":"' + self.one["xet_hash"] + '","contentType":3}',
                    '{"type":"copyFile","path":"x.bin","xetHash":"' + self.one["xet_hash"] +
                    '","sourceRepoType":"bucket","sourceRepoId":"not-an-id"}']:
            r = batch("alice/batch", [valid, bad])
            self.assertStatus(r, 400, bad)
            r = batch("alice/batch", [bad, valid])
            self.assertStatus(r, 400, bad)
        self.assertEqual(self.state(), before)

    def test_mtime_edges_format_as_iso_z_or_are_refused(self):
        h = self.one["xet_hash"]
        for mtime, text in ((0, "1970-01-01T00:00:00.000Z"), (-1, "1969-12-31T23:59:59.999Z"),
                            (-1500, "1969-12-31T23:59:58.500Z"), (253402300799999, "9999-12-31T23:59:59.999Z")):
            self.assertStatus(batch("alice/batch", [add_line("mtime/x", h, mtime=mtime)]), 200, mtime)
            entry = paths_info("alice/batch", ["mtime/x"]).json()[0]
            self.assertEqual(entry["mtime"], text)
            self.assertEqual([e["mtime"] for e in tree("alice/batch", "mtime").json()], [text])
        before = self.state()
        for mtime in (253402300800000, 10 ** 18, -(10 ** 18), 2 ** 64 - 1):
            r = batch("alice/batch", [add_line("mtime/y", h), add_line("mtime/z", h, mtime=mtime)])
            self.assertStatus(r, 400, mtime)
        self.assertEqual(self.state(), before)
        self.assertStatus(batch("alice/batch", [{"type": "deleteFile", "path": "mtime/x"}]), 200)

    def test_same_path_twice_and_delete_of_missing(self):
        h = self.one["xet_hash"]
        files, size, _ = self.state()
        self.assertStatus(batch("alice/batch", [add_line("twice", h), add_line("twice", h)]), 200)
        self.assertEqual(self.state()[:2], (files + 1, size + 1))
        r = batch("alice/batch", [{"type": "deleteFile", "path": "never-existed"}])
        self.assertStatus(r, 200)
        self.assertStatus(batch("alice/batch", [{"type": "deleteFile", "path": "twice"}]), 200)
        self.assertEqual(self.state()[:2], (files, size))

    def test_unknown_type_is_400(self):
        r = batch("alice/batch", [{"type": "moveFile", "path": "a", "xetHash": self.one["xet_hash"]}])
        self.assertStatus(r, 400)
        self.assertIn("moveFile", r.json()["error"])

    def test_trailing_newline_optional_and_crlf_and_blank_lines(self):
        h = self.one["xet_hash"]
        self.assertStatus(batch("alice/batch", [add_line("nl/a", h), add_line("nl/b", h)], trailing_newline=True), 200)
        self.assertStatus(batch("alice/batch", [add_line("nl/c", h), add_line("nl/d", h)], trailing_newline=False),
                          200)
        text = json.dumps(add_line("nl/e", h)) + "\r\n\r\n" + json.dumps(add_line("nl/f", h)) + "\r\n"
        self.assertStatus(request("POST", "/api/buckets/alice/batch/batch", text, token=ALICE_W), 200)
        paths = [e["path"] for e in tree("alice/batch", "nl").json()]
        self.assertEqual(paths, ["nl/a", "nl/b", "nl/c", "nl/d", "nl/e", "nl/f"])
        # PY's json.dumps spacing.
        self.assertStatus(batch("alice/batch", ['{"type": "deleteFile", "path": "nl/f"}']), 200)
        # An empty body is an empty batch.
        r = batch("alice/batch", [], trailing_newline=False)
        self.assertStatus(r, 200)
        self.assertEqual(r.json()["processed"], 0)

    def test_delete_file(self):
        h = self.big["xet_hash"]
        self.assertStatus(batch("alice/batch", [add_line("del/x.bin", h), add_line("del/y.bin", h)]), 200)
        files, size, _ = self.state()
        r = batch("alice/batch", [{"type": "deleteFile", "path": "del/x.bin"}], trailing_newline=False)
        self.assertStatus(r, 200)
        self.assertEqual(r.json()["succeeded"], 1)
        files2, size2, listing = self.state()
        self.assertEqual((files2, size2), (files - 1, size - self.big["size"]))
        self.assertNotIn("del/x.bin", [p for p, _ in listing])
        self.assertIn("del/y.bin", [p for p, _ in listing])
        self.assertEqual(request("GET", "/buckets/alice/batch/resolve/del/x.bin",
                                 token=ALICE_W).header("X-Error-Code"), "EntryNotFound")
        # Overwrite: add on an existing path replaces it, totals stay consistent.
        self.assertStatus(batch("alice/batch", [add_line("del/y.bin", self.one["xet_hash"])]), 200)
        files3, size3, _ = self.state()
        self.assertEqual((files3, size3), (files2, size2 - self.big["size"] + 1))
        # Adds then deletes in one request (the mount's rename).
        self.assertStatus(batch("alice/batch", [add_line("del/z.bin", self.one["xet_hash"]),
                                                {"type": "deleteFile", "path": "del/y.bin"}]), 200)
        self.assertEqual([p for p, _ in self.state()[2] if p.startswith("del/")], ["del/z.bin"])

    def test_add_zero_hash_is_the_empty_file(self):
        self.assertStatus(batch("alice/batch", [add_line("zero/empty", ZERO_HASH)]), 200)
        entry = paths_info("alice/batch", ["zero/empty"]).json()[0]
        self.assertEqual(entry["size"], 0)
        head = request("HEAD", "/buckets/alice/batch/resolve/zero/empty", token=ALICE_W)
        self.assertStatus(head, 200)
        self.assertEqual(head.header("Content-Length"), "0")

    def test_add_hash_uploaded_by_another_bucket_is_refused(self):
        # text/const uploaded only to other buckets: this bucket never uploaded or held them.
        f = file_of("const59_1000000.bin")  # in alice/data only
        create_bucket("alice/batch-strange")
        r = batch("alice/batch-strange", [add_line("c.bin", f["xet_hash"])])
        self.assertStatus(r, 422)
        self.assertEqual([x["path"] for x in r.json()["failed"]], ["c.bin"])
        bob_file = file_of("one_byte_seed1.bin")
        r = batch(BOB_PUBLIC, [add_line("hidden-copy", bob_file["xet_hash"])], token=BOB_W)
        # bob uploaded one_byte himself (to bob/hidden), not to bob/shared: refused too.
        self.assertStatus(r, 422)

    def test_copy_file_from_readable_bucket(self):
        create_bucket("alice/copy-dst")
        a = file_of("multi/a.bin")
        # From Bob's public bucket (readable by Alice).
        line = {"type": "copyFile", "path": "copied/a.bin", "xetHash": a["xet_hash"], "sourceRepoType": "bucket",
                "sourceRepoId": BOB_PUBLIC}
        before = metrics()
        r = batch("alice/copy-dst", [line])
        self.assertStatus(r, 200)
        self.assertEqual(metrics()["bucketfs_file_bytes_committed_total"] -
                         before["bucketfs_file_bytes_committed_total"], a["size"])
        got = request("GET", "/buckets/alice/copy-dst/resolve/copied/a.bin", token=ALICE_W)
        self.assertStatus(got, 200)
        self.assertEqual(got.body, input_of("multi/a.bin"))
        # From her own private bucket.
        p = file_of("random_102400_seed1.bin")
        r = batch("alice/copy-dst", [{"type": "copyFile", "path": "copied/p.bin", "xetHash": p["xet_hash"],
                                      "sourceRepoType": "bucket", "sourceRepoId": PRIVATE_BUCKET}])
        self.assertStatus(r, 200)
        # The destination may now reconstruct the copied file.
        cas = xet_token("alice/copy-dst", ALICE_W, write=False)
        self.assertStatus(request("GET", f"/v2/reconstructions/{a['xet_hash']}", token=cas), 200)

    def test_copy_file_refused_when_source_unreadable(self):
        create_bucket("alice/copy-dst2")
        before = self.state("alice/copy-dst2")
        hidden = file_of("one_byte_seed1.bin")
        for source, xet_hash in ((BOB_PRIVATE, hidden["xet_hash"]),  # private to Bob
                                 ("bob/does-not-exist", hidden["xet_hash"]),
                                 (BOB_PUBLIC, file_of("random_102400_seed1.bin")["xet_hash"])):  # not in source
            r = batch("alice/copy-dst2", [add_line("ok.bin", ZERO_HASH),
                                          {"type": "copyFile", "path": "stolen.bin", "xetHash": xet_hash,
                                           "sourceRepoType": "bucket", "sourceRepoId": source}])
            self.assertStatus(r, 422, source)
            self.assertEqual([f["path"] for f in r.json()["failed"]], ["stolen.bin"])
        r = batch("alice/copy-dst2", [{"type": "copyFile", "path": "m.bin", "xetHash": hidden["xet_hash"],
                                       "sourceRepoType": "model", "sourceRepoId": "bob/model"}])
        self.assertStatus(r, 422)
        self.assertEqual(self.state("alice/copy-dst2"), before)
        cas = xet_token("alice/copy-dst2", ALICE_W, write=False)
        self.assertStatus(request("GET", f"/v2/reconstructions/{hidden['xet_hash']}", token=cas), 404)


# ---- Hub: tree and paths-info -----------------------------------------------------------------------

class TreeTest(ApiTestCase):
    PATHS = ["a.txt", "dir/b.txt", "dir/sub/c.txt", "dir/sub/deeper/d.txt", "dir-x.txt", "dir.txt", "dir0",
             "z/y", "sp ace/f#1", "sp ace/g?2", "q%3F/r"]

    @classmethod
    def setUpClass(cls):
        create_bucket("alice/listing")
        upload_case("alice/listing", "one_byte_seed1", add=False)
        cls.h = file_of("one_byte_seed1.bin")["xet_hash"]
        r = batch("alice/listing", [add_line(p, cls.h, mtime=1700000000123) for p in cls.PATHS])
        assert r.status == 200, r
        # A bucket whose id extends this one's must not leak into its listings.
        create_bucket("alice/listing-more")
        upload_case("alice/listing-more", "one_byte_seed1", add=False)
        r = batch("alice/listing-more", [add_line(p, cls.h) for p in ("a.txt", "dir/leak.txt", "zz")])
        assert r.status == 200, r

    def test_default_is_recursive_files_only(self):
        r = tree("alice/listing")
        self.assertStatus(r, 200)
        entries = r.json()
        self.assertEqual(sorted(e["path"] for e in entries), sorted(self.PATHS))
        for e in entries:
            self.assertEqual(e["type"], "file")
            self.assertEqual(e["size"], 1)
            self.assertEqual(e["xetHash"], self.h)
            self.assertEqual(e["mtime"], "2023-11-14T22:13:20.123Z")
            self.assertRegex(e["uploadedAt"], ISO_MS_Z)
        self.assertEqual(tree("alice/listing", query="recursive=true").json(), entries)
        # Anonymous listing of a public bucket; JS's expand parameter is ignored.
        self.assertEqual(tree("alice/listing", query="recursive=true&expand=false", token=None).json(), entries)

    def test_non_recursive_gives_directory_entries(self):
        entries = tree("alice/listing", query="recursive=false").json()
        got = [(e["type"], e["path"]) for e in entries]
        self.assertEqual(sorted(got), sorted([("file", "a.txt"), ("directory", "dir"), ("file", "dir-x.txt"),
                                              ("file", "dir.txt"), ("file", "dir0"), ("directory", "z"),
                                              ("directory", "sp ace"), ("directory", "q%3F")]))
        sub = tree("alice/listing", "dir", "recursive=false").json()
        self.assertEqual(sorted((e["type"], e["path"]) for e in sub),
                         [("directory", "dir/sub"), ("file", "dir/b.txt")])
        for e in entries:
            self.assertFalse(e["path"].endswith("/"))
            if e["type"] == "directory":
                self.assertNotIn("xetHash", e)

    def test_prefix_raw_and_percent_encoded(self):
        expected = ["dir/sub/c.txt", "dir/sub/deeper/d.txt"]
        for prefix in ("dir/sub", "dir%2Fsub", "dir%2fsub", "dir/sub/", "dir%2Fsub%2F"):
            r = tree("alice/listing", prefix)
            self.assertStatus(r, 200, prefix)
            self.assertEqual(sorted(e["path"] for e in r.json()), expected, prefix)
        self.assertEqual([e["path"] for e in tree("alice/listing", q("sp ace")).json()], ["sp ace/f#1", "sp ace/g?2"])
        self.assertEqual([e["path"] for e in tree("alice/listing", q("q%3F")).json()], ["q%3F/r"])
        # Path-component prefix: `dir` does not list dir-x.txt or dir.txt, only dir/...
        paths = [e["path"] for e in tree("alice/listing", "dir").json()]
        self.assertEqual(sorted(paths), ["dir/b.txt", "dir/sub/c.txt", "dir/sub/deeper/d.txt"])
        # A prefix equal to a file gives that file.
        self.assertEqual([e["path"] for e in tree("alice/listing", "dir.txt").json()], ["dir.txt"])

    def test_no_match_is_empty_array(self):
        for prefix in ("nothing", "dir/nothing", "di", "a.tx"):
            r = tree("alice/listing", prefix)
            self.assertStatus(r, 200)
            self.assertEqual(r.json(), [], prefix)
            self.assertIsNone(r.header("Link"))

    def follow(self, first_url, token=ALICE_W):
        pages, url, seen = 0, first_url, []
        while url:
            r = request("GET", url, token=token)
            self.assertStatus(r, 200)
            seen += r.json()
            pages += 1
            link = r.header("Link")
            url = None
            if link:
                found = dict((rel, u) for u, rel in JS_LINK.findall(link))
                self.assertIn("next", found, link)
                url = found["next"]
                self.assertTrue(url.startswith(MAIN.base + "/api/buckets/alice/listing/tree"), url)
            self.assertLess(pages, 100)
        return seen, pages

    def test_limit_and_link_next_to_the_end(self):
        for limit in (1, 2, 3, len(self.PATHS) - 1):
            seen, pages = self.follow(f"/api/buckets/alice/listing/tree?limit={limit}")
            paths = [e["path"] for e in seen]
            self.assertEqual(sorted(paths), sorted(self.PATHS), limit)
            self.assertEqual(len(paths), len(set(paths)))
            self.assertEqual(pages, -(-len(self.PATHS) // limit), limit)
        # Exactly one page when everything fits: no Link.
        r = tree("alice/listing", query=f"limit={len(self.PATHS)}")
        self.assertIsNone(r.header("Link"))
        # With a prefix and non-recursive, every entry once, parameters kept in the next URL.
        seen, _ = self.follow("/api/buckets/alice/listing/tree/dir%2Fsub?recursive=false&limit=1")
        self.assertEqual(sorted((e["type"], e["path"]) for e in seen),
                         [("directory", "dir/sub/deeper"), ("file", "dir/sub/c.txt")])
        seen, _ = self.follow("/api/buckets/alice/listing/tree?recursive=false&limit=2")
        self.assertEqual(len(seen), 8)
        self.assertEqual(len({e["path"] for e in seen}), 8)
        seen, _ = self.follow("/api/buckets/alice/listing/tree/dir?limit=1")
        self.assertEqual(sorted(e["path"] for e in seen), ["dir/b.txt", "dir/sub/c.txt", "dir/sub/deeper/d.txt"])
        seen, pages = self.follow("/api/buckets/alice/listing/tree/" + q("sp ace") + "?limit=1")
        self.assertEqual([e["path"] for e in seen], ["sp ace/f#1", "sp ace/g?2"])
        self.assertEqual(pages, 2)

    def test_bad_limit_and_cursor_are_400(self):
        for query in ("limit=0", "limit=abc", "limit=-1", "cursor=zzz"):
            self.assertStatus(tree("alice/listing", query=query), 400, query)

    def test_tree_refusals(self):
        self.assertNotFound(tree("alice/no-such-bucket"))
        self.assertStatus(tree(PRIVATE_BUCKET, token=None), 401)
        self.assertNotFound(tree(PRIVATE_BUCKET, token=BOB_W))
        self.assertStatus(request("POST", "/api/buckets/alice/listing/tree/tree", token=ALICE_W), 405)


class PathsInfoTest(ApiTestCase):
    def test_missing_omitted_directories_never(self):
        r = paths_info(DATA_BUCKET, ["multi/a.bin", "multi", "multi/sub dir", "missing.bin", "multi/c.txt",
                                     "multi/sub dir/b.bin", "multi/", ""])
        self.assertStatus(r, 200)
        entries = r.json()
        self.assertEqual(sorted(e["path"] for e in entries), ["multi/a.bin", "multi/c.txt", "multi/sub dir/b.bin"])
        for e in entries:
            f = file_of(e["path"])
            self.assertEqual(e["type"], "file")
            self.assertEqual(e["size"], f["size"])
            self.assertEqual(e["xetHash"], f["xet_hash"])
            self.assertRegex(e["mtime"], ISO_Z)
            self.assertRegex(e["uploadedAt"], ISO_Z)
        self.assertEqual(paths_info(DATA_BUCKET, []).json(), [])
        # JS's expand flag is accepted.
        r = request("POST", f"/api/buckets/{DATA_BUCKET}/paths-info", {"paths": ["multi/a.bin"], "expand": True},
                    token=None)
        self.assertStatus(r, 200)
        self.assertEqual(len(r.json()), 1)

    def test_body_over_the_json_limit_is_413(self):
        body = json.dumps({"paths": ["p" * 1000] * 1100})  # about 1.1 MB
        r = request("POST", f"/api/buckets/{DATA_BUCKET}/paths-info", body, token=ALICE_W,
                    headers={"Content-Type": "application/json"})
        self.assertStatus(r, 413)

    def test_bad_bodies_are_400(self):
        for body in ["", "nope", "[]", '{"paths": "multi/a.bin"}', '{"paths": [1]}', '{"other": []}']:
            r = request("POST", f"/api/buckets/{DATA_BUCKET}/paths-info", body, token=ALICE_W,
                        headers={"Content-Type": "application/json"})
            self.assertStatus(r, 400, body)
        self.assertStatus(request("GET", f"/api/buckets/{DATA_BUCKET}/paths-info", token=ALICE_W), 405)


# ---- Hub: resolve -----------------------------------------------------------------------------------

class ResolveTest(ApiTestCase):
    def check_headers(self, r, f, bucket=DATA_BUCKET):
        self.assertEqual(r.header("X-Xet-Hash"), f["xet_hash"])
        self.assertEqual(r.header("X-Linked-Size"), str(f["size"]))
        self.assertEqual(r.header("ETag"), '"' + f["xet_hash"] + '"')
        self.assertTrue(r.header("X-Linked-ETag"))
        links = dict((rel, url) for url, rel in JS_LINK.findall(r.header("Link") or ""))
        self.assertEqual(links.get("xet-auth"), f"{MAIN.base}/api/buckets/{bucket}/xet-read-token")
        self.assertEqual(links.get("xet-reconstruction-info"), f"{MAIN.base}/v1/reconstructions/{f['xet_hash']}")
        self.assertRegex(r.header("Last-Modified") or "", r"^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$")

    def test_head_and_get_headers_and_bytes(self):
        for name in ("random_1000000_seed0.bin", "const59_1000000.bin", "multi/sub dir/b.bin", "one_byte_seed1.bin"):
            f = file_of(name)
            for path in (urllib.parse.quote(name), q(name)):
                head = request("HEAD", f"/buckets/{DATA_BUCKET}/resolve/{path}", token=ALICE_W)
                self.assertStatus(head, 200)
                self.check_headers(head, f)
                self.assertEqual(head.header("Content-Length"), str(f["size"]))
                self.assertEqual(head.body, b"")
            got = request("GET", f"/buckets/{DATA_BUCKET}/resolve/{urllib.parse.quote(name)}", token=None)
            self.assertStatus(got, 200)
            self.check_headers(got, f)
            self.assertEqual(got.header("Content-Length"), str(f["size"]))
            self.assertEqual(got.header("Content-Type"), "application/octet-stream")
            self.assertEqual(got.body, input_of(name), name)
        # The Link targets work: xet-auth gives a read token that reconstructs through the link.
        head = request("HEAD", f"/buckets/{DATA_BUCKET}/resolve/dedup_edited.bin")
        links = dict((rel, url) for url, rel in JS_LINK.findall(head.header("Link")))
        token = request("GET", links["xet-auth"]).json()["accessToken"]
        recon = request("GET", links["xet-reconstruction-info"], token=token)
        self.assertStatus(recon, 200)
        v2 = request("GET", links["xet-reconstruction-info"].replace("/v1/", "/v2/"), token=token)
        self.assertEqual(reconstruct(v2.json()), input_of("dedup_edited.bin"))

    def test_range_is_206_with_exact_bytes(self):
        name = "dedup_edited.bin"
        data = input_of(name)
        path = f"/buckets/{DATA_BUCKET}/resolve/{name}"
        for first, last in ((0, 0), (1, 100), (299995, 450005), (len(data) - 1, len(data) - 1)):
            r = request("GET", path, headers={"Range": f"bytes={first}-{last}"})
            self.assertStatus(r, 206)
            self.assertEqual(r.body, data[first:last + 1], (first, last))
            self.assertEqual(r.header("Content-Range"), f"bytes {first}-{last}/{len(data)}")
        r = request("GET", path, headers={"Range": "bytes=599000-"})
        self.assertStatus(r, 206)
        self.assertEqual(r.body, data[599000:])
        r = request("GET", path, headers={"Range": f"bytes=600000-{len(data) + 500}"})  # end clipped
        self.assertStatus(r, 206)
        self.assertEqual(r.body, data[600000:])
        # LZ4 and byte-grouped chunks decoded by the server, at an offset.
        const = input_of("const59_1000000.bin")
        r = request("GET", f"/buckets/{DATA_BUCKET}/resolve/const59_1000000.bin", headers={"Range": "bytes=5-999998"})
        self.assertStatus(r, 206)
        self.assertEqual(r.body, const[5:999999])

    def test_range_past_end_is_416(self):
        f = file_of("random_102400_seed1.bin")
        path = f"/buckets/{DATA_BUCKET}/resolve/{f['path']}"
        r = request("GET", path, headers={"Range": f"bytes={f['size']}-{f['size'] + 1}"})
        self.assertStatus(r, 416)
        self.assertEqual(r.header("Content-Range"), f"bytes */{f['size']}")
        self.assertStatus(request("GET", path, headers={"Range": "bytes=9999999-"}), 416)
        self.assertStatus(request("GET", path, headers={"Range": "bytes=5-2"}), 416)
        self.assertStatus(request("GET", path, headers={"Range": "lines=1-2"}), 416)

    def test_missing_is_404_entry_not_found(self):
        for method in ("GET", "HEAD"):
            r = request(method, f"/buckets/{DATA_BUCKET}/resolve/no/such/file.bin", token=ALICE_W)
            self.assertNotFound(r, "EntryNotFound")
            r = request(method, f"/buckets/{DATA_BUCKET}/resolve/multi", token=ALICE_W)  # a directory
            self.assertNotFound(r, "EntryNotFound")
            r = request(method, "/buckets/alice/no-such-bucket/resolve/x.bin", token=ALICE_W)
            self.assertNotFound(r, "RepoNotFound")
        self.assertStatus(request("GET", f"/buckets/{PRIVATE_BUCKET}/resolve/random_102400_seed1.bin"), 401)
        self.assertNotFound(request("GET", f"/buckets/{PRIVATE_BUCKET}/resolve/random_102400_seed1.bin",
                                    token=BOB_R))
        self.assertStatus(request("PUT", f"/buckets/{DATA_BUCKET}/resolve/x.bin", "x", token=ALICE_W), 405)

    def test_xet_fileinfo_content_negotiation(self):
        f = file_of("random_1000000_seed0.bin")
        r = request("GET", f"/buckets/{DATA_BUCKET}/resolve/{f['path']}",
                    headers={"Range": "bytes=0-0", "Accept": "application/vnd.xet-fileinfo+json, */*"})
        self.assertStatus(r, 200)
        self.assertTrue(r.header("Content-Type").startswith("application/vnd.xet-fileinfo+json"))
        self.check_headers(r, f)
        self.assertLess(len(r.body), 10000)  # not the file bytes
        json.loads(r.body)

    def test_api_prefixed_resolve_alias(self):
        f = file_of("one_byte_seed1.bin")
        r = request("GET", f"/api/buckets/{DATA_BUCKET}/resolve/{f['path']}")
        self.assertStatus(r, 200)
        self.assertEqual(r.body, input_of(f["path"]))


# ---- metrics, unknown routes, methods ---------------------------------------------------------------

class MetricsAndErrorsTest(ApiTestCase):
    def test_metrics_names_and_request_counts(self):
        r = request("GET", "/metrics")
        self.assertStatus(r, 200)
        self.assertTrue(r.header("Content-Type").startswith("text/plain"))
        text = r.body.decode()
        for name in ("bucketfs_xorb_bytes_received_total", "bucketfs_xorb_bytes_stored",
                     "bucketfs_file_bytes_committed_total", "bucketfs_http_requests_total"):
            self.assertRegex(text, rf"(?m)^{name}[ {{]")
        before = metrics()
        for _ in range(3):
            bucket_info("alice/metrics-none")
        bucket_info(DATA_BUCKET)
        tree(DATA_BUCKET)
        after = metrics()
        self.assertEqual(request_count(after, "hub_bucket", 404) - request_count(before, "hub_bucket", 404), 3)
        self.assertEqual(request_count(after, "hub_bucket", 200) - request_count(before, "hub_bucket", 200), 1)
        self.assertEqual(request_count(after, "hub_tree", 200) - request_count(before, "hub_tree", 200), 1)

    def test_counters_move_with_uploads_and_commits(self):
        create_bucket("alice/metrics")
        case = CASES["multi_file"]  # its xorbs are already stored: received moves, stored does not
        before = metrics()
        upload_case("alice/metrics", "multi_file")
        after = metrics()
        xorb_bytes = sum(len(read_data(x["file"])) for x in case["xorbs_uploaded"])
        self.assertEqual(after["bucketfs_xorb_bytes_received_total"] - before["bucketfs_xorb_bytes_received_total"],
                         xorb_bytes)
        self.assertEqual(after["bucketfs_xorb_bytes_stored"], before["bucketfs_xorb_bytes_stored"])
        self.assertEqual(after["bucketfs_file_bytes_committed_total"] - before["bucketfs_file_bytes_committed_total"],
                         sum(f["size"] for f in case["files"]))
        self.assertEqual(request_count(after, "cas_xorb", 200) - request_count(before, "cas_xorb", 200),
                         len(case["xorbs_uploaded"]))
        self.assertEqual(request_count(after, "cas_shard", 200) - request_count(before, "cas_shard", 200),
                         len(case["shards"]))
        self.assertEqual(request_count(after, "hub_batch", 200) - request_count(before, "hub_batch", 200), 1)
        # Refusals decided before the body (auth) are counted too.
        upload_xorb(CASES["one_byte_seed1"]["xorbs_uploaded"][0]["hash"], None)
        self.assertEqual(request_count(metrics(), "cas_xorb", 401) - request_count(after, "cas_xorb", 401), 1)

    def test_unknown_routes_are_404_json(self):
        for method, path in (("GET", "/nope"), ("GET", "/api/nope"), ("GET", "/v1/nope"), ("GET", "/v3/xorbs"),
                             ("GET", f"/api/buckets/{DATA_BUCKET}/unknown-op"), ("GET", "/"),
                             ("GET", "/v1/xorbs/default"), ("GET", f"/buckets/{DATA_BUCKET}/tree")):
            r = request(method, path, token=ALICE_W if path.startswith("/api") else None)
            self.assertStatus(r, 404, path)
            self.assertIn("error", r.json())

    def test_wrong_method_is_405(self):
        for method, path in (("PUT", f"/api/buckets/{DATA_BUCKET}"), ("PATCH", f"/api/buckets/{DATA_BUCKET}"),
                             ("DELETE", "/metrics"), ("POST", "/metrics"), ("GET", "/v1/shards"),
                             ("GET", f"/api/buckets/{DATA_BUCKET}/batch"),
                             ("POST", f"/api/buckets/{DATA_BUCKET}/xet-read-token"),
                             ("DELETE", f"/v1/xorbs/default/{UNKNOWN_HASH}"),
                             ("PUT", f"/v1/chunks/default/{UNKNOWN_HASH}"),
                             ("GET", "/v1/reconstructions"), ("POST", f"/xorb-data/{UNKNOWN_HASH}"),
                             ("POST", "/api/whoami-v2"), ("GET", "/api/repos/move")):
            r = request(method, path, token=ALICE_W)
            self.assertStatus(r, 405, f"{method} {path}")
            self.assertIn("error", r.json())

    def test_bad_percent_encoding_is_400(self):
        self.assertStatus(request("GET", f"/buckets/{DATA_BUCKET}/resolve/bad%zz"), 400)
        self.assertStatus(request("GET", f"/api/buckets/{DATA_BUCKET}/tree?limit=%zz"), 400)


# ---- expiry (second server, --token-lifetime 2) -----------------------------------------------------

class ExpiryTest(ApiTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("expiry", ["--token-lifetime", "2"])
        cls.addClassCleanup(cls.server.cleanup)
        cls.server.start()

    def test_cas_token_and_signed_url_expire(self):
        s = self.server
        create_bucket("alice/exp", server=s)
        case = CASES["one_byte_seed1"]
        f = case["files"][0]
        r = request("GET", "/api/buckets/alice/exp/xet-write-token", token=ALICE_W, server=s)
        body = r.json()
        self.assertLessEqual(body["exp"], time.time() + 2.5)
        self.assertEqual(body["casUrl"], s.base)
        cas = body["accessToken"]
        xorb = case["xorbs_uploaded"][0]["hash"]
        self.assertStatus(upload_xorb(xorb, cas, server=s), 200)
        self.assertStatus(upload_shard(case["shards"][0], cas, server=s), 200)
        self.assertStatus(batch("alice/exp", [add_line(f["path"], f["xet_hash"])], server=s), 200)
        recon = request("GET", f"/v2/reconstructions/{f['xet_hash']}", token=cas, server=s)
        self.assertStatus(recon, 200)
        entry = next(iter(recon.json()["xorbs"].values()))[0]
        rng = entry["ranges"][0]["bytes"]
        self.assertStatus(request("GET", entry["url"], headers={"Range": f"bytes={rng['start']}-{rng['end']}"}), 206)
        # A token of the main server is forged for this one.
        self.assertStatus(upload_xorb(xorb, xet_token(DATA_BUCKET, ALICE_W), server=s), 401)
        time.sleep(max(0.0, body["exp"] - time.time()) + 1.1)
        self.assertStatus(upload_xorb(xorb, cas, server=s), 401)
        self.assertStatus(upload_shard(case["shards"][0], cas, server=s), 401)
        self.assertStatus(request("GET", f"/v2/reconstructions/{f['xet_hash']}", token=cas, server=s), 401)
        self.assertStatus(request("GET", f"/v1/chunks/default/{UNKNOWN_HASH}", token=cas, server=s), 401)
        self.assertStatus(request("HEAD", f"/v1/files/{f['xet_hash']}", token=cas, server=s), 401)
        self.assertStatus(request("GET", entry["url"], headers={"Range": f"bytes={rng['start']}-{rng['end']}"}), 403)
        # A fresh token and a fresh reconstruction work again.
        fresh = xet_token("alice/exp", ALICE_R, write=False, server=s)
        recon = request("GET", f"/v2/reconstructions/{f['xet_hash']}", token=fresh, server=s)
        self.assertStatus(recon, 200)
        self.assertEqual(reconstruct(recon.json(), server=s), input_of(f["path"]))
        self.assertTrue(s.alive())


# ---- concurrency ---------------------------------------------------------------------------------

class ConcurrencyTest(ApiTestCase):
    def test_parallel_clients_get_correct_answers(self):
        import threading
        create_bucket("alice/parallel")
        cas = xet_token("alice/parallel", ALICE_W)
        case = CASES["random_102400_seed1"]
        data = input_of("dedup_edited.bin")
        problems = []

        def worker(n):
            try:
                for k in range(6):
                    first = (n * 7919 + k * 104729) % (len(data) - 5000)
                    r = request("GET", f"/buckets/{DATA_BUCKET}/resolve/dedup_edited.bin",
                                headers={"Range": f"bytes={first}-{first + 4999}"})
                    if r.status != 206 or r.body != data[first:first + 5000]:
                        problems.append(("resolve", n, k, r.status))
                    r = upload_xorb(case["xorbs_uploaded"][0]["hash"], cas)
                    if r.status != 200:
                        problems.append(("xorb", n, k, r.status))
                    r = batch("alice/parallel", [add_line(f"t{n}/f{k}", ZERO_HASH)])
                    if r.status != 200:
                        problems.append(("batch", n, k, r.status))
                    r = bucket_info("alice/never-there")
                    if r.status != 404:
                        problems.append(("info", n, k, r.status))
            except Exception as error:  # noqa: BLE001 - reported below
                problems.append(("exception", n, repr(error)))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(problems, [])
        info = bucket_info("alice/parallel").json()
        self.assertEqual(info["totalFiles"], 8 * 6)
        seen, url = [], "/api/buckets/alice/parallel/tree?limit=7"
        while url:
            r = request("GET", url, token=ALICE_W)
            seen += [e["path"] for e in r.json()]
            links = JS_LINK.findall(r.header("Link") or "")
            url = links[0][0] if links else None
        self.assertEqual(sorted(seen), sorted(f"t{n}/f{k}" for n in range(8) for k in range(6)))


# ---- last: the server survived everything -----------------------------------------------------------

class ZzServerStillUpTest(ApiTestCase):
    def test_server_still_up_and_serving(self):
        self.assertTrue(MAIN.alive(), MAIN.log_text())
        r = bucket_info(DATA_BUCKET)
        self.assertStatus(r, 200)
        got = request("GET", f"/buckets/{DATA_BUCKET}/resolve/random_102400_seed1.bin")
        self.assertEqual(got.body, input_of("random_102400_seed1.bin"))
        # Many refusals went through the JSON `error` check of request().
        self.assertGreater(CHECKED_4XX[0], 100)


# ---- runner -----------------------------------------------------------------------------------------

class CountingResult(unittest.TextTestResult):
    pass


def main():
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=CountingResult)
    result = runner.run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - len(result.failures) - len(result.errors) - len(result.skipped) \
        - len(result.unexpectedSuccesses)
    passed = max(passed, 0)
    sys.stdout.flush()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
