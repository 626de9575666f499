// Signals the daemon survives instead of obeying Node's defaults:
// - SIGUSR1 makes Node open its inspector on 127.0.0.1:9229, without any
//   authentication: anyone on the machine could attach and run code as the
//   daemon, which reads raw disks. A listener of our own replaces that
//   default (Node 20 has no --disable-sigusr1; Node 22.14+ and 24 have it, and
//   the listener works there too).
// - SIGHUP ends a process by default, with no log line and no cleanup; it
//   comes from closed terminals, logrotate and `systemctl reload` habits.
//   The daemon logs to stdout and has no files to reopen, so it ignores it.
// Both are logged once the logger exists; before that they are ignored
// silently.
import type { Logger } from "pino";

let logger: Logger | undefined;
let installed = false;

function onSigusr1(): void {
  logger?.warn({ signal: "SIGUSR1" }, "SIGUSR1 ignored: the Node.js inspector is disabled in the daemon");
}

function onSighup(): void {
  logger?.info({ signal: "SIGHUP" }, "SIGHUP ignored: the daemon logs to stdout and has nothing to reload");
}

/**
 * Installs the SIGUSR1 and SIGHUP listeners. Call it as early as possible:
 * until it runs, SIGUSR1 still opens the inspector. Safe to call twice.
 */
export function installDaemonSignals(): void {
  if (installed) return;
  installed = true;
  process.on("SIGUSR1", onSigusr1);
  process.on("SIGHUP", onSighup);
}

/** From now on the ignored signals are logged to `target`. */
export function logDaemonSignalsTo(target: Logger): void {
  logger = target;
}
