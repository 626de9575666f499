// The descriptors reflection serves, from one source: gen/descriptors.binpb,
// the FileDescriptorSet that `npm run generate` builds with buf from proto/
// and the third-party protos (source info included, so clients show the
// comments). Indexed by file name, by every symbol a client may ask for, and
// by extendee for extension queries.
import { readFileSync } from "node:fs";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import type {
  DescriptorProto,
  EnumDescriptorProto,
  FieldDescriptorProto,
  FileDescriptorProto,
} from "@bufbuild/protobuf/wkt";

/** Where generate.sh writes the descriptor set. */
export const DESCRIPTOR_SET_URL = new URL("../../gen/descriptors.binpb", import.meta.url);

export interface IndexedFile {
  readonly proto: FileDescriptorProto;
  /** The file as a client receives it. */
  readonly bytes: Uint8Array;
}

export class DescriptorIndex {
  private readonly files = new Map<string, IndexedFile>();
  /** Fully qualified symbol (no leading dot) → the file declaring it. */
  private readonly symbols = new Map<string, string>();
  /** Message type names, the only valid targets of extension queries. */
  private readonly messages = new Set<string>();
  /** Extendee → field number → file. */
  private readonly extensions = new Map<string, Map<number, string>>();

  /** `set` is a binary FileDescriptorSet; a file listed twice counts once (the first). */
  constructor(set: Uint8Array) {
    for (const proto of fromBinary(FileDescriptorSetSchema, set).file) {
      if (this.files.has(proto.name)) continue;
      this.files.set(proto.name, { proto, bytes: toBinary(FileDescriptorProtoSchema, proto) });
      this.indexFile(proto);
    }
  }

  static load(url: URL = DESCRIPTOR_SET_URL): DescriptorIndex {
    return new DescriptorIndex(readFileSync(url));
  }

  file(name: string): IndexedFile | undefined {
    return this.files.get(name);
  }

  fileNames(): string[] {
    return [...this.files.keys()];
  }

  /** The file declaring `symbol` (a type, service, method, field, enum value or extension). */
  fileOfSymbol(symbol: string): string | undefined {
    return this.symbols.get(symbol);
  }

  isMessage(typeName: string): boolean {
    return this.messages.has(typeName);
  }

  /** Extension numbers of `typeName` with the file of each. */
  extensionsOf(typeName: string): ReadonlyMap<number, string> {
    return this.extensions.get(typeName) ?? new Map();
  }

  /** `names` and every file they import, transitively, each once, the given ones first. */
  closure(names: Iterable<string>): string[] {
    const seen = new Set<string>();
    const visit = (name: string): void => {
      const file = this.files.get(name);
      if (file === undefined || seen.has(name)) return;
      seen.add(name);
      file.proto.dependency.forEach(visit);
    };
    for (const name of names) visit(name);
    return [...seen];
  }

  private indexFile(file: FileDescriptorProto): void {
    const prefix = file.package === "" ? "" : `${file.package}.`;
    const add = (symbol: string): void => {
      if (!this.symbols.has(symbol)) this.symbols.set(symbol, file.name);
    };
    const addExtensions = (scope: string, fields: readonly FieldDescriptorProto[]): void => {
      for (const field of fields) {
        add(`${scope}${field.name}`);
        const extendee = field.extendee.replace(/^\./, "");
        const numbers = this.extensions.get(extendee) ?? new Map<number, string>();
        this.extensions.set(extendee, numbers);
        numbers.set(field.number, file.name);
      }
    };
    // Enum values are scoped like their enum's siblings, as in protoc.
    const addEnums = (scope: string, enums: readonly EnumDescriptorProto[]): void => {
      for (const enumType of enums) {
        add(`${scope}${enumType.name}`);
        for (const value of enumType.value) add(`${scope}${value.name}`);
      }
    };
    const addMessages = (scope: string, messages: readonly DescriptorProto[]): void => {
      for (const message of messages) {
        const name = `${scope}${message.name}`;
        add(name);
        this.messages.add(name);
        for (const field of message.field) add(`${name}.${field.name}`);
        for (const oneof of message.oneofDecl) add(`${name}.${oneof.name}`);
        addExtensions(`${name}.`, message.extension);
        addEnums(`${name}.`, message.enumType);
        addMessages(`${name}.`, message.nestedType);
      }
    };
    addMessages(prefix, file.messageType);
    addEnums(prefix, file.enumType);
    addExtensions(prefix, file.extension);
    for (const service of file.service) {
      add(`${prefix}${service.name}`);
      for (const method of service.method) add(`${prefix}${service.name}.${method.name}`);
    }
  }
}
