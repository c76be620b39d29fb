#!/usr/bin/env node
// Regenerates tests/data/npm/: the Xet xorbs and shards that the real npm client
// (@huggingface/hub, version pinned in package.json) puts on the wire when it uploads
// deterministic inputs to a Storage Bucket.
//
// How: two tiny HTTP servers on 127.0.0.1 (port 0) stand in for the Hub (bucket API) and
// the Xet CAS. The client's public API (uploadFiles on {type: "bucket"}) is pointed at them
// with hubUrl; the Hub's xet-write-token answer gives the CAS server as casUrl. Every request
// is logged (tokens redacted) and every xorb / shard body is saved byte for byte.
// The script then checks each capture with its own decoder (xorb chunks, LZ4 frames, BG4,
// shard sections): reconstructing every file from the captured shard + xorbs must give the
// input bytes back.
//
// Usage: cd tests/npm && npm ci && node make-fixtures.mjs [--out DIR]
//
// Determinism: Date.now() is frozen (FIXED_NOW_MS) before the client runs, so the shard
// footer's creation timestamp is reproducible. The X-Xet-Session-Id header is a random UUID
// per commit; the manifest shows it as "<session-uuid>". Everything else is a pure function
// of the inputs and the pinned package.

import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { fileURLToPath } from "node:url";
import { uploadFiles } from "@huggingface/hub";
import { getChunks, hashToHex, fileHash, xorbHash, verificationHash, hexToBytes } from "@huggingface/xetchunk-wasm";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const outArg = process.argv.indexOf("--out");
const OUT = outArg > 0 ? path.resolve(process.argv[outArg + 1]) : path.resolve(HERE, "../data/npm");

const HUB_TOKEN = "hf_test_token"; // fake; the client only checks the hf_ prefix
const CAS_TOKEN = "xet_test_write_token"; // fake; what our Hub stand-in hands out
const FIXED_NOW_MS = Date.UTC(2026, 0, 1, 0, 0, 0); // 2026-01-01T00:00:00Z
const TOKEN_EXP_S = FIXED_NOW_MS / 1000 + 3600;

const pkgVersion = (name) =>
	JSON.parse(fs.readFileSync(path.join(HERE, "node_modules", name, "package.json"), "utf8")).version;

// ---------------------------------------------------------------------------------------------
// Deterministic inputs
// ---------------------------------------------------------------------------------------------

/** SplitMix64 outputs written as little-endian 8-byte words, cut to n bytes (project-wide generator). */
function splitmix(seed, n) {
	const M = (1n << 64n) - 1n;
	const out = new Uint8Array(n);
	let state = BigInt(seed) & M;
	for (let i = 0; i < n; i += 8) {
		state = (state + 0x9e3779b97f4a7c15n) & M;
		let z = state;
		z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
		z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
		z ^= z >> 31n;
		for (let b = 0; b < 8 && i + b < n; b++) out[i + b] = Number((z >> BigInt(8 * b)) & 0xffn);
	}
	return out;
}

/** Same as tests/support/vector_inputs.h text_like(): words picked by splitmix(7, n) bytes. */
function textLike(n) {
	const words = ["tensor", "layer", "weight", "bias", "grad", "step", "loss", "adam", "epoch", "shard"];
	const rnd = splitmix(7, n);
	const out = new Uint8Array(n);
	let i = 0;
	let r = 0;
	while (i < n) {
		const w = words[rnd[r++ % n] % words.length] + (rnd[r++ % n] % 4 === 0 ? "\n" : " ");
		for (let k = 0; k < w.length && i < n; k++) out[i++] = w.charCodeAt(k);
	}
	return out;
}

/** float32 little-endian values i / 1024 for i = 0 .. n/4-1 (exact in binary32). */
function float32Ramp(n) {
	const out = new Uint8Array(n);
	const view = new DataView(out.buffer);
	for (let i = 0; i * 4 < n; i++) view.setFloat32(i * 4, i / 1024, true);
	return out;
}

function applyEdits(base, edits) {
	let data = base.slice();
	for (const e of edits) {
		if (e.op === "xor") {
			for (let k = e.start; k < e.end; k++) data[k] ^= e.value;
		} else if (e.op === "insert") {
			const ins = new Uint8Array(e.count).fill(e.value);
			const next = new Uint8Array(data.length + ins.length);
			next.set(data.subarray(0, e.at), 0);
			next.set(ins, e.at);
			next.set(data.subarray(e.at), e.at + ins.length);
			data = next;
		} else {
			throw new Error(`unknown edit ${e.op}`);
		}
	}
	return data;
}

