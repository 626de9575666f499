// The listen policy judges the addresses a name resolves to, not the name:
// with a resolver that maps "localhost" elsewhere, `serve` must refuse to
// listen without TLS and a token, as it does for 0.0.0.0. The resolver is
// faked inside the serve child (test/helpers/fake-resolver.mjs), so the
// machine's /etc/hosts is never touched.
import { mkdtemp, rm } from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BackupService } from "../gen/vmabackup/v1/backup_pb.js";
import { createClient } from "../src/client/grpc-client.js";
import { isLoopbackAddress, listenPolicyViolation, resolveListenHost } from "../src/server/listen-policy.js";
import { runServe, serveArgs } from "./helpers/serve-process.js";
import type { ServeProcess } from "./helpers/serve-process.js";

const FAKE_RESOLVER = ["--import", "./test/helpers/fake-resolver.mjs"];

let rootDir: string;
const children: ServeProcess[] = [];

beforeEach(async () => {
  rootDir = await mkdtemp(path.join(os.tmpdir(), "vmabackup-listen-"));
});

afterEach(async () => {
  for (const child of children.splice(0)) await child.kill();
  await rm(rootDir, { recursive: true, force: true });
});

/** A serve child on `listen` whose resolver answers `hosts` (name -> addresses). */
function serveWithHosts(listen: string, hosts: Record<string, string[]>): ServeProcess {
  const child = runServe(
    serveArgs(
      {
        backupDir: path.join(rootDir, "backups"),
        sourceRoot: path.join(rootDir, "images"),
        stateDir: path.join(rootDir, "state"),
      },
      listen,
    ),
    { nodeArgs: FAKE_RESOLVER, env: { VMABACKUP_TEST_HOSTS: JSON.stringify(hosts) } },
  );
  children.push(child);
  return child;
}

/** "exited <code>" or "listening <address>", whichever comes first. */
async function outcome(serve: ServeProcess): Promise<string> {
  return Promise.race([
    serve.exited.then(({ code }) => `exited ${code}`),
    serve
      .waitForLog((line) => line.msg === "listening")
      .then(
        (line) => `listening ${String(line.address)}`,
        () => "never listened",
      ),
  ]);
}

describe("the listen policy judges resolved addresses", () => {
  it("refuses localhost when the resolver maps it to 0.0.0.0 or to any address beyond loopback", async () => {
    for (const addresses of [["0.0.0.0"], ["127.0.0.1", "10.1.2.3"], ["::"]]) {
      const serve = serveWithHosts("localhost:0", { localhost: addresses });
      expect({ addresses, outcome: await outcome(serve) }).toEqual({ addresses, outcome: "exited 2" });
      const stderr = serve.stderr.join("");
      expect(stderr).toContain("refusing to listen on localhost:0");
      expect(stderr).toContain(addresses.join(", "));
      expect(stderr).toContain("--auth-token-file");
    }
  });

  it("serves localhost when it resolves to loopback only, bound to exactly those addresses", async () => {
    const serve = serveWithHosts("localhost:0", { localhost: ["127.0.0.1"] });
    const result = await outcome(serve);
    expect(result).toMatch(/^listening localhost:\d+$/);
    const port = result.split(":")[1]!;
    const client = createClient(BackupService, `127.0.0.1:${port}`);
    try {
      expect(await client.listBackups({})).toBeDefined();
    } finally {
      client.close();
    }
  });

  it("refuses a name that does not resolve, naming --listen (exit 2)", async () => {
    const serve = serveWithHosts("no-such-host.invalid:0", {});
    expect(await outcome(serve)).toBe("exited 2");
    expect(serve.stderr.join("")).toMatch(/--listen: cannot resolve "no-such-host\.invalid"/);
  });

  it("knows loopback addresses, and never a name", async () => {
    for (const address of ["127.0.0.1", "127.8.9.10", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"]) {
      expect({ address, loopback: isLoopbackAddress(address) }).toEqual({ address, loopback: true });
    }
    for (const address of ["localhost", "0.0.0.0", "::", "10.0.0.1", "::ffff:10.0.0.1", ""]) {
      expect({ address, loopback: isLoopbackAddress(address) }).toEqual({ address, loopback: false });
    }
    const none = { tls: false, auth: false, insecure: false };
    expect(listenPolicyViolation("localhost:1", ["127.0.0.1", "::1"], none)).toBeUndefined();
    expect(listenPolicyViolation("localhost:1", ["127.0.0.1", "192.0.2.1"], none)).toMatch(
      /^refusing to listen on localhost:1 \(localhost resolves to 127\.0\.0\.1, 192\.0\.2\.1\)/,
    );
    expect(await resolveListenHost("[::1]:5", async () => ["10.0.0.1"])).toEqual(["::1"]);
    expect(await resolveListenHost("box:5", async () => ["127.0.0.2", "127.0.0.2"])).toEqual(["127.0.0.2"]);
  });
});
