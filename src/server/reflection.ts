// Server reflection (grpc.reflection.v1 and v1alpha, so that grpcurl and
// other tools work without the .proto files). @grpc/reflection only reads
// binary FileDescriptorProtos from the package definition it is given, so
// we hand it our generated descriptors plus those of the health and
// reflection protos that ship with their npm packages.
import { createRequire } from "node:module";
import * as path from "node:path";
import { toBinary } from "@bufbuild/protobuf";
import type { DescFile } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as protoLoader from "@grpc/proto-loader";
import type * as grpc from "@grpc/grpc-js";
import { ReflectionService } from "@grpc/reflection";
import { protoPath as healthProtoPath } from "grpc-health-check";

const require = createRequire(import.meta.url);

/** The reflection protos inside the @grpc/reflection package. */
function reflectionProtoPaths(): string[] {
  const packageRoot = path.resolve(path.dirname(require.resolve("@grpc/reflection")), "../..");
  return ["v1", "v1alpha"].map((version) =>
    path.join(packageRoot, "build/proto/grpc/reflection", version, "reflection.proto"),
  );
}

/** `file` and everything it imports, each once, as binary FileDescriptorProtos. */
export function fileDescriptorSet(file: DescFile): Buffer[] {
  const seen = new Map<string, Buffer>();
  const visit = (current: DescFile): void => {
    if (seen.has(current.name)) return;
    const bytes = toBinary(FileDescriptorProtoSchema, current.proto);
    seen.set(current.name, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    current.dependencies.forEach(visit);
  };
  visit(file);
  return [...seen.values()];
}

/**
 * Adds both reflection services to `server`, describing `files` (our
 * generated protos), the health service and the reflection services.
 */
export function addReflection(server: grpc.Server, files: readonly DescFile[]): void {
  const bundled = protoLoader.loadSync([healthProtoPath, ...reflectionProtoPaths()], {
    keepCase: true,
  });
  // ReflectionService reads nothing but `fileDescriptorProtos` from each entry.
  const ours = Object.fromEntries(
    files.map((file) => [file.name, { fileDescriptorProtos: fileDescriptorSet(file) }]),
  );
  const definition = { ...bundled, ...ours } as unknown as protoLoader.PackageDefinition;
  new ReflectionService(definition).addToServer(server);
}
