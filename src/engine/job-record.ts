// How a job is kept in the store: its status as JSON (times as Unix ms)
// plus what only recovery and deletion need (the archive store's name and
// its references of the object being written and of the committed one).
// Records written before stores (a partial path and file identity, an
// archive identity) are read as references of the local store. Rate and ETA are measurements of a running job and
// are not stored: a stored status shows rate 0 and no ETA.
import type { StoredJob } from "../store/job-store.js";
import type { ArchiveRef } from "../stores/archive-store.js";
import { DEFAULT_TARGET } from "../stores/store-targets.js";
import type { ArchiveIdentity, FileIdentity } from "./job.js";
import type { DeviceSource, DeviceSourceKind, DeviceStatus, JobState, JobStatus } from "./types.js";
import { DEVICE_SOURCE_KINDS, JOB_STATES } from "./types.js";

/** Bumped only if the record's shape changes incompatibly. */
const RECORD_VERSION = 1;

/** What a stored job holds besides its status. */
export interface JobExtras {
  /** The name of the store the archive went to ("local" in records written before stores). */
  readonly target?: string;
  /**
   * The store's reference of the archive being written, kept before the
   * first write. Recovery removes what it names, or adopts it when it was
   * committed, and nothing else.
   */
  readonly pending?: ArchiveRef;
  /** The committed archive, for a job that ended done (what delete_archive removes). */
  readonly archive?: ArchiveRef;
  /**
   * Records written before stores: where the archive was written. Without
   * partialFile nothing proves a file there is the job's (left alone); with
   * it, read back as the local store's pending reference.
   */
  readonly partialPath?: string;
  /** Records written before stores: the file created at partialPath. */
  readonly partialFile?: FileIdentity;
  /** The canonical form of the request, for a job started with a request id. */
  readonly requestFingerprint?: string;
  /**
   * Each device's source as requested, in request order: what a restarted
   * server needs to clean up after a job it did not end (a qemu source's
   * QMP socket and drive). Missing in records written before source kinds.
   */
  readonly sources?: readonly DeviceSource[];
}

/**
 * A status as stored: times as Unix milliseconds. Rate and ETA describe a
 * moment of a running job and are not stored. Derived from JobStatus so that
 * a new status field cannot be forgotten here silently.
 */
type StatusRecord = Omit<JobStatus, "startTime" | "endTime" | "updateTime" | "rate" | "etaMs"> & {
  readonly startTime: number;
  readonly endTime?: number;
  readonly updateTime: number;
};

interface JobRecord {
  readonly version: number;
  readonly status: StatusRecord;
  readonly target?: string;
  readonly pendingRef?: ArchiveRef;
  readonly archiveRef?: ArchiveRef;
  /** Before stores. */
  readonly partialPath?: string;
  readonly partialFile?: FileIdentity;
  readonly archive?: ArchiveIdentity;
  readonly requestFingerprint?: string;
  readonly sources?: readonly DeviceSource[];
}

/** A stored job, decoded. */
export interface JobEntry {
  readonly status: JobStatus;
  readonly extras: JobExtras;
}

/** The store's form of a status. */
export function toStoredJob(status: JobStatus, extras: JobExtras): StoredJob {
  const record: JobRecord = {
    version: RECORD_VERSION,
    status: {
      uuid: status.uuid,
      state: status.state,
      errorMessage: status.errorMessage,
      backupFile: status.backupFile,
      format: status.format,
      totalBytes: status.totalBytes,
      transferredBytes: status.transferredBytes,
      zeroBytes: status.zeroBytes,
      startTime: status.startTime.getTime(),
      ...(status.endTime === undefined ? {} : { endTime: status.endTime.getTime() }),
      speedLimit: status.speedLimit,
      devices: status.devices,
      revision: status.revision,
      updateTime: status.updateTime.getTime(),
      ...(status.requestId === undefined ? {} : { requestId: status.requestId }),
      ...(status.writtenBytes === undefined ? {} : { writtenBytes: status.writtenBytes }),
      ...(status.archiveLocation === undefined ? {} : { archiveLocation: status.archiveLocation }),
    },
    ...(extras.target === undefined ? {} : { target: extras.target }),
    ...(extras.pending === undefined ? {} : { pendingRef: extras.pending }),
    ...(extras.archive === undefined ? {} : { archiveRef: extras.archive }),
    ...(extras.partialPath === undefined ? {} : { partialPath: extras.partialPath }),
    ...(extras.partialFile === undefined ? {} : { partialFile: extras.partialFile }),
    ...(extras.requestFingerprint === undefined ? {} : { requestFingerprint: extras.requestFingerprint }),
    ...(extras.sources === undefined ? {} : { sources: extras.sources }),
  };
  return {
    uuid: status.uuid,
    state: status.state,
    ...(status.requestId === undefined ? {} : { requestId: status.requestId }),
    startTime: record.status.startTime,
    revision: status.revision,
    record,
  };
}

