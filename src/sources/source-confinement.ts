// Where sources that are paths (raw files, block devices, disk images) may
// be read from. The engine's PathPolicy implements it; sources only ask.

export interface SourceConfinement {
  /**
   * The absolute path a device path names (relative paths resolve under the
   * first source root), or undefined when it is plainly (before resolving
   * symlinks) outside every source root.
   */
  requestedSource(devicePath: string): string | undefined;
  /** True when a real (resolved) path lies inside a source root. */
  isSourceAllowed(realPath: string): boolean;
  /**
   * True when `requested` (absolute), which could not be resolved, leads
   * outside every source root: it is then refused as outside whether or not
   * it exists, so that the refusal tells nothing about what is out there.
   */
  leadsOutsideSourceRoots(requested: string): Promise<boolean>;
}
