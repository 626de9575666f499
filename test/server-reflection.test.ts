// Server reflection (v1 and v1alpha) and the health service, seen by
// clients built from the protos that ship with @grpc/reflection and
// grpc-health-check, the way grpcurl or a load balancer would see them.
import { createRequire } from "node:module";
import * as path from "node:path";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { service as healthService } from "grpc-health-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestServer } from "./helpers/test-server.js";
import type { TestServer } from "./helpers/test-server.js";

const require = createRequire(import.meta.url);
const reflectionPackageRoot = path.resolve(path.dirname(require.resolve("@grpc/reflection")), "../..");

interface ReflectionResponse {
  list_services_response?: { service: Array<{ name: string }> };
  all_extension_numbers_response?: { base_type_name: string; extension_number: number[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_code: number; error_message: string };
}

type ReflectionRequest =
  | { list_services: string }
  | { file_containing_symbol: string }
  | { file_by_filename: string }
  | { all_extension_numbers_of_type: string }
  | { file_containing_extension: { containing_type: string; extension_number: number } };

/** A reflection client for one protocol version, speaking through a bidi stream. */
class ReflectionClient {
  private readonly client: grpc.Client & {
    ServerReflectionInfo(): grpc.ClientDuplexStream<ReflectionRequest, ReflectionResponse>;
  };

  constructor(version: "v1" | "v1alpha", address: string) {
    const definition = protoLoader.loadSync(
      path.join(reflectionPackageRoot, "build/proto/grpc/reflection", version, "reflection.proto"),
      { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
    );
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
      grpc: { reflection: Record<string, { ServerReflection: grpc.ServiceClientConstructor }> };
    };
    const Constructor = loaded.grpc.reflection[version]!.ServerReflection;
    this.client = new Constructor(address, grpc.credentials.createInsecure()) as unknown as typeof this.client;
  }

  /** Sends one request on a fresh stream and returns the single response. */
  ask(request: ReflectionRequest): Promise<ReflectionResponse> {
    return new Promise((resolve, reject) => {
      const stream = this.client.ServerReflectionInfo();
      stream.once("data", (response: ReflectionResponse) => {
        resolve(response);
        stream.end();
      });
      stream.once("error", reject);
      stream.write(request);
    });
  }

  async fileContainingSymbol(symbol: string): Promise<FileDescriptorProto[]> {
    const response = await this.ask({ file_containing_symbol: symbol });
    expect(response.error_response).toBeFalsy();
    return response.file_descriptor_response!.file_descriptor_proto.map((bytes) =>
      fromBinary(FileDescriptorProtoSchema, bytes),
    );
  }

  async fileByName(name: string): Promise<FileDescriptorProto[]> {
    const response = await this.ask({ file_by_filename: name });
    expect(response.error_response).toBeFalsy();
    return response.file_descriptor_response!.file_descriptor_proto.map((bytes) =>
      fromBinary(FileDescriptorProtoSchema, bytes),
    );
  }

  close(): void {
    this.client.close();
  }
}

let server: TestServer;

beforeAll(async () => {
  server = await startTestServer();
});

afterAll(async () => {
  await server.stop();
});

describe.each(["v1", "v1alpha"] as const)("reflection %s", (version) => {
  let reflection: ReflectionClient;
  beforeAll(() => {
    reflection = new ReflectionClient(version, server.address);
  });
  afterAll(() => reflection.close());

  it("lists our service, health and both reflection services", async () => {
    const response = await reflection.ask({ list_services: "*" });
    const names = response.list_services_response!.service.map((entry) => entry.name).sort();
    expect(names).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      "vmabackup.v1.BackupService",
    ]);
  });

  it("resolves BackupService to descriptors a client can be built from", async () => {
    const files = await reflection.fileContainingSymbol("vmabackup.v1.BackupService");
    const main = files.find((file) => file.name === "vmabackup/v1/backup.proto");
    expect(main).toBeDefined();
    // Fetch the imports by name, as grpcurl does, and build a registry:
    // this fails when any referenced type is missing.
    const all = new Map(files.map((file) => [file.name, file]));
    for (const dependency of main!.dependency) {
      if (!all.has(dependency)) {
        for (const file of await reflection.fileByName(dependency)) all.set(file.name, file);
      }
    }
    const registry = createFileRegistry(main!, (name) => all.get(name));
    const service = registry.getService("vmabackup.v1.BackupService");
    expect(service?.methods.map((method) => method.name)).toEqual([
      "Backup",
      "QueryBackup",
      "CancelBackup",
      "WatchBackup",
      "ListBackups",
      "SetBackupSpeed",
      "DeleteBackup",
    ]);
    expect(service?.method.watchBackup?.methodKind).toBe("server_streaming");
    const status = registry.getMessage("vmabackup.v1.BackupStatus");
    expect(status?.field.startTime?.message?.typeName).toBe("google.protobuf.Timestamp");
  });

  it("resolves the google.rpc error details, so grpcurl can print them", async () => {
    for (const symbol of ["google.rpc.Status", "google.rpc.ErrorInfo", "google.rpc.BadRequest"]) {
      const files = await reflection.fileContainingSymbol(symbol);
      const [, pkg, name] = /^(.*)\.([^.]+)$/.exec(symbol)!;
      const declares = (file: FileDescriptorProto): boolean =>
        file.package === pkg && file.messageType.some((message) => message.name === name);
      expect(files.some(declares)).toBe(true);
    }
  });

  it("resolves the health service too", async () => {
    const files = await reflection.fileContainingSymbol("grpc.health.v1.Health");
    expect(files.some((file) => file.service.some((service) => service.name === "Health"))).toBe(true);
  });

