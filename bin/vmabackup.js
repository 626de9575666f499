#!/usr/bin/env node
// Entry point for the `vmabackup` command: runs the TypeScript sources through tsx.
import { register } from "tsx/esm/api";

// The daemon must never open Node's inspector on SIGUSR1: take the signal
// before the sources compile (src/cli/daemon-signals.ts logs it later).
if (process.argv[2] === "serve") process.on("SIGUSR1", () => {});

register();
await import("../src/cli/main.ts");
