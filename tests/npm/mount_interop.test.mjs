// A real `bucketfs mount` and the npm client @huggingface/hub against the same bucketfs-server:
// files written through the mount (0, 1, 8191, 8192, 64 KiB, 10 MiB, 70 MiB) download byte for byte
// with the npm client, and so does a partial range copied inside the mount (composed from stored
// chunks); files the npm client uploads (and overwrites) appear in the mount after the
// metadata TTL with identical bytes; and the xet hash the mount commits (user.xet.hash) equals the
// npm client's for the same content where the chunkers agree (and xet-core's where they do not).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, openSync, writeSync, fsyncSync, closeSync,
  readdirSync, statSync, existsSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRepo, uploadFiles, downloadFile, pathsInfo } from "@huggingface/hub";
import { getChunks, fileHash, hashToHex } from "@huggingface/xetchunk-wasm";
import { makeDataDir, startServer, removeDir, randomBytes, TOKENS } from "../support/server_process.mjs";

const TTL_SECONDS = 1;
const dir = makeDataDir();
const work = mkdtempSync(join(tmpdir(), "bucketfs-mount-interop-"));
const mnt = join(work, "mnt");
mkdirSync(mnt);
const env = { ...process.env, BUCKETFS_RUNTIME_DIR: join(work, "run") };
delete env.HF_TOKEN;
const server = await startServer(dir);
writeFileSync(join(work, "token"), TOKENS.alice_write + "\n", { mode: 0o600 });

function mounted() {
  return readFileSync("/proc/self/mountinfo", "utf8").split("\n").some((line) => line.split(" ")[4] === mnt);
}

function bucketfs(...args) {
  return spawnSync(process.env.BUCKETFS_BINARY, args, { encoding: "utf8", env, timeout: 300_000 });
}

async function cleanup() {
  if (mounted()) bucketfs("unmount", "--timeout", "60", mnt);
  if (mounted()) spawnSync("fusermount3", ["-u", "-z", "-q", mnt]);
  await server.stop();
  removeDir(dir);
  rmSync(work, { recursive: true, force: true });
}
after(cleanup);

const repo = { type: "bucket", name: "alice/mnt" };
const auth = { hubUrl: server.url, accessToken: TOKENS.alice_write };
try {
  await createRepo({ repo, ...auth });
  const mountResult = bucketfs("mount", "--endpoint", server.url, "--token-file", join(work, "token"), "--cache-dir",
    join(work, "cache"), "--metadata-ttl", String(TTL_SECONDS), "alice/mnt", mnt);
  assert.equal(mountResult.status, 0, `mount failed: ${mountResult.stderr}`);
  assert.ok(mounted(), "not mounted after bucketfs mount returned");
} catch (error) {
  await cleanup();  // the after() hook may not run when the file fails before its first test
  throw error;
}

function splitmix(seed, n) {
  const out = new Uint8Array(n);
  const M = (1n << 64n) - 1n;
  let s = BigInt(seed) & M;
  for (let i = 0; i < n; i += 8) {
    s = (s + 0x9e3779b97f4a7c15n) & M;
    let z = s;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
    z = z ^ (z >> 31n);
    for (let b = 0; b < 8 && i + b < n; b++) out[i + b] = Number((z >> BigInt(8 * b)) & 0xffn);
  }
  return out;
}

// Writes `data` through the mount in 1 MiB writes and fsyncs: committed when this returns.
function writeThroughMount(path, data) {
  const fd = openSync(path, "w");
  try {
    for (let at = 0; at < data.length;) at += writeSync(fd, data, at, Math.min(1 << 20, data.length - at));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function sameBytes(a, b) {
  return a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.length),
    Buffer.from(b.buffer, b.byteOffset, b.length)) === 0;
}

