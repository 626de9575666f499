// The `vmabackup` command: the daemon (`serve`), its client commands and the
// archive tools (`vma ...`).
import { Command } from "commander";
import { registerClientCommands } from "./client-commands.js";
import { registerServeCommand } from "./serve-command.js";
import { registerVmaCommands } from "./vma-commands.js";

const program = new Command("vmabackup")
  .description("Back up virtual-machine disks into Proxmox-compatible VMA archives")
  .showHelpAfterError();

registerServeCommand(program);
registerClientCommands(program);
registerVmaCommands(program);

await program.parseAsync(process.argv);