class MalformedRecordError extends Error {
  constructor(uuid: string, what: string) {
    super(`stored job ${uuid} is malformed: ${what}`);
    this.name = "MalformedRecordError";
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Reads fields of an untrusted object, naming the first one that is wrong. */
class FieldReader {
  constructor(
    private readonly uuid: string,
    private readonly object: Record<string, unknown>,
    private readonly where: string,
  ) {}

  string(name: string): string {
    const value = this.object[name];
    if (typeof value !== "string") throw this.bad(name);
    return value;
  }

  optionalString(name: string): string | undefined {
    return this.object[name] === undefined ? undefined : this.string(name);
  }

  count(name: string): number {
    const value = this.object[name];
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) throw this.bad(name);
    return value;
  }

  optionalCount(name: string): number | undefined {
    return this.object[name] === undefined ? undefined : this.count(name);
  }

  bad(name: string): MalformedRecordError {
    return new MalformedRecordError(this.uuid, `${this.where}${name}`);
  }
}

function readDevice(uuid: string, value: unknown, index: number): DeviceStatus {
  if (!isObject(value)) throw new MalformedRecordError(uuid, `status.devices[${index}]`);
  const fields = new FieldReader(uuid, value, `status.devices[${index}].`);
  return Object.freeze({
    name: fields.string("name"),
    devId: fields.count("devId"),
    size: fields.count("size"),
    transferredBytes: fields.count("transferredBytes"),
    zeroBytes: fields.count("zeroBytes"),
    // Records written before source kinds: every device was a path.
    sourceKind: readSourceKind(fields),
    source: fields.optionalString("source") ?? "",
    scratchBytes: fields.optionalCount("scratchBytes") ?? 0,
  });
}

function readSourceKind(fields: FieldReader): DeviceSourceKind {
  const kind = fields.optionalString("sourceKind") ?? "path";
  if (!(DEVICE_SOURCE_KINDS as readonly string[]).includes(kind)) throw fields.bad("sourceKind");
  return kind as DeviceSourceKind;
}

function readSource(uuid: string, value: unknown, index: number): DeviceSource {
  if (!isObject(value)) throw new MalformedRecordError(uuid, `sources[${index}]`);
  const fields = new FieldReader(uuid, value, `sources[${index}].`);
  const kind = fields.string("kind");
  switch (kind) {
    case "path":
      return { kind, path: fields.string("path") };
    case "image":
      return { kind, path: fields.string("path"), format: fields.string("format") };
    case "nbd":
      return { kind, uri: fields.string("uri") };
    case "qemu":
      return { kind, qmpSocket: fields.string("qmpSocket"), drive: fields.string("drive") };
    default:
      throw fields.bad("kind");
  }
}

function readSources(uuid: string, value: unknown): DeviceSource[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value)) throw new MalformedRecordError(uuid, "sources");
  return value.map((source: unknown, index) => readSource(uuid, source, index));
}

