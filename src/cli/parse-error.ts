// The one error the command-line parsers throw: the text given on the
// command line is malformed. The commands report it as a usage error (exit 2).

export class ArgumentSyntaxError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ArgumentSyntaxError";
  }
}
