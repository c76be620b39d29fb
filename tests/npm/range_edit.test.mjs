// Range edits: the real npm client @huggingface/hub edits byte ranges of a file in a bucket on a
// real bucketfs-server without re-reading the rest of it. It asks GET /v2/file-chunk-hashes for
// the windows to re-chunk and the merkle subtrees of the unchanged gaps, composes the new file
// hash from them, and the server checks that hash against the chunks when it takes the shard.
// Also: the server's subtrees equal the ones the client library builds from the same chunks.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { commit, createRepo, downloadFile, uploadFiles, pathsInfo } from "@huggingface/hub";
import { getChunks, MerkleHashSubtree, hashToHex } from "@huggingface/xetchunk-wasm";
import { makeDataDir, startServer, removeDir, metric, randomBytes, TOKENS } from "../support/server_process.mjs";

const dir = makeDataDir();
const server = await startServer(dir);
after(async () => {
  await server.stop();
  removeDir(dir);
});

const MiB = 1024 * 1024;
const repo = { type: "bucket", name: "alice/edits" };
const auth = () => ({ hubUrl: server.url, accessToken: TOKENS.alice_write });

const requests = (status) =>
  metric(server.url, `bucketfs_http_requests_total{route="cas_file_chunk_hashes",status="${status}"}`).catch(() => 0);

async function casToken() {
  const response = await fetch(`${server.url}/api/buckets/alice/edits/xet-read-token`, {
    headers: { Authorization: `Bearer ${TOKENS.alice_read}` },
  });
  assert.equal(response.status, 200);
  return response.json();
}

async function chunkHashes(xetHash, dirty) {
  const { accessToken, casUrl } = await casToken();
  const headers = { Authorization: `Bearer ${accessToken}` };
  if (dirty !== undefined) headers["X-Range-Dirty"] = dirty;
  return fetch(`${casUrl}/v2/file-chunk-hashes/${xetHash}`, { headers });
}

async function xetHashOf(path) {
  const [info] = await pathsInfo({ repo, paths: [path], ...auth() });
  return info.xetHash;
}

// A file of several terms: a base uploaded first, then a copy with 1 MiB inserted in the middle
// (its unchanged parts are references into the base's xorb, the insert a new one).
const base = randomBytes(16 * MiB, 71);
const inserted = randomBytes(MiB, 72);
const layered = new Uint8Array(base.length + inserted.length);
layered.set(base.subarray(0, 6 * MiB), 0);
layered.set(inserted, 6 * MiB);
layered.set(base.subarray(6 * MiB), 7 * MiB);

test("set up: a bucket with a file of several terms", async () => {
  await createRepo({ repo, ...auth() });
  await uploadFiles({ repo, files: [{ path: "base.bin", content: new Blob([base]) }], ...auth() });
  await uploadFiles({ repo, files: [{ path: "layered.bin", content: new Blob([layered]) }], ...auth() });
});

test("the server's gap subtrees are the client library's, and its windows rejoin the chunking", async () => {
  const xetHash = await xetHashOf("layered.bin");
  const dirtyStart = 12 * MiB + 5000;
  const dirtyEnd = 12 * MiB + 9000;  // exclusive
  const response = await chunkHashes(xetHash, `bytes=${dirtyStart}-${dirtyEnd - 1}`);
  assert.equal(response.status, 200);
  const answer = await response.json();
  const chunks = getChunks(layered);
  assert.equal(answer.totalChunks, chunks.length);
  assert.equal(answer.fileSize, layered.length);
  assert.equal(answer.windows.length, 1);
  const [start, end] = answer.windows[0].dirtyByteRange;
  const boundaries = [0];
  for (const chunk of chunks) boundaries.push(boundaries[boundaries.length - 1] + chunk.length);
  assert.ok(boundaries.includes(start) && boundaries.includes(end), "windows are chunk-aligned");
  assert.ok(start <= dirtyStart && end >= dirtyEnd, `window [${start}, ${end}) covers the dirty range`);
  assert.ok(end - start < 2 * MiB, `window [${start}, ${end}) stays near the edit`);
  const startIndex = boundaries.indexOf(start);
  const endIndex = boundaries.indexOf(end);
  const expected = [
    MerkleHashSubtree.fromChunks(true, chunks.slice(0, startIndex), false).toJSON(),
    MerkleHashSubtree.fromChunks(false, chunks.slice(endIndex), true).toJSON(),
  ];
  assert.deepEqual(answer.hashRanges, expected);
  // Changing the window's bytes cannot move the chunk boundary at its end.
  const edited = layered.slice(start, end + 2 * MiB);
  edited.set(randomBytes(4000, 73), dirtyStart - start);
  let at = 0;
  const editedBoundaries = new Set(getChunks(edited).map((chunk) => (at += chunk.length)));
  assert.ok(editedBoundaries.has(end - start), "the edited window's chunks end where the window does");
});

test("an edit through the npm client re-chunks only its windows and gives the bytes and hash of a fresh upload", async () => {
  const before = await requests(200);
  const original = await downloadFile({ repo, path: "layered.bin", ...auth() });
  const replacement = randomBytes(3000, 74);
  const appended = new TextEncoder().encode("appended at the end\n");
  const at = 13 * MiB + 777;
  await commit({
    repo,
    title: "edit two ranges",
    operations: [
      {
        operation: "edit",
        path: "layered.bin",
        originalContent: original,
        edits: [
          { start: at, end: at + 3000, content: new Blob([replacement]) },
          { start: layered.length, end: layered.length, content: new Blob([appended]) },
        ],
      },
    ],
    ...auth(),
  });
  assert.equal((await requests(200)) - before, 1, "the client planned the edit with GET /v2/file-chunk-hashes");
  const expected = new Uint8Array(layered.length + appended.length);
  expected.set(layered, 0);
  expected.set(replacement, at);
  expected.set(appended, layered.length);
  const got = new Uint8Array(await (await downloadFile({ repo, path: "layered.bin", ...auth() })).arrayBuffer());
  assert.equal(got.length, expected.length);
  assert.ok(Buffer.from(got).equals(Buffer.from(expected)), "the edited file reads back as the expected bytes");
  // The same bytes uploaded whole get the same xet hash: the composed chunking is the canonical one.
  await uploadFiles({ repo, files: [{ path: "fresh.bin", content: new Blob([expected]) }], ...auth() });
  assert.equal(await xetHashOf("layered.bin"), await xetHashOf("fresh.bin"));
});

test("bad requests get a 4xx with a JSON error", async () => {
  const xetHash = await xetHashOf("base.bin");
  for (const [dirty, status] of [
    [undefined, 400],
    ["0-10", 400],
    ["bytes=10-5", 400],
    ["bytes=abc", 400],
    [`bytes=${base.length}-${base.length + 10}`, 400],
  ]) {
    const response = await chunkHashes(xetHash, dirty);
    assert.equal(response.status, status, `X-Range-Dirty ${dirty}`);
    const body = await response.json();
    assert.equal(typeof body.error, "string", `X-Range-Dirty ${dirty}`);
  }
  const missing = await chunkHashes("ab".repeat(32), "bytes=0-10");
  assert.equal(missing.status, 404);
  assert.equal(typeof (await missing.json()).error, "string");
});