function generate(gen, inputs) {
	switch (gen.kind) {
		case "splitmix64":
			return splitmix(gen.seed, gen.size);
		case "constant":
			return new Uint8Array(gen.size).fill(gen.byte);
		case "text_like":
			return textLike(gen.size);
		case "float32_ramp":
			return float32Ramp(gen.size);
		case "edit":
			return applyEdits(inputs.get(gen.base), gen.edits);
		default:
			throw new Error(`unknown generator ${gen.kind}`);
	}
}

// Each case is one uploadFiles() call (one commit) with a single file, so exactly one of the
// client's 5 upload pipelines is busy and the output is deterministic. Cases that share a
// bucket run in order against the same bucket (the second one dedups against the first
// through the global dedup API).
const CASES = [
	{ name: "empty", bucket: "fixtures/empty", gen: { kind: "constant", byte: 0, size: 0 } },
	{ name: "one_byte_seed1", bucket: "fixtures/one-byte", gen: { kind: "splitmix64", seed: 1, size: 1 } },
	{ name: "random_102400_seed1", bucket: "fixtures/random-100k", gen: { kind: "splitmix64", seed: 1, size: 102400 } },
	{ name: "random_1000000_seed0", bucket: "fixtures/random-1m", gen: { kind: "splitmix64", seed: 0, size: 1000000 } },
	{ name: "random_3000000_seed2", bucket: "fixtures/random-3m", gen: { kind: "splitmix64", seed: 2, size: 3000000 } },
	{ name: "const59_1000000", bucket: "fixtures/const", gen: { kind: "constant", byte: 59, size: 1000000 } },
	{
		name: "text_like_262144",
		bucket: "fixtures/text",
		gen: {
			kind: "text_like",
			size: 262144,
			how: "words tensor,layer,weight,bias,grad,step,loss,adam,epoch,shard; r=0; per word: w=words[rnd[r++ % n] % 10] + (rnd[r++ % n] % 4 == 0 ? '\\n' : ' ') with rnd = splitmix64(seed 7, n); cut to n (tests/support/vector_inputs.h text_like)",
		},
	},
	{
		name: "float32_ramp_262144",
		bucket: "fixtures/float",
		gen: { kind: "float32_ramp", size: 262144, how: "little-endian IEEE binary32 of i/1024 for i in [0, size/4)" },
	},
	{ name: "dedup_base", bucket: "fixtures/dedup", gen: { kind: "splitmix64", seed: 4, size: 600000 } },
	{
		name: "dedup_edited",
		bucket: "fixtures/dedup",
		gen: {
			kind: "edit",
			base: "dedup_base",
			edits: [
				{ op: "xor", start: 300000, end: 300100, value: 0xff },
				{ op: "insert", at: 450000, count: 10, value: 0xab },
			],
			how: "dedup_base with bytes [300000,300100) xor 0xFF, then ten 0xAB bytes inserted at offset 450000 (offset in the xor-ed data)",
		},
	},
	// A commit with several files: the client spreads them over its 5 parallel pipelines, so each
	// file gets its own xorb and shard and they arrive in any order. Shards of this case are
	// named by content order (sorted by file hash) to keep the output reproducible.
	{
		name: "multi_file",
		bucket: "fixtures/multi",
		files: [
			{ name: "multi_a", path: "multi/a.bin", gen: { kind: "splitmix64", seed: 10, size: 20000 } },
			{ name: "multi_b", path: "multi/sub dir/b.bin", gen: { kind: "splitmix64", seed: 11, size: 70000 } },
			{ name: "multi_c", path: "multi/c.txt", gen: { kind: "text_like", size: 5000, how: "as text_like_262144, n=5000" } },
		],
	},
];
for (const c of CASES) c.files ??= [{ name: c.name, path: `${c.name}.bin`, gen: c.gen }];

// ---------------------------------------------------------------------------------------------
// Format decoding (independent of the client's code) used to check every capture
// ---------------------------------------------------------------------------------------------

const HASH_LEN = 32;
const SHARD_MAGIC = Uint8Array.from([
	72, 70, 82, 101, 112, 111, 77, 101, 116, 97, 68, 97, 116, 97, 0, 85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189,
	217, 92, 205, 209, 74, 169,
]);

/** 32 raw hash bytes -> Xet API string (four little-endian u64 words, 16 hex digits each). */
function hashString(bytes, off = 0) {
	let s = "";
	for (let w = 0; w < 4; w++) {
		for (let b = 7; b >= 0; b--) s += bytes[off + w * 8 + b].toString(16).padStart(2, "0");
	}
	return s;
}

function hashBytes(str) {
	const out = new Uint8Array(32);
	for (let w = 0; w < 4; w++) {
		for (let b = 0; b < 8; b++) out[w * 8 + b] = parseInt(str.substr(w * 16 + (7 - b) * 2, 2), 16);
	}
	return out;
}

function u24(a, o) {
	return a[o] | (a[o + 1] << 8) | (a[o + 2] << 16);
}

