// A cluster's 16-bit block mask: bit j set means 4 KiB block j is stored.

/** Number of set bits of a 16-bit mask: the 4 KiB blocks a slot stores. */
export function popcount16(mask: number): number {
  let bits = mask - ((mask >>> 1) & 0x5555);
  bits = (bits & 0x3333) + ((bits >>> 2) & 0x3333);
  bits = (bits + (bits >>> 4)) & 0x0f0f;
  return (bits + (bits >>> 8)) & 0x1f;
}
