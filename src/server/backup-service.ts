// The BackupService RPC handlers: decode the request, call the engine,
// encode the answer. Policy and validation live in the engine; failures
// become statuses in rpc-errors.ts.
import { create, toBinary } from "@bufbuild/protobuf";
import type * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import {
  BackupResponseSchema,
  CancelBackupResponseSchema,
  DeleteBackupResponseSchema,
  ListBackupsResponseSchema,
  QueryBackupResponseSchema,
  SetBackupSpeedResponseSchema,
  WatchBackupResponseSchema,
} from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupService, WatchBackupRequest } from "../../gen/vmabackup/v1/backup_pb.js";
import type { BackupEngine, JobStatus } from "../engine/index.js";
import { EncodedMessage } from "./encoded-message.js";
import type { ImplementationOf } from "./grpc-adapter.js";
import { reportRpcFailure } from "./rpc-errors.js";
import {
  toBackupSpec,
  toBackupStatus,
  toJobSelector,
  toListQuery,
  toRequiredUuid,
  toRevision,
  toSpeedLimit,
} from "./status-codec.js";
import type { WatchOpening, WatchStreams } from "./watch-streams.js";

/** The engine operations the handlers use. */
export type JobEngine = Pick<
  BackupEngine,
  "start" | "query" | "cancel" | "watch" | "list" | "setSpeedLimit" | "delete"
>;

export interface BackupServiceDependencies {
  readonly engine: JobEngine;
  readonly watchStreams: WatchStreams;
  readonly logger: Logger;
}

/** Runs `handle` for a unary call and answers with its result or mapped failure. */
function unaryHandler<Request, Response>(
  logger: Logger,
  rpc: string,
  handle: (request: Request) => Response | Promise<Response>,
): grpc.handleUnaryCall<Request, Response> {
  return (call, callback) => {
    Promise.resolve()
      .then(() => handle(call.request))
      .then(
        (response) => {
          logger.debug({ rpc, peer: call.getPeer() }, "rpc ok");
          callback(null, response);
        },
        (error: unknown) => callback(reportRpcFailure(logger, rpc, error)),
      );
  };
}

/**
 * The WatchBackup response for `status`, encoded once however many watchers
 * it goes to: the engine hands every watcher the same status object.
 */
function watchResponseEncoder(): (status: JobStatus) => EncodedMessage {
  const encoded = new WeakMap<JobStatus, EncodedMessage>();
  return (status) => {
    let message = encoded.get(status);
    if (message === undefined) {
      const bytes = toBinary(
        WatchBackupResponseSchema,
        create(WatchBackupResponseSchema, { status: toBackupStatus(status) }),
      );
      message = new EncodedMessage(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
      encoded.set(status, message);
    }
    return message;
  };
}

/** Opens the engine subscription a WatchBackup request asks for. */
function openWatch(engine: JobEngine, request: WatchBackupRequest): WatchOpening {
  const uuid = toJobSelector(request.uuid);
  const afterRevision = toRevision(request.afterRevision);
  return {
    source: engine.watch(uuid, afterRevision === 0 ? {} : { afterRevision }),
    afterRevision,
    endless: uuid === undefined,
  };
}

export function createBackupService({
  engine,
  watchStreams,
  logger,
}: BackupServiceDependencies): ImplementationOf<typeof BackupService> {
  const encodeWatchResponse = watchResponseEncoder();
  return {
    backup: unaryHandler(logger, "Backup", async (request) => {
      const status = await engine.start(toBackupSpec(request));
      return create(BackupResponseSchema, { status: toBackupStatus(status) });
    }),

    queryBackup: unaryHandler(logger, "QueryBackup", (request) => {
      const status = engine.query(toJobSelector(request.uuid));
      return create(QueryBackupResponseSchema, {
        status: status === undefined ? undefined : toBackupStatus(status),
      });
    }),

    cancelBackup: unaryHandler(logger, "CancelBackup", async (request) => {
      const statuses = await engine.cancel(toJobSelector(request.uuid));
      return create(CancelBackupResponseSchema, { statuses: statuses.map(toBackupStatus) });
    }),

    watchBackup: (call) => {
      const { uuid } = call.request;
      logger.debug(
        { rpc: "WatchBackup", uuid, afterRevision: String(call.request.afterRevision), peer: call.getPeer() },
        "watch opened",
      );
      void watchStreams
        .serve(call, () => openWatch(engine, call.request), encodeWatchResponse, logger)
        .finally(() => logger.debug({ rpc: "WatchBackup", uuid }, "watch closed"));
    },

    listBackups: unaryHandler(logger, "ListBackups", async (request) => {
      const page = await engine.list(toListQuery(request));
      return create(ListBackupsResponseSchema, {
        statuses: page.statuses.map(toBackupStatus),
        nextPageToken: page.nextPageToken ?? "",
      });
    }),

    setBackupSpeed: unaryHandler(logger, "SetBackupSpeed", (request) => {
      const uuid = toRequiredUuid(request.uuid);
      const status = engine.setSpeedLimit(uuid, toSpeedLimit(request.speedLimit));
      return create(SetBackupSpeedResponseSchema, { status: toBackupStatus(status) });
    }),

    deleteBackup: unaryHandler(logger, "DeleteBackup", async (request) => {
      const uuid = toRequiredUuid(request.uuid);
      await engine.delete(uuid, { deleteArchive: request.deleteArchive });
      return create(DeleteBackupResponseSchema, {});
    }),
  };
}