/** Decode one LZ4 block (raw block format) into out starting at outPos; returns the new outPos. */
function lz4Block(src, out, outPos) {
	let i = 0;
	while (i < src.length) {
		const token = src[i++];
		let lit = token >> 4;
		if (lit === 15) {
			let b;
			do {
				b = src[i++];
				lit += b;
			} while (b === 255);
		}
		out.set(src.subarray(i, i + lit), outPos);
		outPos += lit;
		i += lit;
		if (i >= src.length) break; // last sequence has literals only
		const offset = src[i] | (src[i + 1] << 8);
		i += 2;
		if (offset === 0) throw new Error("lz4: zero offset");
		let len = token & 15;
		if (len === 15) {
			let b;
			do {
				b = src[i++];
				len += b;
			} while (b === 255);
		}
		len += 4;
		for (let k = 0; k < len; k++, outPos++) out[outPos] = out[outPos - offset];
	}
	return outPos;
}

/** Decode an LZ4 frame (what the npm client writes in scheme 1/2 chunks). Returns data and a descriptor summary. */
function lz4Frame(src, expectedLen) {
	const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
	if (dv.getUint32(0, true) !== 0x184d2204) throw new Error("lz4: not a frame (bad magic)");
	const flg = src[4];
	const bd = src[5];
	let i = 6;
	if ((flg >> 6) !== 1) throw new Error("lz4: frame version");
	const blockChecksum = (flg >> 4) & 1;
	const contentSize = (flg >> 3) & 1;
	const contentChecksum = (flg >> 2) & 1;
	const dictId = flg & 1;
	if (contentSize) i += 8;
	if (dictId) i += 4;
	i += 1; // header checksum
	const out = new Uint8Array(expectedLen);
	let pos = 0;
	let blocks = 0;
	for (;;) {
		const size = dv.getUint32(i, true);
		i += 4;
		if (size === 0) break;
		const raw = (size & 0x80000000) !== 0;
		const n = size & 0x7fffffff;
		const block = src.subarray(i, i + n);
		if (raw) {
			out.set(block, pos);
			pos += n;
		} else {
			pos = lz4Block(block, out, pos);
		}
		i += n;
		if (blockChecksum) i += 4;
		blocks++;
	}
	if (contentChecksum) i += 4;
	if (i !== src.length) throw new Error(`lz4: ${src.length - i} trailing bytes after frame`);
	if (pos !== expectedLen) throw new Error(`lz4: decoded ${pos}, expected ${expectedLen}`);
	return {
		data: out,
		frame: {
			flg: `0x${flg.toString(16).padStart(2, "0")}`,
			bd: `0x${bd.toString(16).padStart(2, "0")}`,
			blocks,
			block_checksum: !!blockChecksum,
			content_size: !!contentSize,
			content_checksum: !!contentChecksum,
		},
	};
}

/** Inverse of byte grouping 4: group g holds bytes i with i % 4 == g. */
function bg4Regroup(g) {
	const n = g.length;
	const out = new Uint8Array(n);
	const base = Math.floor(n / 4);
	const rem = n % 4;
	let start = 0;
	for (let grp = 0; grp < 4; grp++) {
		const len = base + (grp < rem ? 1 : 0);
		for (let k = 0; k < len; k++) out[k * 4 + grp] = g[start + k];
		start += len;
	}
	return out;
}

const SCHEME_NAMES = ["None", "LZ4", "ByteGrouping4LZ4"];

function decodeXorb(bytes) {
	const chunks = [];
	let off = 0;
	while (off < bytes.length) {
		if (off + 8 > bytes.length) throw new Error("xorb: truncated chunk header (footer?)");
		const version = bytes[off];
		const compressed = u24(bytes, off + 1);
		const scheme = bytes[off + 4];
		const uncompressed = u24(bytes, off + 5);
		if (version !== 0) throw new Error(`xorb: chunk version ${version} at ${off}`);
		const payload = bytes.subarray(off + 8, off + 8 + compressed);
		if (payload.length !== compressed) throw new Error("xorb: truncated chunk payload");
		let data;
		let frame;
		if (scheme === 0) {
			data = payload.slice();
			if (compressed !== uncompressed) throw new Error("xorb: scheme 0 with different sizes");
		} else if (scheme === 1 || scheme === 2) {
			const r = lz4Frame(payload, uncompressed);
			frame = r.frame;
			data = scheme === 2 ? bg4Regroup(r.data) : r.data;
		} else {
			throw new Error(`xorb: unknown scheme ${scheme}`);
		}
		chunks.push({ offset: off, compressed, scheme, uncompressed, data, frame });
		off += 8 + compressed;
	}
	return chunks;
}

function isBookend(b, off) {
	for (let k = 0; k < 32; k++) if (b[off + k] !== 0xff) return false;
	return true;
}

