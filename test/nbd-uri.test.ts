// NBD URIs: what is accepted, its canonical form, and what is refused with a reason.

import { describe, expect, it } from "vitest";
import { formatNbdUri, NbdError, openNbdSource, parseNbdUri } from "../src/sources/nbd/index.js";

describe("NBD URIs", () => {
  it("parses TCP URIs with and without a port, IPv6 hosts and encoded export names", () => {
    expect(parseNbdUri("nbd://127.0.0.1:10900/disk0")).toEqual({
      transport: "tcp",
      host: "127.0.0.1",
      port: 10900,
      exportName: "disk0",
    });
    expect(parseNbdUri("nbd://Example.ORG")).toEqual({
      transport: "tcp",
      host: "example.org",
      port: 10809,
      exportName: "",
    });
    expect(parseNbdUri("nbd://[::1]/a%20b/c")).toEqual({
      transport: "tcp",
      host: "::1",
      port: 10809,
      exportName: "a b/c",
    });
  });

  it("parses unix socket URIs, with an empty export name too", () => {
    expect(parseNbdUri("nbd+unix:///drive-scsi0?socket=/run/x/../qemu.sock")).toEqual({
      transport: "unix",
      socketPath: "/run/qemu.sock",
      exportName: "drive-scsi0",
    });
    expect(parseNbdUri("nbd+unix:///?socket=/tmp/s.sock")).toMatchObject({ exportName: "", socketPath: "/tmp/s.sock" });
    expect(parseNbdUri("nbd+unix://?socket=/tmp/s.sock")).toMatchObject({ exportName: "" });
  });

  it("formats one canonical URI for every spelling of an export", () => {
    const spellings = ["nbd://LOCALHOST/e%78port", "nbd://localhost:10809/export"];
    expect(new Set(spellings.map((uri) => formatNbdUri(parseNbdUri(uri))))).toEqual(
      new Set(["nbd://localhost:10809/export"]),
    );
    const unix = "nbd+unix:///my%20disk?socket=/tmp//a.sock";
    expect(formatNbdUri(parseNbdUri(unix))).toBe("nbd+unix:///my%20disk?socket=/tmp/a.sock");
    expect(parseNbdUri(formatNbdUri(parseNbdUri(unix)))).toEqual(parseNbdUri(unix));
    expect(formatNbdUri(parseNbdUri("nbd://[::1]:1/x"))).toBe("nbd://[::1]:1/x");
  });

  it.each([
    ["nbds://host/export", /TLS .*not supported/],
    ["nbds+unix:///e?socket=/s", /TLS .*not supported/],
    ["http://host/export", /unsupported scheme "http:\/\/"/],
    ["nbd+vsock://2/export", /unsupported scheme/],
    ["nbd:///export", /needs a host/],
    ["nbd://host:0/export", /port/],
    ["nbd://user:pw@host/export", /user names/],
    ["nbd://host/export?tls-certificates=/x", /unsupported query parameter "tls-certificates"/],
    ["nbd+unix:///export", /exactly one \?socket=/],
    ["nbd+unix:///export?socket=relative.sock", /absolute/],
    ["nbd+unix://host/export?socket=/s", /takes no host/],
    ["nbd+unix:///e?socket=/a&socket=/b", /exactly one/],
    ["nbd://host/%zz", /percent-encoding/],
    ["not a uri", /expected nbd:\/\//],
  ])("refuses %s saying what to fix", (uri, why) => {
    let error: unknown;
    try {
      parseNbdUri(uri);
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(NbdError);
    expect((error as NbdError).code).toBe("NBD_BAD_URI");
    expect((error as Error).message).toMatch(why);
    expect((error as Error).message).toContain(JSON.stringify(uri));
  });

  it("refuses options that are not positive integers before connecting", async () => {
    const uri = "nbd+unix:///?socket=/nonexistent/nbd.sock";
    await expect(openNbdSource(uri, { requestTimeoutMs: 0 })).rejects.toThrow(
      /requestTimeoutMs must be a positive integer/,
    );
    await expect(openNbdSource(uri, { maxRequestBytes: 1.5 })).rejects.toThrow(/maxRequestBytes must be/);
    await expect(openNbdSource(uri, { maxInFlightRequests: 4 })).rejects.toMatchObject({ code: "NBD_UNREACHABLE" });
  });
});
