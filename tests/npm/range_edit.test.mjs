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

// A file of several terms: a base uploaded first, then a copy with 1 MiB inserted at 4 MiB and at
// 10 MiB: its unchanged parts are references into the base's xorb, the inserts a new one. About
// five terms: base, insert, base, insert, base.
const base = randomBytes(16 * MiB, 71);
const layered = new Uint8Array(base.length + 2 * MiB);
layered.set(base.subarray(0, 4 * MiB), 0);
layered.set(randomBytes(MiB, 72), 4 * MiB);
layered.set(base.subarray(4 * MiB, 10 * MiB), 5 * MiB);
layered.set(randomBytes(MiB, 75), 11 * MiB);
layered.set(base.subarray(10 * MiB), 12 * MiB);

test("set up: a bucket with a file of several terms", async () => {
  await createRepo({ repo, ...auth() });
  await uploadFiles({ repo, files: [{ path: "base.bin", content: new Blob([base]) }], ...auth() });
  await uploadFiles({ repo, files: [{ path: "layered.bin", content: new Blob([layered]) }], ...auth() });
});

test("the server's gap subtrees are the client library's, and its windows rejoin the chunking", async () => {
  const xetHash = await xetHashOf("layered.bin");
  const dirty = [
    [2 * MiB + 5000, 2 * MiB + 9000],  // half-open
    [14 * MiB + 100, 14 * MiB + 200],
  ];
  const response = await chunkHashes(xetHash, "bytes=" + dirty.map(([a, b]) => `${a}-${b - 1}`).join(","));
  assert.equal(response.status, 200);
  const answer = await response.json();
  const chunks = getChunks(layered);
  assert.equal(answer.totalChunks, chunks.length);
  assert.equal(answer.fileSize, layered.length);
  assert.equal(answer.windows.length, 2);
  const boundaries = [0];
  for (const chunk of chunks) boundaries.push(boundaries[boundaries.length - 1] + chunk.length);
  const windows = answer.windows.map((w) => w.dirtyByteRange);
  windows.forEach(([start, end], i) => {
    assert.ok(boundaries.includes(start) && boundaries.includes(end), `window ${i} is chunk-aligned`);
    assert.ok(start <= dirty[i][0] && end >= dirty[i][1], `window [${start}, ${end}) covers ${dirty[i]}`);
    assert.ok(end - start < 2 * MiB, `window [${start}, ${end}) stays near its edit`);
  });
  const index = (offset) => boundaries.indexOf(offset);
  const expected = [
    MerkleHashSubtree.fromChunks(true, chunks.slice(0, index(windows[0][0])), false).toJSON(),
    MerkleHashSubtree.fromChunks(false, chunks.slice(index(windows[0][1]), index(windows[1][0])), false).toJSON(),
    MerkleHashSubtree.fromChunks(false, chunks.slice(index(windows[1][1])), true).toJSON(),
  ];
  assert.deepEqual(answer.hashRanges, expected);
  // Changing a window's bytes cannot move the chunk boundary at its end, under the npm chunker.
  for (const [i, [start, end]] of windows.entries()) {
    const edited = layered.slice(start, Math.min(end + 2 * MiB, layered.length));
    edited.set(randomBytes(dirty[i][1] - dirty[i][0], 73 + i), dirty[i][0] - start);
    let at = 0;
    const editedBoundaries = new Set(getChunks(edited).map((chunk) => (at += chunk.length)));
    assert.ok(editedBoundaries.has(end - start), `the edited window ${i} is cut where it ends`);
  }
});

