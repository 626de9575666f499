// Options and argument parsing shared by the client commands: --server and
// --json on every command, and commander adapters that turn the parsers'
// syntax errors into usage errors (exit 2).
import { InvalidArgumentError, Option, type Command } from "commander";
import { addSecurityOptions, type SecurityOptions } from "./client-connection.js";
import { EXIT_OK, EXIT_USAGE } from "./exit-codes.js";
import { ArgumentSyntaxError } from "./parse-error.js";
import { DEFAULT_SERVER_ADDRESS, parseServerAddress } from "./parse-server-address.js";

/** What addConnectionOptions adds to a command's options. */
export interface ConnectionOptions extends SecurityOptions {
  readonly server: string;
  readonly json?: boolean;
}

/** --server, --json, the TLS and token flags, and usage errors exiting 2, on every client command. */
export function addConnectionOptions(command: Command): Command {
  command
    .addOption(
      new Option("--server <host:port>", "address of the vmabackup server")
        .env("VMABACKUP_SERVER")
        .default(DEFAULT_SERVER_ADDRESS)
        .argParser(rejectingSyntaxErrors(parseServerAddress)),
    )
    .option("--json", "print proto3 JSON instead of text (one object per line while watching)");
  return addSecurityOptions(command).exitOverride((error) => process.exit(error.exitCode === 0 ? EXIT_OK : EXIT_USAGE));
}

/** Makes commander report a parser's syntax error as an invalid option or argument value. */
export function rejectingSyntaxErrors<T>(parse: (text: string) => T): (text: string) => T {
  return (text) => {
    try {
      return parse(text);
    } catch (error) {
      if (error instanceof ArgumentSyntaxError) throw new InvalidArgumentError(error.message);
      throw error;
    }
  };
}

/** For options given once per item (--device, --state): parses each and keeps them in order. */
export function collecting<T>(parse: (text: string) => T): (text: string, previous: T[] | undefined) => T[] {
  const parseOne = rejectingSyntaxErrors(parse);
  return (text, previous) => [...(previous ?? []), parseOne(text)];
}
