// The NBD client's public face: what the image, qemu and nbd source kinds use.
// openNbdSource("nbd+unix:///drive0?socket=/run/x.sock") or
// openNbdSource({ transport: "unix", socketPath, exportName }) gives a
// DiskSource; failures are NbdError with a code (NBD_UNREACHABLE, ...).

export type { NbdBlockStatusExtent, NbdConnectionOptions } from "./connection.js";
export { DEFAULT_NBD_CONNECTION_OPTIONS, NbdConnection } from "./connection.js";
export type { NbdErrorCode } from "./errors.js";
export { NbdError } from "./errors.js";
export type { NbdExportInfo } from "./handshake.js";
export type { NbdSourceOptions } from "./nbd-source.js";
export { NbdSource, openNbdSource } from "./nbd-source.js";
export type { NbdAddress } from "./uri.js";
export { DEFAULT_NBD_PORT, formatNbdUri, parseNbdUri } from "./uri.js";
