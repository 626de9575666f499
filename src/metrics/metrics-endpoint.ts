// Serves a registry in the Prometheus text format at GET /metrics over plain
// HTTP (node:http); every other path is 404. Who may reach it is decided by
// the address it listens on (see --metrics-listen in src/cli/serve-command.ts).
import { createServer } from "node:http";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";

export const METRICS_PATH = "/metrics";

export interface MetricsEndpoint {
  /** The address actually bound, "host:port" ("[v6]:port" for IPv6). */
  readonly address: string;
  /** Stops listening and drops open connections. Safe to call more than once. */
  close(): Promise<void>;
}

/** "host" and port of "host:port" or "[v6]:port". */
function splitListen(listen: string): { host: string; port: number } {
  const colon = listen.lastIndexOf(":");
  const host = listen.slice(0, colon);
  return {
    host: host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host,
    port: Number(listen.slice(colon + 1)),
  };
}

async function respond(registry: Registry, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const url = new URL(request.url ?? "/", "http://metrics");
  if (url.pathname !== METRICS_PATH) {
    response.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("not found\n");
    return;
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" }).end();
    return;
  }
  try {
    const text = await registry.metrics();
    response.writeHead(200, { "content-type": registry.contentType });
    response.end(request.method === "HEAD" ? undefined : text);
  } catch (error) {
    response.writeHead(500, { "content-type": "text/plain; charset=utf-8" }).end(`${String(error)}\n`);
  }
}

/** Starts serving `registry` on `listen` ("host:port"; port 0 picks a free one). */
export async function startMetricsEndpoint(listen: string, registry: Registry): Promise<MetricsEndpoint> {
  const server: Server = createServer((request, response) => void respond(registry, request, response));
  const { host, port } = splitListen(listen);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  const address = bound.family === "IPv6" ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`;
  let closing: Promise<void> | undefined;
  return {
    address,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // A scraper keeps its connection alive between scrapes; drop it.
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