test("an edit through the npm client re-chunks only its windows and gives the bytes and hash of a fresh upload", async () => {
  const before = await requests(200);
  const original = await downloadFile({ repo, path: "layered.bin", ...auth() });
  const first = randomBytes(3000, 74);
  const second = randomBytes(100, 76);
  const appended = new TextEncoder().encode("appended at the end\n");
  const edits = [
    { start: 2 * MiB + 100, end: 2 * MiB + 3100, content: first },  // in the first term
    { start: 15 * MiB + 777, end: 15 * MiB + 777 + 5000, content: second },  // shrinks the last
    { start: layered.length, end: layered.length, content: appended },
  ];
  // See what the client was told: two windows, one ending mid-file, and reused terms between.
  const plans = [];
  const watching = async (url, init) => {
    const response = await fetch(url, init);
    if (String(url).includes("/v2/file-chunk-hashes/")) plans.push(await response.clone().json());
    return response;
  };
  await commit({
    repo,
    fetch: watching,
    title: "edit three ranges",
    operations: [
      {
        operation: "edit",
        path: "layered.bin",
        originalContent: original,
        edits: edits.map(({ start, end, content }) => ({ start, end, content: new Blob([content]) })),
      },
    ],
    ...auth(),
  });
  assert.equal((await requests(200)) - before, 1, "the client planned the edit with GET /v2/file-chunk-hashes");
  assert.equal(plans.length, 1);
  const [plan] = plans;
  assert.equal(plan.windows.length, 2, JSON.stringify(plan.windows));
  assert.ok(plan.windows[0].dirtyByteRange[1] < 6 * MiB, "the first window ends near its edit, mid-file");
  assert.equal(plan.hashRanges[0], null, "the first window starts the file");
  assert.notEqual(plan.hashRanges[1], null, "a gap lies between the windows");
  assert.ok(plan.gapVerification.length >= 1, "terms between the windows are reused as they are");
  const parts = [];
  let cursor = 0;
  for (const { start, end, content } of edits) {
    parts.push(layered.subarray(cursor, start), content);
    cursor = end;
  }
  parts.push(layered.subarray(cursor));
  const expected = new Uint8Array(await new Blob(parts).arrayBuffer());
  const got = new Uint8Array(await (await downloadFile({ repo, path: "layered.bin", ...auth() })).arrayBuffer());
  assert.equal(got.length, expected.length);
  assert.ok(Buffer.from(got).equals(Buffer.from(expected)), "the edited file reads back as the expected bytes");
  // The same bytes uploaded whole get the same xet hash: the composed chunking is the canonical one.
  await uploadFiles({ repo, files: [{ path: "fresh.bin", content: new Blob([expected]) }], ...auth() });
  assert.equal(await xetHashOf("layered.bin"), await xetHashOf("fresh.bin"));
});

test("bad requests get a 4xx with a JSON error; open-ended and suffix ranges are served", async () => {
  const xetHash = await xetHashOf("base.bin");
  for (const [dirty, status] of [
    [undefined, 400],
    ["0-10", 400],
    ["bytes=10-5", 400],
    ["bytes=abc", 400],
    ["bytes=", 400],
    ["bytes=0-10,", 400],
    ["bytes=-0", 400],
    ["bytes=99999999999999999999-1", 400],
    [`bytes=${base.length}-${base.length + 10}`, 400],
    ["bytes=" + Array.from({ length: 1001 }, (_, i) => `${2 * i}-${2 * i}`).join(","), 400],
    ["bytes=0-18446744073709551615", 200],
    [`bytes=${base.length - 10}-`, 200],
    ["bytes=-10, 5-6", 200],
  ]) {
    const response = await chunkHashes(xetHash, dirty);
    assert.equal(response.status, status, `X-Range-Dirty ${dirty?.slice(0, 60)}`);
    const body = await response.json();
    if (status === 200) assert.equal(body.fileSize, base.length);
    else assert.equal(typeof body.error, "string", `X-Range-Dirty ${dirty?.slice(0, 60)}`);
  }
  const missing = await chunkHashes("ab".repeat(32), "bytes=0-10");
  assert.equal(missing.status, 404);
  assert.equal(typeof (await missing.json()).error, "string");
});