/** Sequential shard decoder: header, file info section, CAS info section, optional footer. */
function decodeShard(b) {
	const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
	for (let k = 0; k < 32; k++) if (b[k] !== SHARD_MAGIC[k]) throw new Error("shard: bad magic");
	const header = { version: Number(dv.getBigUint64(32, true)), footer_size: Number(dv.getBigUint64(40, true)) };
	let off = 48;
	const files = [];
	while (!isBookend(b, off)) {
		const f = {
			file_hash: hashString(b, off),
			flags: dv.getUint32(off + 32, true),
			num_entries: dv.getUint32(off + 36, true),
			reserved: Number(dv.getBigUint64(off + 40, true)),
			terms: [],
			verification: [],
			sha256: null,
		};
		off += 48;
		for (let k = 0; k < f.num_entries; k++, off += 48) {
			f.terms.push({
				xorb_hash: hashString(b, off),
				flags: dv.getUint32(off + 32, true),
				unpacked_length: dv.getUint32(off + 36, true),
				chunk_start: dv.getUint32(off + 40, true),
				chunk_end: dv.getUint32(off + 44, true),
			});
		}
		if (f.flags & 0x80000000) {
			for (let k = 0; k < f.num_entries; k++, off += 48) f.verification.push(hashString(b, off));
		}
		if (f.flags & 0x40000000) {
			f.sha256 = Buffer.from(b.subarray(off, off + 32)).toString("hex");
			off += 48;
		}
		f.flags = `0x${f.flags.toString(16).padStart(8, "0")}`;
		files.push(f);
	}
	const fileBookend = off;
	off += 48;
	const casInfoOffset = off;
	const xorbs = [];
	while (!isBookend(b, off)) {
		const x = {
			xorb_hash: hashString(b, off),
			flags: dv.getUint32(off + 32, true),
			num_chunks: dv.getUint32(off + 36, true),
			unpacked_bytes: dv.getUint32(off + 40, true),
			packed_bytes: dv.getUint32(off + 44, true),
			chunks: [],
		};
		off += 48;
		for (let k = 0; k < x.num_chunks; k++, off += 48) {
			x.chunks.push({
				chunk_hash: hashString(b, off),
				unpacked_start: dv.getUint32(off + 32, true),
				unpacked_length: dv.getUint32(off + 36, true),
				reserved: Number(dv.getBigUint64(off + 40, true)),
			});
		}
		xorbs.push(x);
	}
	off += 48;
	const casInfoEnd = off;
	let footer = null;
	if (header.footer_size > 0) {
		const f = b.length - header.footer_size;
		if (f !== off) throw new Error(`shard: footer at ${f} but sections end at ${off}`);
		const u = (k) => Number(dv.getBigUint64(f + k, true));
		footer = {
			offset: f,
			version: u(0),
			file_info_offset: u(8),
			cas_info_offset: u(16),
			file_lookup_offset: u(24),
			file_lookup_num_entry: u(32),
			cas_lookup_offset: u(40),
			cas_lookup_num_entry: u(48),
			chunk_lookup_offset: u(56),
			chunk_lookup_num_entry: u(64),
			chunk_hash_hmac_key: hashString(b, f + 72),
			shard_creation_timestamp: u(104),
			shard_key_expiry: u(112),
			reserved_zero: b.subarray(f + 120, f + 168).every((x) => x === 0),
			stored_bytes_on_disk: u(168),
			materialized_bytes: u(176),
			stored_bytes: u(184),
			footer_offset: u(192),
		};
	} else if (off !== b.length) {
		throw new Error(`shard: ${b.length - off} bytes after CAS info section without a footer`);
	}
	return { header, files, file_info_bookend_offset: fileBookend, cas_info_offset: casInfoOffset, cas_info_end: casInfoEnd, xorbs, footer };
}

/**
 * What a CAS server answers to GET /v1/chunks/{prefix}/{hash} on a hit: a shard with an empty
 * file info section, the CAS info blocks, and a footer whose file_lookup_offset points after
 * the CAS info section (the npm client scans CAS blocks up to file_lookup_offset; a zero
 * there, as in the client's own upload footers, makes it see no xorbs at all).
 */
function buildDedupShard(casBlocks) {
	const body = Buffer.concat(casBlocks);
	const bookend = Buffer.concat([Buffer.alloc(32, 0xff), Buffer.alloc(16, 0)]);
	const header = Buffer.alloc(48);
	Buffer.from(SHARD_MAGIC).copy(header, 0);
	header.writeBigUInt64LE(2n, 32);
	header.writeBigUInt64LE(200n, 40);
	const casOff = 48 + 48;
	const footerOff = casOff + body.length + 48;
	const footer = Buffer.alloc(200);
	footer.writeBigUInt64LE(1n, 0); // version
	footer.writeBigUInt64LE(48n, 8); // file_info_offset
	footer.writeBigUInt64LE(BigInt(casOff), 16); // cas_info_offset
	footer.writeBigUInt64LE(BigInt(footerOff), 24); // file_lookup_offset (no lookup tables: all at footer)
	footer.writeBigUInt64LE(BigInt(footerOff), 40); // cas_lookup_offset
	footer.writeBigUInt64LE(BigInt(footerOff), 56); // chunk_lookup_offset
	// hmac key 0 (chunk hashes sent raw), timestamps 0
	footer.writeBigUInt64LE(BigInt(footerOff), 192); // footer_offset
	return Buffer.concat([header, bookend, body, bookend, footer]);
}

