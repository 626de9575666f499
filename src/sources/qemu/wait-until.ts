// Polls a condition until it holds or time runs out: QEMU finishes some
// removals (export deletion, job cancellation) after the command returned.

export async function waitUntil(check: () => Promise<boolean>, timeoutMs: number, intervalMs = 20): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
