// The error a VmaWriter throws when it is called in a way that would produce
// an archive Proxmox rejects (or one that does not say what the caller meant).

export class VmaUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "VmaUsageError";
  }
}
