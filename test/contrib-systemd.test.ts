// The systemd unit in contrib/: its serve options agree with its sandbox, and
// `systemd-analyze verify` (Debian package systemd) accepts it without a
// single warning. systemd-analyze only warns about unknown keys and bad
// values, so any line about the unit counts as a failure. Skipped where
// systemd-analyze is missing.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = path.resolve(import.meta.dirname, "..");
const UNIT = path.join(ROOT, "contrib", "systemd", "vmabackup.service");
const INSTALL_DIR = "/opt/vmabackup";
const text = readFileSync(UNIT, "utf8");
/** The V8 flags `npm start` runs the daemon with: the unit must use the same. */
const START_FLAGS = (() => {
  const start: string = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8")).scripts.start;
  const match = /^node ((?:--\S+ )*)bin\/vmabackup\.js serve$/.exec(start);
  if (match === null) throw new Error(`unexpected start script: ${start}`);
  return (match[1] ?? "").trim();
})();

const analyze = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
const haveAnalyze = analyze.status === 0;
const analyzeVersion = haveAnalyze ? Number(/systemd (\d+)/.exec(analyze.stdout)?.[1] ?? 0) : 0;

/** Every value of `key` in the unit, continuation lines joined. */
function values(key: string): string[] {
  const joined = text.replace(/\\\n\s*/g, " ");
  return [...joined.matchAll(new RegExp(`^${key}=(.*)$`, "gm"))].map((match) => (match[1] ?? "").trim());
}

function serveOption(name: string): string[] {
  const args = (values("ExecStart")[0] ?? "").split(/\s+/);
  return args.flatMap((arg, i) => (arg === name ? [args[i + 1] ?? ""] : []));
}

const tmp = mkdtempSync(path.join(os.tmpdir(), "vmabackup-unit-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The unit with the install dir pointing at this checkout, so that ExecStart exists. */
function unitForThisCheckout(): string {
  const file = path.join(tmp, "vmabackup.service");
  writeFileSync(file, text.replaceAll(INSTALL_DIR, ROOT));
  return file;
}

describe("contrib/systemd/vmabackup.service", () => {
  it("runs the built command from the install dir with npm start's V8 flags, and the state and backup dirs it may write", () => {
    expect(START_FLAGS).toContain("--max-semi-space-size=");
    expect(values("ExecStart")[0]).toMatch(
      new RegExp(`^${INSTALL_DIR}/node_modules/\\.bin/node ${START_FLAGS} ${INSTALL_DIR}/bin/vmabackup\\.js serve `),
    );
    expect(serveOption("--state-dir")).toEqual([`/var/lib/${values("StateDirectory")[0]}`]);
    const [backupDir] = serveOption("--backup-dir");
    expect(values("ReadWritePaths").join(" ").split(/\s+/)).toContain(backupDir);
    expect(serveOption("--listen")[0]).toMatch(/^127\.0\.0\.1:/);
  });

  it("is sandboxed", () => {
    for (const [key, value] of Object.entries({
      Type: "exec",
      User: "vmabackup",
      SupplementaryGroups: "disk",
      ProtectSystem: "strict",
      ProtectHome: "yes",
      PrivateTmp: "yes",
      NoNewPrivileges: "yes",
      CapabilityBoundingSet: "",
      DevicePolicy: "closed",
      DeviceAllow: "block-* r",
    })) {
      expect(values(key), key).toEqual([value]);
    }
    expect(values("RestrictAddressFamilies")).toEqual(["AF_INET AF_INET6 AF_UNIX"]);
  });

  it.skipIf(!haveAnalyze)("passes systemd-analyze verify without a warning", () => {
    const file = unitForThisCheckout();
    const result = spawnSync("systemd-analyze", ["verify", file], { encoding: "utf8" });
    const aboutUnit = `${result.stdout}${result.stderr}`
      .split("\n")
      .filter((line) => line.includes("vmabackup.service") || line.includes(tmp));
    expect(aboutUnit).toEqual([]);
    expect(result.status).toBe(0);
  });

  it.skipIf(analyzeVersion < 250)("keeps systemd-analyze security's exposure at 2.0 or below", () => {
    const file = unitForThisCheckout();
    const result = spawnSync("systemd-analyze", ["security", "--offline=yes", "--threshold=20", "--no-pager", file], {
      encoding: "utf8",
    });
    expect(result.stdout).toMatch(/Overall exposure level for vmabackup\.service: [0-2]\.\d/);
    expect(result.status).toBe(0);
  });
});
