// Starts a real bucketfs-server for a test: its own data folder and port, a tokens file, and a
// stop() that always runs (SIGTERM, then SIGKILL after a grace period).
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const TOKENS = {
  alice_write: "hf_alice_write_token_0001",
  alice_read: "hf_alice_read_token_0002",
  bob_write: "hf_bob_write_token_0003",
};

export function makeDataDir() {
  const dir = mkdtempSync(join(tmpdir(), "bucketfs-test-"));
  writeFileSync(
    join(dir, "tokens"),
    `# test tokens\n${TOKENS.alice_write} write alice\n${TOKENS.alice_read} read alice\n${TOKENS.bob_write} write bob\n`,
    { mode: 0o600 },
  );
  return dir;
}

export async function startServer(dir) {
  const binary = process.env.BUCKETFS_SERVER_BINARY;
  if (!binary) throw new Error("BUCKETFS_SERVER_BINARY is not set");
  const ready = join(dir, `ready-${process.pid}-${Date.now()}`);
  const child = spawn(binary, ["--data", join(dir, "data"), "--listen", "127.0.0.1:0", "--tokens", join(dir, "tokens"),
    "--ready-file", ready], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  for (let i = 0; i < 200 && !existsSync(ready); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!existsSync(ready)) {
    child.kill("SIGKILL");
    throw new Error(`bucketfs-server did not start: ${output}`);
  }
  const url = readFileSync(ready, "utf8").trim();
  return {
    url,
    output: () => output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

export async function metric(url, name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  if (!line) throw new Error(`metric ${name} missing`);
  return Number(line.split(" ")[1]);
}

// Deterministic fast pseudo-random bytes (xorshift32), for large inputs.
export function randomBytes(size, seed) {
  const out = new Uint8Array(size);
  const words = new Uint32Array(out.buffer, 0, Math.floor(size / 4));
  let x = seed >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    words[i] = x;
  }
  for (let i = words.length * 4; i < size; i++) out[i] = (i * 131) & 0xff;
  return out;
}