// ---------------------------------------------------------------------------------------------
// The fake Hub and CAS
// ---------------------------------------------------------------------------------------------

const state = {
	currentCase: null,
	log: [], // all requests
	xorbs: new Map(), // hash -> Buffer
	shards: [], // {index, case, bytes}
	dedupResponses: [], // {index, case, chunk_hash, bytes}
	chunkIndex: new Map(), // chunk hash -> raw CAS info block (Buffer) of its xorb
	sessionIds: new Map(), // case -> Set of session ids seen
	batches: [], // {case, bucket, ops}
};

function readBody(req) {
	return new Promise((resolve, reject) => {
		const parts = [];
		req.on("data", (d) => parts.push(d));
		req.on("end", () => resolve(Buffer.concat(parts)));
		req.on("error", reject);
	});
}

function redactHeaders(headers, which) {
	const out = {};
	for (const [k, v] of Object.entries(headers)) {
		if (k === "authorization") {
			const tok = String(v).replace(/^Bearer\s+/i, "");
			out[k] =
				tok === HUB_TOKEN ? "Bearer <hub-token>" : tok === CAS_TOKEN ? "Bearer <cas-write-token>" : "Bearer <other-token>";
		} else if (k === "x-xet-session-id") {
			if (state.currentCase) {
				if (!state.sessionIds.has(state.currentCase)) state.sessionIds.set(state.currentCase, new Set());
				state.sessionIds.get(state.currentCase).add(String(v));
			}
			out[k] = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(String(v))
				? "<session-uuid>"
				: `<unexpected: ${v}>`;
		} else if (k === "host") {
			out[k] = `127.0.0.1:<${which}-port>`;
		} else {
			out[k] = v;
		}
	}
	return out;
}

function send(res, status, body, headers = {}) {
	const isBuf = Buffer.isBuffer(body);
	const data = isBuf ? body : body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body));
	res.writeHead(status, {
		...(isBuf ? { "Content-Type": "application/octet-stream" } : body === undefined ? {} : { "Content-Type": "application/json" }),
		"Content-Length": data.length,
		...headers,
	});
	res.end(data);
	return { status, body: isBuf ? `<${data.length} bytes of shard>` : body };
}

