// What a freeze will leave in a QEMU, written down before the freeze starts
// and removed after its teardown: a daemon killed with -9 at any step finds
// the record at its next start and undoes the freeze (cleanupLeftovers),
// even when it died before the job itself was recorded.
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { type CleanupResult, cleanupLeftovers, type LeftoverRecord } from "./leftovers.js";

const SUFFIX = ".json";

export interface RecoveredFreeze {
  readonly record: LeftoverRecord;
  readonly result: CleanupResult;
}

export class FleecingJournal {
  constructor(private readonly dir: string) {}

  private fileOf(tag: string): string {
    return path.join(this.dir, `${tag}${SUFFIX}`);
  }

  /** Records a freeze about to start; durable before it returns. */
  async record(record: LeftoverRecord): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const file = this.fileOf(record.tag);
    const handle = await fs.open(file, "wx", 0o600);
    try {
      await handle.writeFile(JSON.stringify(record));
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /** Forgets a freeze that was torn down. */
  async remove(tag: string): Promise<void> {
    await fs.rm(this.fileOf(tag), { force: true });
  }

  /**
   * Undoes every recorded freeze; a record stays when its cleanup left
   * problems (tried again at the next start).
   */
  async recoverAll(): Promise<RecoveredFreeze[]> {
    let names: string[];
    try {
      names = (await fs.readdir(this.dir)).filter((name) => name.endsWith(SUFFIX));
    } catch {
      return [];
    }
    const recovered: RecoveredFreeze[] = [];
    for (const name of names) {
      const file = path.join(this.dir, name);
      let record: LeftoverRecord;
      try {
        record = JSON.parse(await fs.readFile(file, "utf8")) as LeftoverRecord;
      } catch {
        // Torn by the crash while written: the freeze had not started yet.
        await fs.rm(file, { force: true });
        continue;
      }
      const result = await cleanupLeftovers(record);
      if (result.problems.length === 0) await fs.rm(file, { force: true });
      recovered.push({ record, result });
    }
    return recovered;
  }
}
