// `npm run bench:zero`: the zero-detection micro-benchmark alone (bench/zero-bench.ts).
// Rounds: ZERO_BENCH_ROUNDS (7); MiB scanned per timing: ZERO_BENCH_MIB (1024).
import { benchZeroDetection } from "./zero-bench.js";

await benchZeroDetection({
  rounds: Number(process.env.ZERO_BENCH_ROUNDS ?? 7),
  bytesPerRun: Number(process.env.ZERO_BENCH_MIB ?? 1024) * 2 ** 20,
});
