// Server reflection, grpc.reflection.v1 and v1alpha (older grpcurl speaks
// only v1alpha), so that grpcurl, `buf curl` and other tools work without
// the .proto files. Served from DescriptorIndex (gen/descriptors.binpb: what
// buf compiled, with comments), not from proto-loader's reconstructions,
// which strict clients refuse. The two versions have identical messages on
// the wire, so one implementation with the v1 types serves both paths.
//
// A caller the auth interceptor marked anonymous (reflection-scope.ts) sees
// only the public files: health and reflection, which are standard and tell
// nothing about this server beyond what `Health/Check` does, and the
// google.rpc error types, so that it can decode the details of its
// UNAUTHENTICATED status. The backup API needs a token to be seen.
import { create } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import type { ServerReflectionRequest, ServerReflectionResponse } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { DescriptorIndex } from "./descriptor-index.js";
import { messageDeserializer, messageSerializer, methodPath } from "../wire/message-codec.js";
import { PUBLIC_SCOPE, REFLECTION_SCOPE_KEY } from "./reflection-scope.js";

/** Files any caller may see (with their imports). */
export const PUBLIC_FILES: readonly string[] = [
  "grpc/health/v1/health.proto",
  "grpc/reflection/v1/reflection.proto",
  "grpc/reflection/v1alpha/reflection.proto",
  "google/rpc/status.proto",
  "google/rpc/error_details.proto",
];

type Answer = NonNullable<MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"]>;

class ReflectionError extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
  ) {
    super(message);
  }
}

/** What one caller may see of the index. */
class ReflectionView {
  private readonly visible: ReadonlySet<string>;

  constructor(
    private readonly index: DescriptorIndex,
    visibleFiles: Iterable<string>,
  ) {
    this.visible = new Set(index.closure(visibleFiles));
  }

  answer(request: ServerReflectionRequest): Answer {
    const query = request.messageRequest;
    switch (query.case) {
      case "listServices":
        return { case: "listServicesResponse", value: { service: this.services().map((name) => ({ name })) } };
      case "fileByFilename":
        return this.files(this.visibleFile(query.value, `file ${query.value} not found`));
      case "fileContainingSymbol":
        return this.files(this.visibleFile(this.index.fileOfSymbol(query.value), `symbol ${query.value} not found`));
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = query.value;
        this.visibleMessage(containingType);
        const file = this.index.extensionsOf(containingType).get(extensionNumber);
        return this.files(this.visibleFile(file, `extension ${extensionNumber} of ${containingType} not found`));
      }
      case "allExtensionNumbersOfType": {
        // A known type without extensions is an empty list, not NOT_FOUND:
        // grpcurl up to 1.8.7 gives up on a type (and prints its bytes) otherwise.
        this.visibleMessage(query.value);
        const numbers = [...this.index.extensionsOf(query.value)]
          .filter(([, file]) => this.visible.has(file))
          .map(([number]) => number);
        return {
          case: "allExtensionNumbersResponse",
          value: { baseTypeName: query.value, extensionNumber: numbers.sort((a, b) => a - b) },
        };
      }
      default:
        throw new ReflectionError(grpc.status.UNIMPLEMENTED, "unknown reflection request");
    }
  }

  private services(): string[] {
    return [...this.visible].flatMap((name) => {
      const file = this.index.file(name)!.proto;
      const prefix = file.package === "" ? "" : `${file.package}.`;
      return file.service.map((service) => `${prefix}${service.name}`);
    });
  }

  /** `name` when this caller may see it; NOT_FOUND (as for a file that does not exist) otherwise. */
  private visibleFile(name: string | undefined, notFound: string): string {
    if (name === undefined || !this.visible.has(name)) throw new ReflectionError(grpc.status.NOT_FOUND, notFound);
    return name;
  }

  private visibleMessage(typeName: string): void {
    const file = this.index.isMessage(typeName) ? this.index.fileOfSymbol(typeName) : undefined;
    this.visibleFile(file, `message type ${typeName} not found`);
  }

  /** The file and everything it imports, the file first. */
  private files(name: string): Answer {
    const fileDescriptorProto = this.index.closure([name]).map((file) => this.index.file(file)!.bytes);
    return { case: "fileDescriptorResponse", value: { fileDescriptorProto } };
  }
}

export class Reflection {
  private readonly full: ReflectionView;
  private readonly public: ReflectionView;

  constructor(index: DescriptorIndex = DescriptorIndex.load()) {
    this.full = new ReflectionView(index, index.fileNames());
    this.public = new ReflectionView(index, PUBLIC_FILES);
  }

  /** Registers grpc.reflection.v1 and v1alpha on `server`. */
  addToServer(server: grpc.Server): void {
    for (const service of [ServerReflection, ServerReflectionV1alpha]) {
      const definition: grpc.ServiceDefinition = {
        serverReflectionInfo: {
          path: methodPath(service.method.serverReflectionInfo),
          requestStream: true,
          responseStream: true,
          requestSerialize: messageSerializer(ServerReflectionRequestSchema),
          requestDeserialize: messageDeserializer(ServerReflectionRequestSchema),
          responseSerialize: messageSerializer(ServerReflectionResponseSchema),
          responseDeserialize: messageDeserializer(ServerReflectionResponseSchema),
          originalName: "ServerReflectionInfo",
        },
      };
      server.addService(definition, { serverReflectionInfo: (call: ReflectionCall) => this.serve(call) });
    }
  }

  private serve(call: ReflectionCall): void {
    const anonymous = call.metadata.get(REFLECTION_SCOPE_KEY).includes(PUBLIC_SCOPE);
    const view = anonymous ? this.public : this.full;
    call.on("data", (request: ServerReflectionRequest) => {
      let messageResponse: Answer;
      try {
        messageResponse = view.answer(request);
      } catch (error) {
        if (!(error instanceof ReflectionError)) throw error;
        messageResponse = { case: "errorResponse", value: { errorCode: error.code, errorMessage: error.message } };
      }
      call.write(
        create(ServerReflectionResponseSchema, { validHost: request.host, originalRequest: request, messageResponse }),
      );
    });
    call.on("end", () => call.end());
    call.on("error", () => {}); // a client that goes away mid-stream is not our failure
  }
}

type ReflectionCall = grpc.ServerDuplexStream<ServerReflectionRequest, ServerReflectionResponse>;

/** Read once per process: every server of it serves the same files. */
let shared: Reflection | undefined;

/** Adds both reflection services to `server`, describing every file of gen/descriptors.binpb. */
export function addReflection(server: grpc.Server): void {
  shared ??= new Reflection();
  shared.addToServer(server);
}
