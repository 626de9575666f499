// What the local-directory store tells apart about files: who a file is
// (its identity) and why a path was refused (outside the store's directory).

/**
 * A file as the filesystem knows it, whatever its name (decimal strings:
 * inode numbers can exceed 2^53). Inode numbers are reused; the birth time
 * (ns, "0" where the filesystem keeps none) tells a new file from the old.
 */
export interface FileIdentity {
  readonly dev: string;
  readonly ino: string;
  readonly born: string;
}

/** Thrown when an archive's directory resolves outside the directory it must stay in. */
export class ArchiveOutsideError extends Error {
  readonly code = "EXDEV_CONFINEMENT";

  constructor(directory: string, confineTo: string) {
    super(`${directory} resolves outside ${confineTo}`);
    this.name = "ArchiveOutsideError";
  }
}
