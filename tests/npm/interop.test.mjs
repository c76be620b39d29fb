// Interop: the real npm client @huggingface/hub (pinned in package-lock.json) against a real
// bucketfs-server. Create a bucket, upload files (one over 64 MiB, so several xorbs, then a
// modified copy), list, paths-info, restart the server, download everything back byte for byte,
// delete, and read dedup from /metrics.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createRepo, uploadFiles, listFiles, pathsInfo, downloadFile, deleteFile, deleteRepo, repoExists } from "@huggingface/hub";
import { makeDataDir, startServer, removeDir, metric, randomBytes, TOKENS } from "../support/server_process.mjs";

const dir = makeDataDir();
let server = await startServer(dir);
after(async () => {
  await server.stop();
  removeDir(dir);
});

const repo = { type: "bucket", name: "alice/interop" };
const auth = () => ({ hubUrl: server.url, accessToken: TOKENS.alice_write });
const BIG = 70 * 1024 * 1024;
const big = randomBytes(BIG, 12345);
const modified = big.slice();
for (const offset of [1_000_000, 20_000_000, 40_000_000, 69_000_000]) {
  for (let i = 0; i < 50_000; i++) modified[offset + i] ^= 0x5a;
}
const small = {
  "notes/readme.txt": new TextEncoder().encode("hello from the npm client\n".repeat(100)),
  "empty.bin": new Uint8Array(0),
  "weights/one.bin": randomBytes(300_000, 7),
  "weights/dir with space/two.bin": randomBytes(1_000, 8),
};

async function bytesOf(blob) {
  return new Uint8Array(await blob.arrayBuffer());
}

test("create a bucket (and 409 the second time)", async () => {
  const created = await createRepo({ repo, ...auth() });
  assert.equal(created.id, "alice/interop");
  await assert.rejects(createRepo({ repo, ...auth() }), /already/i);
  assert.equal(await repoExists({ repo, ...auth() }), true);
});

test("upload small files and a 70 MiB file in one commit", async () => {
  const files = Object.entries(small).map(([path, content]) => ({ path, content: new Blob([content]) }));
  files.push({ path: "big/model.bin", content: new Blob([big]) });
  await uploadFiles({ repo, files, ...auth() });
  const received = await metric(server.url, "bucketfs_xorb_bytes_received_total");
  assert.ok(received >= BIG, `xorb bytes received ${received} should cover the 70 MiB of random data`);
  const stored = await metric(server.url, "bucketfs_xorbs_stored");
  assert.ok(stored >= 2, `a 70 MiB file needs at least two xorbs, got ${stored}`);
});

test("a modified copy sends only the changed chunks", async () => {
  const before = await metric(server.url, "bucketfs_xorb_bytes_received_total");
  await uploadFiles({ repo, files: [{ path: "big/model-step2.bin", content: new Blob([modified]) }], ...auth() });
  const sent = (await metric(server.url, "bucketfs_xorb_bytes_received_total")) - before;
  assert.ok(sent > 0, "the changed regions must be uploaded");
  assert.ok(sent < BIG / 20, `the modified copy sent ${sent} xorb bytes; expected far fewer than its ${BIG} bytes`);
  console.log(`# modified 70 MiB copy: ${sent} xorb bytes sent (${((100 * sent) / BIG).toFixed(2)}% of its size)`);
});

test("list and paths-info show every file with size and xet hash", async () => {
  const entries = [];
  for await (const entry of listFiles({ repo, recursive: true, ...auth() })) entries.push(entry);
  const byPath = Object.fromEntries(entries.map((e) => [e.path, e]));
  for (const [path, content] of Object.entries(small)) {
    assert.equal(byPath[path]?.size, content.length, path);
    assert.match(byPath[path].xetHash, /^[0-9a-f]{64}$/);
  }
  assert.equal(byPath["big/model.bin"].size, BIG);
  assert.equal(byPath["big/model-step2.bin"].size, BIG);

  const top = [];
  for await (const entry of listFiles({ repo, recursive: false, ...auth() })) top.push(`${entry.type}:${entry.path}`);
  assert.deepEqual(top.sort(), ["directory:big", "directory:notes", "directory:weights", "file:empty.bin"]);

  const info = await pathsInfo({ repo, paths: ["big/model.bin", "notes/readme.txt", "missing.txt"], ...auth() });
  assert.deepEqual(info.map((i) => i.path).sort(), ["big/model.bin", "notes/readme.txt"]);
});

test("after a server restart every file downloads back byte for byte", async () => {
  await server.stop();
  server = await startServer(dir);
  for (const [path, content] of Object.entries(small)) {
    const blob = await downloadFile({ repo, path, ...auth() });
    assert.ok(blob, `${path} missing after restart`);
    assert.deepEqual(await bytesOf(blob), content, path);
  }
  for (const [path, content] of [["big/model.bin", big], ["big/model-step2.bin", modified]]) {
    const blob = await downloadFile({ repo, path, ...auth() });
    const got = await bytesOf(blob);
    assert.equal(got.length, content.length, path);
    assert.ok(Buffer.compare(Buffer.from(got), Buffer.from(content)) === 0, `${path} bytes differ`);
  }
  assert.equal(await downloadFile({ repo, path: "no/such/file", ...auth() }), null);
});

test("delete a file, then the bucket", async () => {
  await deleteFile({ repo, path: "notes/readme.txt", ...auth() });
  const info = await pathsInfo({ repo, paths: ["notes/readme.txt"], ...auth() });
  assert.equal(info.length, 0);
  await deleteRepo({ repo, ...auth() });
  assert.equal(await repoExists({ repo, ...auth() }), false);
});