  it("serves backup.proto with its comments, for grpcurl describe", async () => {
    const [main] = await reflection.fileContainingSymbol("vmabackup.v1.BackupService");
    const comments = (main!.sourceCodeInfo?.location ?? []).map((location) => location.leadingComments);
    expect(comments).toContainEqual(expect.stringContaining("BackupService starts, inspects, cancels and follows"));
  });

  it("answers extension queries for known types with an empty list", async () => {
    for (const type of ["vmabackup.v1.BackupRequest", "google.rpc.ErrorInfo", "grpc.health.v1.HealthCheckRequest"]) {
      const response = await reflection.ask({ all_extension_numbers_of_type: type });
      expect(response.error_response ?? null).toBeNull();
      expect(response.all_extension_numbers_response).toEqual({ base_type_name: type, extension_number: [] });
    }
    const unknown = await reflection.ask({ all_extension_numbers_of_type: "no.such.Message" });
    expect(unknown.error_response?.error_code).toBe(grpc.status.NOT_FOUND);
    const extension = await reflection.ask({
      file_containing_extension: { containing_type: "vmabackup.v1.BackupRequest", extension_number: 100 },
    });
    expect(extension.error_response?.error_code).toBe(grpc.status.NOT_FOUND);
  });

  it("describes health as protoc does: StatusesEntry, fully qualified type names", async () => {
    const files = await reflection.fileContainingSymbol("grpc.health.v1.Health");
    const health = files.find((file) => file.package === "grpc.health.v1")!;
    expect(health.name).toBe("grpc/health/v1/health.proto");
    const list = health.messageType.find((message) => message.name === "HealthListResponse")!;
    expect(list.nestedType.map((message) => message.name)).toEqual(["StatusesEntry"]);
    const typeNames = [
      ...health.messageType.flatMap((message) => [...message.field, ...message.nestedType.flatMap((n) => n.field)]),
    ]
      .map((field) => field.typeName)
      .filter((name) => name !== "");
    const methodTypes = health.service.flatMap((service) => service.method.flatMap((m) => [m.inputType, m.outputType]));
    for (const name of [...typeNames, ...methodTypes]) expect(name).toMatch(/^\.grpc\.health\.v1\./);
    // A registry builds from it, as a strict client would.
    expect(createFileRegistry(health, () => undefined).getService("grpc.health.v1.Health")?.methods.length).toBe(3);
  });

  it("answers unknown symbols with NOT_FOUND", async () => {
    const response = await reflection.ask({ file_containing_symbol: "no.such.Service" });
    expect(response.error_response?.error_code).toBe(grpc.status.NOT_FOUND);
  });
});

describe("health", () => {
  const HealthClient = grpc.makeGenericClientConstructor(healthService, "Health");

  function check(client: grpc.Client, serviceName: string): Promise<{ status: string }> {
    return new Promise((resolve, reject) => {
      (
        client as unknown as {
          check(request: object, callback: grpc.requestCallback<{ status: string }>): void;
        }
      ).check({ service: serviceName }, (error, response) => (error ? reject(error) : resolve(response!)));
    });
  }

  /** A Watch call; its end (a cancel, a forced shutdown) is no test failure. */
  function watch(client: grpc.Client, serviceName: string): grpc.ClientReadableStream<{ status: string }> {
    const stream = (
      client as unknown as {
        watch(request: object): grpc.ClientReadableStream<{ status: string }>;
      }
    ).watch({ service: serviceName });
    stream.on("error", () => {});
    return stream;
  }

  it("reports SERVING overall and for BackupService, NOT_FOUND for others", async () => {
    const client = new HealthClient(server.address, grpc.credentials.createInsecure());
    try {
      expect((await check(client, "")).status).toBe("SERVING");
      expect((await check(client, "vmabackup.v1.BackupService")).status).toBe("SERVING");
      await expect(check(client, "nope.Service")).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    } finally {
      client.close();
    }
  });

  it("answers a watch of a service it does not serve with SERVICE_UNKNOWN, and lists what it serves", async () => {
    const client = new HealthClient(server.address, grpc.credentials.createInsecure());
    try {
      const stream = watch(client, "nope.Service");
      const first = await new Promise<{ status: string }>((resolve) => stream.once("data", resolve));
      expect(first.status).toBe("SERVICE_UNKNOWN");
      stream.cancel();
      const list = await new Promise<{ statuses: Record<string, { status: string }> }>((resolve, reject) =>
        (
          client as unknown as {
            list(
              request: object,
              callback: grpc.requestCallback<{ statuses: Record<string, { status: string }> }>,
            ): void;
          }
        ).list({}, (error, response) => (error ? reject(error) : resolve(response!))),
      );
      expect(list.statuses).toEqual({
        "": { status: "SERVING" },
        "vmabackup.v1.BackupService": { status: "SERVING" },
      });
    } finally {
      client.close();
    }
  });

  it("turns NOT_SERVING when the server shuts down", async () => {
    const own = await startTestServer();
    const client = new HealthClient(own.address, grpc.credentials.createInsecure());
    try {
      const stream = watch(client, "vmabackup.v1.BackupService");
      const statuses: string[] = [];
      const notServing = new Promise<void>((resolve) =>
        stream.on("data", (message: { status: string }) => {
          statuses.push(message.status);
          if (message.status === "NOT_SERVING") resolve();
        }),
      );
      await new Promise<void>((resolve) => stream.once("data", () => resolve()));
      const stopping = own.stop();
      await notServing;
      await stopping;
      expect(statuses).toEqual(["SERVING", "NOT_SERVING"]);
    } finally {
      client.close();
      await own.stop();
    }
  });
});
