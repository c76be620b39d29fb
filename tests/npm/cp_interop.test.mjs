// `bucketfs cp` and the npm client @huggingface/hub against the same bucketfs-server: what one
// uploads the other downloads byte for byte, for sizes 0, 1, 8191, 8192, 64 KiB, 10 MiB and over
// 64 MiB; where the npm chunker agrees with xet-core, both commit the same xet hash.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRepo, uploadFiles, downloadFile, pathsInfo } from "@huggingface/hub";
import { makeDataDir, startServer, removeDir, randomBytes, TOKENS } from "../support/server_process.mjs";

const dir = makeDataDir();
const work = mkdtempSync(join(tmpdir(), "bucketfs-cp-"));
const server = await startServer(dir);
after(async () => {
  await server.stop();
  removeDir(dir);
  rmSync(work, { recursive: true, force: true });
});
writeFileSync(join(work, "token"), TOKENS.alice_write + "\n", { mode: 0o600 });

const repo = { type: "bucket", name: "alice/cp" };
const auth = { hubUrl: server.url, accessToken: TOKENS.alice_write };
await createRepo({ repo, ...auth });

function bucketfs(...args) {
  const result = spawnSync(process.env.BUCKETFS_BINARY, [...args, "--token-file", join(work, "token"),
    "--endpoint", server.url, "--cache-dir", join(work, "cache")], { encoding: "buffer", maxBuffer: 1 << 30 });
  return result;
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

const SIZES = [0, 1, 8191, 8192, 65536, 10 * 1024 * 1024, 70 * 1024 * 1024];

test("bucketfs cp up, npm client down: identical bytes", async () => {
  for (const size of SIZES) {
    const data = randomBytes(size, 1000 + size);
    const local = join(work, `up-${size}.bin`);
    writeFileSync(local, data);
    const result = bucketfs("cp", local, `hf://buckets/alice/cp/from-cli/${size}.bin`);
    assert.equal(result.status, 0, `cp up ${size}: ${result.stderr}`);
    assert.equal(result.stdout.length + result.stderr.length, 0, "cp prints nothing when not on a terminal");
    const blob = await downloadFile({ repo, path: `from-cli/${size}.bin`, ...auth });
    assert.ok(blob, `npm cannot see from-cli/${size}.bin`);
    const got = new Uint8Array(await blob.arrayBuffer());
    assert.equal(got.length, size);
    assert.ok(Buffer.compare(Buffer.from(got), Buffer.from(data)) === 0, `bytes differ for size ${size}`);
  }
});

test("npm client up, bucketfs cp down (file and stdout): identical bytes", async () => {
  const files = SIZES.map((size) => ({ path: `from-npm/${size}.bin`, content: new Blob([randomBytes(size, 2000 + size)]) }));
  await uploadFiles({ repo, files, ...auth });
  for (const size of SIZES) {
    const expected = randomBytes(size, 2000 + size);
    const local = join(work, `down-${size}.bin`);
    const result = bucketfs("cp", `hf://buckets/alice/cp/from-npm/${size}.bin`, local);
    assert.equal(result.status, 0, `cp down ${size}: ${result.stderr}`);
    assert.ok(Buffer.compare(readFileSync(local), Buffer.from(expected)) === 0, `bytes differ for size ${size}`);
  }
  const piped = bucketfs("cp", "hf://buckets/alice/cp/from-npm/65536.bin", "-");
  assert.equal(piped.status, 0, piped.stderr.toString());
  assert.ok(Buffer.compare(piped.stdout, Buffer.from(randomBytes(65536, 2000 + 65536))) === 0);
});

test("the same content gets the same xet hash from both clients where the chunkers agree", async () => {
  // splitmix(0, 1000000) is cut identically by xet-core and the npm chunker (xet-vectors).
  const data = splitmix(0, 1_000_000);
  writeFileSync(join(work, "agree.bin"), data);
  assert.equal(bucketfs("cp", join(work, "agree.bin"), "hf://buckets/alice/cp/agree-cli.bin").status, 0);
  await uploadFiles({ repo, files: [{ path: "agree-npm.bin", content: new Blob([data]) }], ...auth });
  const info = await pathsInfo({ repo, paths: ["agree-cli.bin", "agree-npm.bin"], expand: false, ...auth });
  const byPath = Object.fromEntries(info.map((i) => [i.path, i]));
  assert.match(byPath["agree-cli.bin"].xetHash, /^[0-9a-f]{64}$/);
  assert.equal(byPath["agree-cli.bin"].xetHash, byPath["agree-npm.bin"].xetHash);
  assert.equal(byPath["agree-cli.bin"].xetHash, "3d17b2d7d64a0e011b6717a52d9a16bd2c3f05b743fa8adf52a7d75dafab6d89");
});

test("cp errors: one line, non-zero exit", () => {
  const missing = bucketfs("cp", "hf://buckets/alice/cp/no-such-file", join(work, "x"));
  assert.notEqual(missing.status, 0);
  assert.equal(missing.stderr.toString().trim().split("\n").length, 1);
  assert.match(missing.stderr.toString(), /no such file/);
  const bad = bucketfs("cp", join(work, "up-1.bin"), "hf://buckets/alice/cp/a/../b");
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr.toString(), /invalid path/);
  const nobucket = bucketfs("cp", join(work, "up-1.bin"), "hf://buckets/alice/does-not-exist/f");
  assert.notEqual(nobucket.status, 0);
  assert.match(nobucket.stderr.toString(), /not found/);
  assert.ok(!nobucket.stderr.toString().includes(TOKENS.alice_write));
});