function readStatus(uuid: string, value: unknown): JobStatus {
  if (!isObject(value)) throw new MalformedRecordError(uuid, "status");
  const fields = new FieldReader(uuid, value, "status.");
  const state = fields.string("state");
  if (!(JOB_STATES as readonly string[]).includes(state)) throw fields.bad("state");
  const devices = value.devices;
  if (!Array.isArray(devices)) throw fields.bad("devices");
  const endTime = fields.optionalCount("endTime");
  const requestId = fields.optionalString("requestId");
  const writtenBytes = fields.optionalCount("writtenBytes");
  const archiveLocation = fields.optionalString("archiveLocation");
  const status: JobStatus = {
    uuid: fields.string("uuid"),
    state: state as JobState,
    errorMessage: fields.string("errorMessage"),
    backupFile: fields.string("backupFile"),
    format: fields.string("format"),
    totalBytes: fields.count("totalBytes"),
    transferredBytes: fields.count("transferredBytes"),
    zeroBytes: fields.count("zeroBytes"),
    startTime: new Date(fields.count("startTime")),
    ...(endTime === undefined ? {} : { endTime: new Date(endTime) }),
    speedLimit: fields.count("speedLimit"),
    devices: Object.freeze(devices.map((device: unknown, index) => readDevice(uuid, device, index))),
    rate: 0,
    revision: fields.count("revision"),
    updateTime: new Date(fields.count("updateTime")),
    ...(requestId === undefined ? {} : { requestId }),
    ...(writtenBytes === undefined ? {} : { writtenBytes }),
    ...(archiveLocation === undefined ? {} : { archiveLocation }),
  };
  if (status.uuid !== uuid) throw fields.bad("uuid");
  return Object.freeze(status);
}

function readPartialFile(uuid: string, value: unknown): FileIdentity | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value)) throw new MalformedRecordError(uuid, "partialFile");
  const fields = new FieldReader(uuid, value, "partialFile.");
  return { dev: fields.string("dev"), ino: fields.string("ino"), born: fields.string("born") };
}

/** A record written before stores: the archive identity as the local store's committed reference. */
function readLegacyArchive(uuid: string, value: unknown, backupFile: string): ArchiveRef | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value)) throw new MalformedRecordError(uuid, "archive");
  const fields = new FieldReader(uuid, value, "archive.");
  // Birth time "0": unknown, the device, inode and size decide (as they did).
  return localRef(
    backupFile,
    { dev: fields.string("dev"), ino: fields.string("ino"), born: "0" },
    {
      size: String(fields.count("size")),
    },
  );
}

function localRef(path: string, file: FileIdentity, extra: Record<string, string> = {}): ArchiveRef {
  return { store: "local", path, dev: file.dev, ino: file.ino, born: file.born, ...extra };
}

/** A store reference: an object of strings. */
function readRef(uuid: string, value: unknown, name: string): ArchiveRef | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value)) throw new MalformedRecordError(uuid, name);
  for (const [key, field] of Object.entries(value)) {
    if (typeof field !== "string") throw new MalformedRecordError(uuid, `${name}.${key}`);
  }
  return value as ArchiveRef;
}

/** Decodes a stored job. Throws when the record is not one this engine wrote. */
export function fromStoredJob(stored: StoredJob): JobEntry {
  const record = stored.record;
  if (!isObject(record)) throw new MalformedRecordError(stored.uuid, "record");
  if (record.version !== RECORD_VERSION) throw new MalformedRecordError(stored.uuid, "version");
  const fields = new FieldReader(stored.uuid, record, "");
  const partialPath = fields.optionalString("partialPath");
  // Missing in records written before request fingerprints were kept.
  const requestFingerprint = fields.optionalString("requestFingerprint");
  const partialFile = readPartialFile(stored.uuid, record.partialFile);
  const sources = readSources(stored.uuid, record.sources);
  const status = readStatus(stored.uuid, record.status);
  const target = fields.optionalString("target");
  const pending =
    readRef(stored.uuid, record.pendingRef, "pendingRef") ??
    (partialFile === undefined ? undefined : localRef(status.backupFile, partialFile));
  const archive =
    readRef(stored.uuid, record.archiveRef, "archiveRef") ??
    readLegacyArchive(stored.uuid, record.archive, status.backupFile);
  const legacy = target === undefined && (pending !== undefined || archive !== undefined);
  return {
    status,
    extras: {
      ...(target === undefined ? (legacy ? { target: DEFAULT_TARGET } : {}) : { target }),
      ...(pending === undefined ? {} : { pending }),
      ...(archive === undefined ? {} : { archive }),
      // Only a partial path nothing proves is the job's own stays as it was.
      ...(partialPath === undefined || pending !== undefined ? {} : { partialPath }),
      ...(requestFingerprint === undefined ? {} : { requestFingerprint }),
      ...(sources === undefined ? {} : { sources }),
    },
  };
}
