// Archive names: the compression a name says, and vzdump's naming.
import { describe, expect, it } from "vitest";
import { archiveSuffix, compressionOfName, VmidError, vzdumpArchiveName } from "../src/stores/archive-names.js";

describe("archive names", () => {
  it.each([
    ["vm100.vma", "none"],
    ["dump/vzdump-qemu-100-2026_01_31-02_00_05.vma.zst", "zstd"],
    ["old.vma.gz", "gzip"],
    ["vm100.vma.lzo", undefined],
    ["vm100.zst", undefined],
    ["vm100.vma.zst.partial", undefined],
  ])("%s says %s", (name, compression) => {
    expect(compressionOfName(name)).toBe(compression);
  });

  it("gives each compression its suffix", () => {
    expect([archiveSuffix("none"), archiveSuffix("zstd"), archiveSuffix("gzip")]).toEqual([
      ".vma",
      ".vma.zst",
      ".vma.gz",
    ]);
  });

  it("names archives as vzdump does, in local time, zero-padded", () => {
    const at = new Date(2026, 0, 31, 2, 0, 5);
    expect(vzdumpArchiveName(100, at, "zstd")).toBe("vzdump-qemu-100-2026_01_31-02_00_05.vma.zst");
    expect(vzdumpArchiveName(999_999_999, new Date(2026, 11, 9, 23, 59, 59), "gzip")).toBe(
      "vzdump-qemu-999999999-2026_12_09-23_59_59.vma.gz",
    );
  });

  it.each([99, 0, -100, 100.5, 1_000_000_000, Number.NaN])("refuses vmid %s", (vmid) => {
    expect(() => vzdumpArchiveName(vmid, new Date(), "zstd")).toThrow(VmidError);
  });
});
