// fast-check arbitraries for any protobuf-es message, built from its
// descriptor, so every RPC's request (including RPCs added later) is fuzzed
// without a hand-written generator. Strings, numbers and enum values come
// from hostile pools: unicode, NUL, very long, path-like, absurd numbers,
// enum values the proto does not define.
import { ScalarType } from "@bufbuild/protobuf";
import type { DescField, DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import fc from "fast-check";

export interface HostileValues {
  /** Strings worth trying in any string field (e.g. real paths, real uuids). */
  readonly strings?: readonly string[];
  /** Values for fields named "uuid" (e.g. jobs that exist), tried half of the time. */
  readonly uuids?: readonly string[];
  /** Longest repeated field generated (default 4). */
  readonly maxListLength?: number;
}

const UINT64_MAX = 2n ** 64n - 1n;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** Strings that have broken servers before: separators, NUL, lone surrogates, format strings, control bytes. */
const NASTY_STRINGS = [
  "",
  " ",
  ".",
  "..",
  "/",
  "//",
  "\0",
  "a\0b",
  "\0.vma",
  "x.vma\0",
  "../../../../../../etc/passwd",
  "/etc/shadow",
  "/dev/zero",
  "/dev/sda",
  "/proc/self/mem",
  "/proc/self/fd/0",
  "~root/x.vma",
  "%s%s%n%x",
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell-expansion string the server must take literally
  "${HOME}",
  "$(reboot)",
  "\\..\\..\\x.vma",
  "\uD800",
  "\uDFFF\uD800",
  "\u202Egnp.vma",
  "😀.vma",
  "ﬀ",
  "\r\n",
  "\t",
  "vmstate",
  "CON",
  "00000000-0000-0000-0000-000000000000",
  "ffffffff-ffff-ffff-ffff-ffffffffffff",
  "not-a-uuid",
  "{a1b2c3d4-0000-4000-8000-000000000000}",
];

/** A path built from hostile parts, absolute or relative. */
function pathLike(extra: readonly string[]): fc.Arbitrary<string> {
  const part = fc.oneof(
    fc.constantFrom("..", ".", "", "sources", "backups", "outside", "state", "link", "x.vma", "disk.raw", "secret.raw"),
    fc.string({ maxLength: 8 }),
  );
  return fc
    .tuple(
      fc.constantFrom("", "/", "./", ...extra.filter((value) => value.startsWith("/")).map((value) => `${value}/`)),
      fc.array(part, { maxLength: 8 }),
      fc.boolean(),
    )
    .map(([prefix, parts, vma]) => `${prefix}${parts.join("/")}${vma ? ".vma" : ""}`);
}

/** Any string a client could send, weighted towards the nasty ones. */
export function hostileString(values: HostileValues = {}): fc.Arbitrary<string> {
  const extra = values.strings ?? [];
  return fc.oneof(
    { arbitrary: fc.constantFrom(...NASTY_STRINGS, ...extra), weight: 4 },
    { arbitrary: pathLike(extra), weight: 3 },
    { arbitrary: fc.string({ unit: "binary", maxLength: 40 }), weight: 2 },
    { arbitrary: fc.string({ unit: "grapheme", maxLength: 20 }), weight: 1 },
    { arbitrary: fc.uuid(), weight: 1 },
    // Very long: past NAME_MAX (255), PATH_MAX (4096) and well beyond.
    {
      arbitrary: fc
        .tuple(fc.constantFrom(256, 300, 4097, 70_000, 300_000), fc.constantFrom("a", "é", "/", "../", "😀"))
        .map(([count, unit]) => unit.repeat(count)),
      weight: 1,
    },
  );
}

function scalarArbitrary(type: ScalarType, values: HostileValues): fc.Arbitrary<unknown> {
  switch (type) {
    case ScalarType.STRING:
      return hostileString(values);
    case ScalarType.BYTES:
      return fc.oneof(
        fc.uint8Array({ maxLength: 64 }),
        fc.constantFrom(65_535, 65_536, 200_000).map((size) => new Uint8Array(size).fill(0x41)),
      );
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return fc.oneof(
        fc.constantFrom(0n, 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, UINT64_MAX),
        fc.bigInt({ min: 0n, max: UINT64_MAX }),
      );
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return fc.oneof(fc.constantFrom(0n, -1n, INT64_MIN, INT64_MAX), fc.bigInt({ min: INT64_MIN, max: INT64_MAX }));
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return fc.oneof(fc.constantFrom(0, 1, 0xffffffff), fc.nat({ max: 0xffffffff }));
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return fc.oneof(
        fc.constantFrom(0, -1, 1, -(2 ** 31), 2 ** 31 - 1),
        fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
      );
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return fc.double();
  }
}

/** Defined values and ones the proto does not define (open enums accept any int32). */
function enumArbitrary(numbers: readonly number[]): fc.Arbitrary<number> {
  return fc.oneof(
    fc.constantFrom(...numbers),
    fc.integer({ min: -3, max: 12 }),
    fc.constantFrom(-(2 ** 31), 2 ** 31 - 1),
  );
}

function fieldArbitrary(field: DescField, values: HostileValues, depth: number): fc.Arbitrary<unknown> {
  const maxLength = values.maxListLength ?? 4;
  switch (field.fieldKind) {
    case "scalar":
      if (field.scalar === ScalarType.STRING && field.name === "uuid" && values.uuids !== undefined) {
        return fc.oneof(fc.constantFrom(...values.uuids), scalarArbitrary(field.scalar, values));
      }
      return scalarArbitrary(field.scalar, values);
    case "enum":
      return enumArbitrary(field.enum.values.map((value) => value.number));
    case "message":
      return messageArbitrary(field.message, values, depth + 1);
    case "list":
      switch (field.listKind) {
        case "scalar":
          return fc.array(scalarArbitrary(field.scalar, values), { maxLength });
        case "enum":
          return fc.array(enumArbitrary(field.enum.values.map((value) => value.number)), { maxLength });
        case "message":
          return fc.array(messageArbitrary(field.message, values, depth + 1), { maxLength });
      }
      break;
    case "map":
      // No request has a map field; an empty one still round-trips.
      return fc.constant({});
  }
  throw new Error("unsupported field kind");
}

/**
 * Random init objects for `schema`: every field either left unset or given
 * a hostile value. Nested messages stop at depth 3.
 */
export function messageArbitrary<Desc extends DescMessage>(
  schema: Desc,
  values: HostileValues = {},
  depth = 0,
): fc.Arbitrary<MessageInitShape<Desc>> {
  if (depth > 3) return fc.constant({} as MessageInitShape<Desc>);
  const members: Record<string, fc.Arbitrary<unknown>> = {};
  for (const member of schema.members) {
    if (member.kind === "oneof") {
      // protobuf-es sets a oneof as { case, value }.
      members[member.localName] = fc.oneof(
        ...member.fields.map((field) =>
          fieldArbitrary(field, values, depth).map((value) => ({ case: field.localName, value })),
        ),
      );
    } else {
      members[member.localName] = fieldArbitrary(member, values, depth);
    }
  }
  return fc.record(members, { requiredKeys: [] }) as unknown as fc.Arbitrary<MessageInitShape<Desc>>;
}
