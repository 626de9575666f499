// The storage seam, after restic's Backend: the format writes a byte stream
// into an object the store created exclusively; the store makes it visible
// only on commit (durable first), or leaves nothing on abort. Everything a
// later process needs to find, check or remove the object again is in an
// opaque reference the job record keeps; the engine never looks inside it.
import type { Readable } from "node:stream";

/**
 * A store's own description of an object (JSON-safe strings only), kept in
 * the job record. Two kinds: the pending reference of an object being
 * written (what a crashed job left: a partial file, a multipart upload id)
 * and the committed reference of a finished one (which object exactly: the
 * file's device and inode, the S3 ETag).
 */
export type ArchiveRef = Readonly<Record<string, string>>;

export type Removal = "removed" | "absent";

/** What stat() knows of a committed object. */
export interface ArchiveInfo {
  /** Stored (possibly compressed) size in bytes. */
  readonly size: number;
  /** When the object was last written (Unix ms). */
  readonly modifiedAt: number;
  /** Where it is, for humans: a path or s3://bucket/key. */
  readonly location: string;
}

/**
 * One object being written. write() calls append in call order; each
 * resolves once the chunks' memory is no longer referenced and the store is
 * ready for more (back-pressure), so calls may overlap. Then commit() or
 * abort(), once.
 */
export interface ArchiveUpload {
  /** Recorded before the first write: lets a later process remove what a crash left. */
  readonly pending: ArchiveRef;
  /** Where the object will be once committed, for humans. */
  readonly location: string;
  /** Bytes the store has accepted so far, as stored (after compression). */
  readonly bytesWritten: number;
  write(chunks: readonly Uint8Array[]): Promise<void>;
  /**
   * Makes the object durable, then visible under its name, never replacing
   * an existing one (ArchiveExistsError). Call it once every write() has
   * resolved. Resolves with the committed reference. On failure nothing is
   * visible; call abort() to clean up.
   */
  commit(): Promise<ArchiveRef>;
  /** Stops writing and removes what was written. Safe to call more than once; a no-op after commit. */
  abort(): Promise<void>;
}

export interface ArchiveStore {
  /** The target name clients pick it by, e.g. "local" or "offsite". */
  readonly name: string;
  /** Where an object named `key` is, for humans: a path or s3://bucket/key. */
  location(key: string): string;
  /**
   * Creates `key` exclusively (ArchiveExistsError when it exists; the local
   * store also refuses a second writer of the same key). `key` is a
   * relative, "/"-separated name (checkKey).
   */
  create(key: string): Promise<ArchiveUpload>;
  /**
   * The committed reference of a pending object that was committed after
   * all (the job died between commit and recording it); undefined when it
   * was not, or when the object under its name is someone else's.
   */
  findCommitted(pending: ArchiveRef): Promise<ArchiveRef | undefined>;
  /** The committed object `ref` names; undefined when it is gone. Throws ArchiveKeptError when replaced. */
  stat(ref: ArchiveRef): Promise<ArchiveInfo | undefined>;
  /** Removes the committed object `ref` names, only when it is still that object (ArchiveKeptError otherwise). */
  remove(ref: ArchiveRef): Promise<Removal>;
  /** Of these pending references (held by job records), those whose leftovers still exist. */
  listLeftovers(held: readonly ArchiveRef[]): Promise<ArchiveRef[]>;
  /** Removes what a crashed job left for `pending`; never a committed object. */
  discardLeftover(pending: ArchiveRef): Promise<Removal>;
  /** The bytes of the committed object `key`, streamed. ArchiveMissingError when absent. */
  read(key: string): Promise<Readable>;
}

/** The object name is taken. */
export class ArchiveExistsError extends Error {
  readonly code = "EEXIST";

  constructor(location: string) {
    super(`${location} already exists`);
    this.name = "ArchiveExistsError";
  }
}

/** There is no such object. */
export class ArchiveMissingError extends Error {
  readonly code = "ENOENT";

  constructor(location: string) {
    super(`${location} does not exist`);
    this.name = "ArchiveMissingError";
  }
}

/** A reference that does not name this store's object, or an object that is not the one committed. */
export class ArchiveKeptError extends Error {
  readonly why: "not-the-archive" | "not-a-file" | "outside-store" | "bad-reference";

  constructor(why: ArchiveKeptError["why"], message: string) {
    super(message);
    this.name = "ArchiveKeptError";
    this.why = why;
  }
}

/** The key is not a name the store can hold. */
export class ArchiveKeyError extends Error {
  constructor(key: string, why: string) {
    super(`archive name ${JSON.stringify(key)} ${why}`);
    this.name = "ArchiveKeyError";
  }
}

/**
 * Throws ArchiveKeyError unless `key` is a relative "/"-separated name
 * without empty, "." or ".." parts: keys mean the same in every store.
 */
export function checkKey(key: string): void {
  if (key === "" || key.startsWith("/")) throw new ArchiveKeyError(key, "must be a relative name");
  if (key.includes("\0")) throw new ArchiveKeyError(key, "must not contain NUL");
  for (const part of key.split("/")) {
    if (part === "" || part === "." || part === "..") {
      throw new ArchiveKeyError(key, "must not have empty, '.' or '..' parts");
    }
  }
}

/** The string field `field` of `ref`; ArchiveKeptError when missing. */
export function refField(ref: ArchiveRef, field: string): string {
  const value = ref[field];
  if (typeof value !== "string") throw new ArchiveKeptError("bad-reference", `the archive reference has no ${field}`);
  return value;
}