function xattr(path, name) {
  const result = spawnSync("getfattr", ["--only-values", "-n", name, path], { encoding: "utf8" });
  assert.equal(result.status, 0, `getfattr ${name} ${path}: ${result.stderr}`);
  return result.stdout;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const SIZES = [0, 1, 8191, 8192, 65536, 10 * 1024 * 1024, 70 * 1024 * 1024];

test("files written through the mount download byte-identical with the npm client", async () => {
  mkdirSync(join(mnt, "from-mount"));
  for (const size of SIZES) {
    const data = randomBytes(size, 3000 + size);
    writeThroughMount(join(mnt, "from-mount", `${size}.bin`), data);
    assert.equal(statSync(join(mnt, "from-mount", `${size}.bin`)).size, size);
    const blob = await downloadFile({ repo, path: `from-mount/${size}.bin`, ...auth });
    assert.ok(blob, `npm cannot see from-mount/${size}.bin`);
    const got = new Uint8Array(await blob.arrayBuffer());
    assert.equal(got.length, size);
    assert.ok(sameBytes(got, data), `bytes differ for size ${size}`);
  }
  const info = await pathsInfo({ repo, paths: SIZES.map((s) => `from-mount/${s}.bin`), expand: false, ...auth });
  assert.deepEqual(info.map((i) => i.size).sort((a, b) => a - b), [...SIZES].sort((a, b) => a - b));
});

test("a partial range copied inside the mount (stored chunks + re-uploaded edges) downloads with the npm client", async () => {
  // os.copy_file_range of bytes [1 MiB + 12345, +5 MiB) of a committed file: the mount composes
  // the new file from the source's chunks and its two cut edge chunks.
  const source = join(mnt, "from-mount", `${10 * 1024 * 1024}.bin`);
  const start = (1 << 20) + 12345;
  const count = 5 * (1 << 20);
  const copy = spawnSync("python3", ["-c", `
import os, sys
with open(sys.argv[1], "rb") as src:
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    print(os.copy_file_range(src.fileno(), fd, int(sys.argv[4]), int(sys.argv[3]), 0))
    os.close(fd)
`, source, join(mnt, "range-copy.bin"), String(start), String(count)], { encoding: "utf8" });
  assert.equal(copy.status, 0, copy.stderr);
  assert.equal(Number(copy.stdout.trim()), count);
  const expected = randomBytes(10 * 1024 * 1024, 3000 + 10 * 1024 * 1024).subarray(start, start + count);
  const blob = await downloadFile({ repo, path: "range-copy.bin", ...auth });
  assert.ok(blob, "npm cannot see range-copy.bin");
  const got = new Uint8Array(await blob.arrayBuffer());
  assert.ok(sameBytes(got, expected), "range copy bytes differ");
  const [entry] = await pathsInfo({ repo, paths: ["range-copy.bin"], expand: false, ...auth });
  assert.equal(xattr(join(mnt, "range-copy.bin"), "user.xet.hash"), entry.xetHash);
});

test("files the npm client uploads appear in the mount after the metadata TTL", async () => {
  // The mount lists the root first, so it has a cached listing to expire.
  assert.ok(!readdirSync(mnt).includes("from-npm"));
  assert.ok(!existsSync(join(mnt, "from-npm")));
  const files = SIZES.map((size) => ({ path: `from-npm/${size}.bin`, content: new Blob([randomBytes(size, 4000 + size)]) }));
  await uploadFiles({ repo, files, ...auth });
  await sleep(TTL_SECONDS * 1000 + 500);
  assert.deepEqual(readdirSync(join(mnt, "from-npm")).sort(), SIZES.map((s) => `${s}.bin`).sort());
  for (const size of SIZES) {
    const path = join(mnt, "from-npm", `${size}.bin`);
    assert.equal(statSync(path).size, size);
    assert.ok(sameBytes(readFileSync(path), randomBytes(size, 4000 + size)), `bytes differ for size ${size}`);
  }
});

test("a file the npm client overwrites reads back new in the mount (no stale pages)", async () => {
  const path = join(mnt, "from-mount", "65536.bin");
  assert.ok(sameBytes(readFileSync(path), randomBytes(65536, 3000 + 65536)));  // in the page cache now
  const same = randomBytes(65536, 5000);  // same size, new bytes
  const grown = randomBytes(3 * 1024 * 1024, 5001);
  await uploadFiles({ repo, files: [
    { path: "from-mount/65536.bin", content: new Blob([same]) },
    { path: "from-mount/8192.bin", content: new Blob([grown]) },
  ], ...auth });
  await sleep(TTL_SECONDS * 1000 + 500);
  assert.ok(sameBytes(readFileSync(path), same), "stale bytes after an overwrite of the same size");
  assert.equal(statSync(join(mnt, "from-mount", "8192.bin")).size, grown.length);
  assert.ok(sameBytes(readFileSync(join(mnt, "from-mount", "8192.bin")), grown), "stale bytes after a grow");
});

// The npm chunker (xetchunk-wasm) can cut chunks below 8 KiB, xet-core cannot (docs/NOTES.md):
// the chunk lengths `bucketfs xet chunks` prints for a file, to know where the chunkers agree.
function cliChunks(path) {
  const result = spawnSync(process.env.BUCKETFS_BINARY, ["xet", "chunks", path], { encoding: "utf8" });
  assert.equal(result.status, 0, result.stderr);
  const lines = result.stdout.trim().split("\n");
  return { lengths: lines.slice(0, -1).map((l) => Number(l.split(" ")[0])), hash: lines.at(-1).split(" ")[1] };
}

test("the mount commits the same xet hash as the npm client where the chunkers agree", async () => {
  // splitmix(0, 1000000) is cut identically by xet-core and the npm chunker (xet vectors).
  const vector = splitmix(0, 1_000_000);
  // Random files over 1 MiB: the first seed whose npm chunking agrees with ours, and one where it
  // does not (there the mount must still commit what xet-core computes).
  const SIZE = 3 * 1024 * 1024 + 12345;
  let agree = null;
  let disagree = null;
  for (let seed = 77; seed < 120 && !(agree && disagree); seed++) {
    const data = randomBytes(SIZE, seed);
    const npm = getChunks(data).map((c) => c.length);
    writeFileSync(join(work, "probe.bin"), data);
    const ours = cliChunks(join(work, "probe.bin"));
    const same = npm.length === ours.lengths.length && npm.every((n, i) => n === ours.lengths[i]);
    if (same && !agree) agree = { data, hash: ours.hash };
    if (!same && !disagree) disagree = { data, hash: ours.hash, npm: hashToHex(fileHash(getChunks(data))) };
  }
  assert.ok(agree && disagree, "no random input where the chunkers agree (or disagree)");
  writeThroughMount(join(mnt, "agree-mount.bin"), vector);
  writeThroughMount(join(mnt, "random-mount.bin"), agree.data);
  writeThroughMount(join(mnt, "differ-mount.bin"), disagree.data);
  await uploadFiles({ repo, files: [
    { path: "agree-npm.bin", content: new Blob([vector]) },
    { path: "random-npm.bin", content: new Blob([agree.data]) },
    { path: "differ-npm.bin", content: new Blob([disagree.data]) },
  ], ...auth });
  const names = ["agree", "random", "differ"].flatMap((n) => [`${n}-mount.bin`, `${n}-npm.bin`]);
  const info = await pathsInfo({ repo, paths: names, expand: false, ...auth });
  const byPath = Object.fromEntries(info.map((i) => [i.path, i]));
  const mountHash = xattr(join(mnt, "agree-mount.bin"), "user.xet.hash");
  assert.equal(mountHash, "3d17b2d7d64a0e011b6717a52d9a16bd2c3f05b743fa8adf52a7d75dafab6d89");
  assert.equal(mountHash, byPath["agree-mount.bin"].xetHash, "xattr and the bucket disagree");
  assert.equal(mountHash, byPath["agree-npm.bin"].xetHash, "the npm client committed another hash");
  assert.equal(xattr(join(mnt, "agree-mount.bin"), "user.xet.size"), "1000000");
  const randomHash = xattr(join(mnt, "random-mount.bin"), "user.xet.hash");
  assert.equal(randomHash, agree.hash);
  assert.equal(randomHash, byPath["random-mount.bin"].xetHash);
  assert.equal(randomHash, byPath["random-npm.bin"].xetHash, "the npm client committed another hash");
  // Where the chunkers differ: the mount commits xet-core's hash, the npm client its own.
  assert.equal(xattr(join(mnt, "differ-mount.bin"), "user.xet.hash"), disagree.hash);
  assert.equal(byPath["differ-npm.bin"].xetHash, disagree.npm);
  // What the npm client uploaded reads back identical through the mount, with its hash.
  await sleep(TTL_SECONDS * 1000 + 500);
  assert.ok(sameBytes(readFileSync(join(mnt, "random-npm.bin")), agree.data));
  assert.equal(xattr(join(mnt, "random-npm.bin"), "user.xet.hash"), randomHash);
  assert.ok(sameBytes(readFileSync(join(mnt, "differ-npm.bin")), disagree.data));
  assert.equal(xattr(join(mnt, "differ-npm.bin"), "user.xet.hash"), disagree.npm);
});

test("unmount commits and detaches", () => {
  const data = randomBytes(100_000, 9);
  writeFileSync(join(mnt, "last.bin"), data);  // closed, not fsynced: unmount drains it
  const result = bucketfs("unmount", mnt);
  assert.equal(result.status, 0, result.stderr);
  assert.ok(!mounted());
  return downloadFile({ repo, path: "last.bin", ...auth }).then(async (blob) => {
    assert.ok(blob, "last.bin was not committed by unmount");
    assert.ok(sameBytes(new Uint8Array(await blob.arrayBuffer()), data));
  });
});