function makeServer(which, handler) {
	const server = http.createServer(async (req, res) => {
		try {
			const body = await readBody(req);
			const url = new URL(req.url, "http://x");
			const entry = {
				case: state.currentCase,
				server: which,
				method: req.method,
				path: url.pathname,
				query: url.search,
				headers: redactHeaders(req.headers, which),
				body_length: body.length,
			};
			state.log.push(entry);
			const r = await handler(req, url, body, res, entry);
			entry.response = r;
		} catch (err) {
			console.error(err);
			if (!res.headersSent) send(res, 500, { error: String(err) });
		}
	});
	return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

const hubServer = await makeServer("hub", async (req, url, body, res, entry) => {
	let m;
	if (req.method === "GET" && (m = url.pathname.match(/^\/api\/buckets\/([^/]+\/[^/]+)\/xet-write-token$/))) {
		const r = send(res, 200, { accessToken: CAS_TOKEN, exp: TOKEN_EXP_S, casUrl: `http://127.0.0.1:${casPort}` });
		return { ...r, body: { ...r.body, casUrl: "http://127.0.0.1:<cas-port>" } };
	}
	if (req.method === "POST" && (m = url.pathname.match(/^\/api\/buckets\/([^/]+\/[^/]+)\/batch$/))) {
		const text = body.toString("utf8");
		entry.body = text;
		entry.body_ends_with_newline = text.endsWith("\n");
		const ops = text
			.split("\n")
			.filter((l) => l.trim() !== "")
			.map((l) => JSON.parse(l));
		state.batches.push({ case: state.currentCase, bucket: m[1], ops });
		return send(res, 200, { success: true, processed: ops.length, succeeded: ops.length, failed: [] });
	}
	return send(res, 404, { error: `fixture hub: no route ${req.method} ${url.pathname}` });
});
const hubPort = hubServer.address().port;

const casServer = await makeServer("cas", async (req, url, body, res, entry) => {
	let m;
	if (req.method === "POST" && (m = url.pathname.match(/^\/v1\/xorbs\/([^/]+)\/([0-9a-f]{64})$/))) {
		entry.body = `<xorb ${body.length} bytes>`;
		const wasNew = !state.xorbs.has(m[2]);
		state.xorbs.set(m[2], body);
		entry.saved_as = `xorbs/${m[2]}.xorb`;
		return send(res, 200, { was_inserted: wasNew });
	}
	if (req.method === "POST" && url.pathname === "/v1/shards") {
		entry.body = `<shard ${body.length} bytes>`;
		state.shards.push({ case: state.currentCase, bytes: body, file: null, entry }); // named after the run
		// Index the CAS info blocks for later global dedup answers.
		const s = decodeShard(body);
		let off = s.cas_info_offset;
		for (const x of s.xorbs) {
			const len = 48 + 48 * x.chunks.length;
			const block = Buffer.from(body.subarray(off, off + len));
			for (const c of x.chunks) if (!state.chunkIndex.has(c.chunk_hash)) state.chunkIndex.set(c.chunk_hash, block);
			off += len;
		}
		return send(res, 200, { result: 1 });
	}
	if (req.method === "GET" && (m = url.pathname.match(/^\/v1\/chunks\/([^/]+)\/([0-9a-f]{64})$/))) {
		const block = state.chunkIndex.get(m[2]);
		if (!block) return send(res, 404, { error: "chunk not found" });
		const bytes = buildDedupShard([block]);
		const index = state.dedupResponses.length;
		const file = `dedup-responses/${String(index).padStart(2, "0")}_${m[2]}.shard`;
		state.dedupResponses.push({ index, case: state.currentCase, chunk_hash: m[2], bytes, file });
		entry.response_saved_as = file;
		return send(res, 200, bytes);
	}
	return send(res, 404, { error: `fixture cas: no route ${req.method} ${url.pathname}` });
});
const casPort = casServer.address().port;

// ---------------------------------------------------------------------------------------------
// Run the client
// ---------------------------------------------------------------------------------------------

const realDateNow = Date.now;
Date.now = () => FIXED_NOW_MS;

const inputs = new Map();
const runs = [];
for (const c of CASES) {
	const files = c.files.map((f) => {
		const data = generate(f.gen, inputs);
		inputs.set(f.name, data);
		return { ...f, data };
	});
	state.currentCase = c.name;
	const firstLog = state.log.length;
	const xorbsBefore = new Set(state.xorbs.keys());
	await uploadFiles({
		repo: { type: "bucket", name: c.bucket },
		files: files.map((f) => ({ path: f.path, content: new Blob([f.data]) })),
		hubUrl: `http://127.0.0.1:${hubPort}`,
		accessToken: HUB_TOKEN,
	});
	const batches = state.batches.filter((b) => b.case === c.name);
	if (batches.length !== 1 || batches[0].ops.length !== files.length) throw new Error(`${c.name}: expected one batch`);
	for (const f of files) {
		const op = batches[0].ops.find((o) => o.path === f.path);
		if (!op || op.type !== "addFile") throw new Error(`${c.name}: no addFile for ${f.path}`);
		f.xetHash = op.xetHash;
	}
	runs.push({ c, files, firstLog, lastLog: state.log.length, xorbsBefore });
	state.currentCase = null;
}
Date.now = realDateNow;
hubServer.close();
casServer.close();

function sha256(b) {
	return crypto.createHash("sha256").update(b).digest("hex");
}

// Shard file names: one global sequence in case order; inside a case, by content (first file
// hash, then first xorb hash, then bytes) since parallel pipelines finish in any order.
{
	let index = 0;
	for (const { c } of runs) {
		const key = (s) => {
			const d = decodeShard(s.bytes);
			return `${d.files[0]?.file_hash ?? "~"}/${d.xorbs[0]?.xorb_hash ?? "~"}/${sha256(s.bytes)}`;
		};
		const mine = state.shards.filter((s) => s.case === c.name).map((s) => ({ s, k: key(s) }));
		mine.sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0));
		for (const { s } of mine) {
			s.file = `shards/${String(index++).padStart(2, "0")}_${c.name}.shard`;
			s.entry.saved_as = s.file;
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Verify and write
// ---------------------------------------------------------------------------------------------

for (const sub of ["xorbs", "shards", "dedup-responses"]) fs.rmSync(path.join(OUT, sub), { recursive: true, force: true });
fs.mkdirSync(OUT, { recursive: true });
for (const sub of ["xorbs", "shards", "dedup-responses"]) fs.mkdirSync(path.join(OUT, sub));

const decodedXorbs = new Map();
const xorbManifest = {};
for (const hash of [...state.xorbs.keys()].sort()) {
	const bytes = state.xorbs.get(hash);
	const chunks = decodeXorb(bytes);
	decodedXorbs.set(hash, chunks);
	fs.writeFileSync(path.join(OUT, "xorbs", `${hash}.xorb`), bytes);
	xorbManifest[hash] = {
		file: `xorbs/${hash}.xorb`,
		size: bytes.length,
		sha256: sha256(bytes),
		num_chunks: chunks.length,
		unpacked_bytes: chunks.reduce((s, ch) => s + ch.uncompressed, 0),
		footer: false,
		chunks: chunks.map((ch, i) => ({
			index: i,
			offset: ch.offset,
			compressed_length: ch.compressed,
			scheme: ch.scheme,
			scheme_name: SCHEME_NAMES[ch.scheme],
			uncompressed_length: ch.uncompressed,
			...(ch.frame ? { lz4_frame: ch.frame } : {}),
		})),
	};
}
for (const s of state.shards) fs.writeFileSync(path.join(OUT, s.file), s.bytes);
for (const d of state.dedupResponses) fs.writeFileSync(path.join(OUT, d.file), d.bytes);

const problems = [];
const check = (cond, msg) => {
	if (!cond) problems.push(msg);
};

// CAS info (chunk hashes and lengths) of every xorb, from whichever shard announced it.
const casInfoByXorb = new Map();
for (const s of state.shards) for (const x of decodeShard(s.bytes).xorbs) casInfoByXorb.set(x.xorb_hash, x);
for (const h of state.xorbs.keys()) check(casInfoByXorb.has(h), `xorb ${h} is in no shard's CAS info section`);

const PHASE = (r) =>
	r.path.endsWith("/xet-write-token")
		? 0
		: r.path.startsWith("/v1/chunks/")
			? 1
			: r.path.startsWith("/v1/xorbs/")
				? 2
				: r.path === "/v1/shards"
					? 3
					: 4;

const cases = [];
for (const { c, files, firstLog, lastLog, xorbsBefore } of runs) {
	const shards = state.shards.filter((s) => s.case === c.name).sort((a, b) => (a.file < b.file ? -1 : 1));
	const decodedShards = shards.map((s) => ({ s, d: decodeShard(s.bytes) }));
	const fileEntries = decodedShards.flatMap(({ s, d }) => d.files.map((f) => ({ f, file: s.file })));
	const outFiles = [];
	for (const f of files) {
		const { data } = f;
		// The client's own chunker+hasher library on the whole input, for reference.
		const npmChunks = getChunks(data);
		const libFileHash = hashToHex(fileHash(npmChunks));
		check(libFileHash === f.xetHash, `${f.name}: batch xetHash ${f.xetHash} != library file hash ${libFileHash}`);
		const found = fileEntries.find((e) => e.f.file_hash === f.xetHash);
		check(found !== undefined, `${f.name}: no shard file entry for ${f.xetHash}`);
		if (found) {
			const fileEntry = found.f;
			const parts = [];
			fileEntry.terms.forEach((t, k) => {
				const chunks = decodedXorbs.get(t.xorb_hash);
				const casInfo = casInfoByXorb.get(t.xorb_hash);
				check(chunks !== undefined && casInfo !== undefined, `${f.name}: term xorb ${t.xorb_hash} was never uploaded`);
				if (!chunks || !casInfo) return;
				const slice = chunks.slice(t.chunk_start, t.chunk_end);
				const len = slice.reduce((acc, ch) => acc + ch.data.length, 0);
				check(len === t.unpacked_length, `${f.name}: term ${k} unpacked_length ${t.unpacked_length} != ${len}`);
				for (const ch of slice) parts.push(ch.data);
				const termHashes = casInfo.chunks.slice(t.chunk_start, t.chunk_end).map((ci) => hexToBytes(ci.chunk_hash));
				check(
					hashToHex(verificationHash(termHashes)) === fileEntry.verification[k],
					`${f.name}: term ${k} verification hash`,
				);
			});
			check(Buffer.concat(parts).equals(Buffer.from(data)), `${f.name}: reconstruction differs from input`);
			const shardFileHash = hashToHex(
				fileHash(
					fileEntry.terms.flatMap((t) =>
						(casInfoByXorb.get(t.xorb_hash)?.chunks ?? [])
							.slice(t.chunk_start, t.chunk_end)
							.map((ci) => ({ hash: hexToBytes(ci.chunk_hash), length: ci.unpacked_length })),
					),
				),
			);
			check(shardFileHash === f.xetHash, `${f.name}: file hash recomputed from shard chunks differs`);
		}
		outFiles.push({
			name: f.name,
			path: f.path,
			input: { generator: f.gen, size: data.length, sha256: sha256(data) },
			xet_hash: f.xetHash,
			size: data.length,
			shard: found?.file ?? null,
			npm_chunker: { num_chunks: npmChunks.length, chunks: npmChunks.map((ch) => [ch.length, hashToHex(ch.hash)]) },
		});
	}
	// CAS info of new xorbs must agree with the xorb bodies.
	for (const { d } of decodedShards) {
		for (const x of d.xorbs) {
			const xb = state.xorbs.get(x.xorb_hash);
			const chunks = decodedXorbs.get(x.xorb_hash);
			check(xb && xb.length === x.packed_bytes, `${c.name}: CAS info packed_bytes of ${x.xorb_hash}`);
			check(chunks && chunks.length === x.num_chunks, `${c.name}: CAS info num_chunks of ${x.xorb_hash}`);
			let acc = 0;
			x.chunks.forEach((ci, k) => {
				check(ci.unpacked_start === acc, `${c.name}: chunk ${k} start`);
				check(chunks && chunks[k].data.length === ci.unpacked_length, `${c.name}: chunk ${k} length`);
				acc += ci.unpacked_length;
			});
			check(acc === x.unpacked_bytes, `${c.name}: CAS info unpacked_bytes`);
			const xh = hashToHex(
				xorbHash(x.chunks.map((ci) => ({ hash: hexToBytes(ci.chunk_hash), length: ci.unpacked_length }))),
			);
			check(xh === x.xorb_hash, `${c.name}: xorb hash recomputed from CAS info differs from ${x.xorb_hash}`);
		}
	}
	let requests = state.log.slice(firstLog, lastLog);
	const parallel = files.length > 1;
	if (parallel) {
		// Arrival order between pipelines is not deterministic: list by phase, then path.
		const cmp = (x, y) => (x < y ? -1 : x > y ? 1 : 0);
		requests = [...requests].sort(
			(a, b) => PHASE(a) - PHASE(b) || cmp(a.path, b.path) || cmp(String(a.saved_as), String(b.saved_as)),
		);
		for (const r of requests) {
			if (typeof r.body === "string" && r.path.endsWith("/batch")) {
				r.body_lines_sorted = r.body.split("\n").sort();
				delete r.body;
			}
		}
	}
	const xorbUrls = requests.filter((r) => r.path.startsWith("/v1/xorbs/")).map((r) => r.path.split("/").pop());
	const sessions = state.sessionIds.get(c.name);
	cases.push({
		name: c.name,
		bucket: c.bucket,
		files: outFiles,
		xorbs_uploaded: xorbUrls.map((h) => ({ hash: h, file: `xorbs/${h}.xorb`, was_already_stored: xorbsBefore.has(h) })),
		shards: shards.map((s) => s.file),
		dedup_responses_served: state.dedupResponses
			.filter((d) => d.case === c.name)
			.map((d) => ({ chunk_hash: d.chunk_hash, file: d.file, built_by: "fixture CAS server (not the client)" })),
		session_ids_in_commit: sessions ? sessions.size : 0,
		request_order: parallel ? "sorted by phase then path (parallel pipelines arrive in any order)" : "arrival order",
		requests,
		shard_decoded: decodedShards.map(({ s, d }) => ({ file: s.file, size: s.bytes.length, sha256: sha256(s.bytes), ...d })),
	});
}

const manifest = {
	description:
		"Xorbs and shards captured from the npm reference client uploading deterministic inputs to a Storage Bucket. See tests/npm/README.md.",
	generated_by: "tests/npm/make-fixtures.mjs",
	client: {
		package: "@huggingface/hub",
		version: pkgVersion("@huggingface/hub"),
		chunker_package: "@huggingface/xetchunk-wasm",
		chunker_version: pkgVersion("@huggingface/xetchunk-wasm"),
		api_call: "uploadFiles({repo: {type: 'bucket', name}, files: [{path, content: Blob}], hubUrl, accessToken})",
	},
	frozen_clock_ms: FIXED_NOW_MS,
	hash_string_form: "32 hash bytes read as four little-endian u64 words, each printed as 16 lowercase hex digits",
	splitmix64:
		"state=seed; per 8 bytes: state+=0x9E3779B97F4A7C15 (mod 2^64); z=state; z=(z^(z>>30))*0xBF58476D1CE4E5B9; z=(z^(z>>27))*0x94D049BB133111EB; z^=z>>31; emit z little-endian; cut to size",
	tokens: {
		hub: "hf_test_token (fake)",
		cas: "xet_test_write_token (fake)",
		in_requests: "redacted as <hub-token>/<cas-write-token>",
	},
	cases,
	xorbs: xorbManifest,
	problems,
};
fs.writeFileSync(path.join(OUT, "manifest.json"), JSON.stringify(manifest, null, 1) + "\n");

if (problems.length) {
	console.error("VERIFICATION PROBLEMS:\n" + problems.join("\n"));
	process.exitCode = 1;
}
console.log(
	`wrote ${state.xorbs.size} xorbs, ${state.shards.length} shards, ${state.dedupResponses.length} dedup responses, manifest with ${cases.length} cases to ${OUT}`,
);
