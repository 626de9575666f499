// Run as a child process by the fleecing tests: freezes drives, prints the
// session's leftover record as one JSON line, then waits to be killed with
// SIGKILL, like a daemon dying mid-job without teardown.

import { freezeDrives } from "../../src/sources/qemu/fleecing.js";

const options = JSON.parse(process.argv[2] ?? "{}");
const session = await freezeDrives(options);
process.stdout.write(`${JSON.stringify({ leftovers: session.leftovers, drives: session.drives })}\n`);
setInterval(() => {}, 60_000);
