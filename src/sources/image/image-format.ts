// The disk image formats a client may name. The format is always named,
// never probed: a raw guest disk may begin with another format's header.

export const IMAGE_FORMATS = ["raw", "qcow2", "vmdk", "vdi", "vhdx", "qed"] as const;

export type ImageFormat = (typeof IMAGE_FORMATS)[number];

export function isImageFormat(value: string): value is ImageFormat {
  return (IMAGE_FORMATS as readonly string[]).includes(value);
}
