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

// The archive tools need none of the gRPC stack, whose modules take longer
// to load than a whole `vma list`: load only what the command uses.
if (process.argv[2] !== "vma") {
  const { registerServeCommand } = await import("./serve-command.js");
  const { registerClientCommands } = await import("./client-commands.js");
  registerServeCommand(program);
  registerClientCommands(program);
}
const { registerVmaCommands } = await import("./vma-commands.js");
registerVmaCommands(program);

await program.parseAsync(process.argv);
