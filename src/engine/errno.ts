// The errno code of a failed fs call, the one way the engine reads it.

/** The errno code of an error when it has one (ENOENT, EIO, ...); undefined otherwise. */
export function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}
