// The `vmabackup` command: the daemon (`serve`), its client commands and the
// archive tools (`vma ...`).
import { Command } from "commander";
import { installDaemonSignals } from "./daemon-signals.js";

// First of all, while the rest loads: SIGUSR1 must never open the inspector
// in the daemon (see daemon-signals.ts).
if (process.argv[2] === "serve") installDaemonSignals();

const program = new Command("vmabackup")
  .description("Back up virtual-machine disks into Proxmox-compatible VMA archives")
  .showHelpAfterError();

// Load only what the command uses: the archive tools need none of the gRPC
// stack, whose modules take longer to load than a whole `vma list`, and the
// daemon none of the client's (progress bars...), which would stay in its
// memory for good. Without a known command, all are registered (for help).
const command = process.argv[2];
if (command !== "vma") {
  const { registerServeCommand } = await import("./serve-command.js");
  registerServeCommand(program);
}
if (command !== "vma" && command !== "serve") {
  const { registerClientCommands } = await import("./client-commands.js");
  registerClientCommands(program);
}
if (command !== "serve") {
  const { registerVmaCommands } = await import("./vma-commands.js");
  registerVmaCommands(program);
}

await program.parseAsync(process.argv);
