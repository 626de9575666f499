// Holds the import rules between the layers of README.md ("Layout"): lower layers never
// reach up, and generated protobuf code stays at the transport edge.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: "vma-is-pure",
      comment: "src/vma is the format only: it imports nothing else of ours.",
      severity: "error",
      from: { path: "^src/vma/" },
      to: { path: "^(src/(?!vma/)|gen/)" },
    },
    {
      name: "drivers-only-use-vma",
      comment: "Drivers know the format, never the engine, the server or gRPC.",
      severity: "error",
      from: { path: "^src/drivers/" },
      to: { path: "^(src/(engine|server|cli|store)/|gen/)" },
    },
    {
      name: "stores-are-storage",
      comment: "src/stores keeps bytes (local dir, S3, compression); it knows no format, engine or gRPC.",
      severity: "error",
      from: { path: "^src/stores/" },
      to: { path: "^(src/(?!stores/)|gen/)" },
    },
    {
      name: "sources-below-engine",
      comment: "src/sources reads disks; the engine, the transport and the stores build on it, never the reverse.",
      severity: "error",
      from: { path: "^src/sources/" },
      to: { path: "^(src/(engine|server|cli|client|wire|metrics|drivers|store|stores)/|gen/)" },
    },
    {
      name: "engine-below-transport",
      comment: "The engine speaks plain types; it never imports the server, the CLI or gen/.",
      severity: "error",
      from: { path: "^src/engine/" },
      to: { path: "^(src/(server|cli|client|wire)/|gen/)" },
    },
    {
      name: "engine-public-face",
      comment: "Outside src/engine, the engine is reached only through src/engine/index.ts (tests may use internals).",
      severity: "error",
      from: { path: "^src/(?!engine/)" },
      to: { path: "^src/engine/(?!index\\.ts$)" },
    },
    {
      name: "client-uses-gen-and-wire",
      comment: "src/client (typed client, error details, tokens) stands on the generated code and the shared wire codec only.",
      severity: "error",
      from: { path: "^src/client/" },
      to: { path: "^src/(?!client/|wire/)" },
    },
    {
      name: "server-not-client",
      comment: "The server never uses the client side; what both need lives in src/wire.",
      severity: "error",
      from: { path: "^src/server/" },
      to: { path: "^src/client/" },
    },
    {
      name: "wire-is-shared-codec",
      comment: "src/wire holds what both ends of a call agree on (metadata keys, message codec); it imports nothing else of ours.",
      severity: "error",
      from: { path: "^src/wire/" },
      to: { path: "^src/(?!wire/)" },
    },
    {
      name: "store-is-standalone",
      severity: "error",
      from: { path: "^src/store/" },
      to: { path: "^(src/(?!store/)|gen/)" },
    },
    {
      name: "nothing-imports-cli",
      severity: "error",
      from: { path: "^src/(?!cli/)" },
      to: { path: "^src/cli/" },
    },
    {
      name: "metrics-below-transport",
      comment: "src/metrics watches the engine and wraps gRPC calls; the server and the CLI wire it in, never the reverse.",
      severity: "error",
      from: { path: "^src/metrics/" },
      to: { path: "^(src/(server|cli|drivers|store|vma)/|gen/)" },
    },
    {
      name: "only-transport-uses-metrics",
      comment: "The engine and below stay free of metrics; the server and the CLI wire them in.",
      severity: "error",
      from: { path: "^src/(?!server/|cli/|metrics/)" },
      to: { path: "^src/metrics/" },
    },
    {
      name: "prom-client-only-in-metrics",
      comment: "prom-client lives behind src/metrics, so the engine never grows metric calls.",
      severity: "error",
      from: { path: "^src/(?!metrics/)" },
      to: { path: "node_modules/prom-client" },
    },
    {
      name: "no-circular",
      severity: "error",
      from: {},
      to: { circular: true },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { extensions: [".ts", ".js"] },
  },
};
