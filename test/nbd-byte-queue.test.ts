// The NBD client's receive side: ByteQueue hands a chunk back (release) only
// once it is consumed, and what take() returned stays intact when the chunk's
// memory is read into again; receiveInto() reads the socket into buffers that
// go round once consumed.
import { describe, expect, it } from "vitest";
import { ByteQueue } from "../src/sources/nbd/byte-queue.js";
import { receiveInto } from "../src/sources/nbd/receive-buffers.js";

describe("ByteQueue with released chunks", () => {
  it("releases each chunk once it is wholly consumed, in order, and not before", async () => {
    const queue = new ByteQueue();
    const released: string[] = [];
    queue.push(Buffer.from("abcd"), () => released.push("first"));
    queue.push(Buffer.from("efgh"), () => released.push("second"));
    expect(queue.take(3).toString()).toBe("abc");
    expect(released).toEqual([]);
    const target = Buffer.alloc(3);
    await queue.readInto(target, 0, 3);
    expect(target.toString()).toBe("def");
    expect(released).toEqual(["first"]);
    queue.skip(2);
    expect(released).toEqual(["first", "second"]);
    expect(queue.length).toBe(0);
  });

  it("take() returns a copy: overwriting the chunk's memory afterwards changes nothing taken", () => {
    const queue = new ByteQueue();
    const memory = Buffer.from("header--payload");
    queue.push(memory, () => undefined);
    const header = queue.take(8);
    memory.fill(0x21);
    expect(header.toString()).toBe("header--");
  });

  it("releases a chunk pushed after a failure at once", () => {
    const queue = new ByteQueue();
    queue.fail(new Error("gone"));
    let released = 0;
    queue.push(Buffer.from("late"), () => {
      released += 1;
    });
    expect(released).toBe(1);
    expect(queue.length).toBe(0);
  });
});

describe("receiveInto", () => {
  it("queues what each read brought and reads into a buffer again only after it was consumed", () => {
    const queue = new ByteQueue();
    const onread = receiveInto(queue, 16);
    const nextBuffer = onread.buffer as () => Buffer;
    const first = nextBuffer();
    first.write("0123456789");
    onread.callback(10, first);
    // The first buffer is still queued: the next read gets another.
    const second = nextBuffer();
    expect(second).not.toBe(first);
    second.write("abcdef");
    onread.callback(6, second);
    expect(queue.take(10).toString()).toBe("0123456789");
    // Consumed: its memory is read into next.
    expect(nextBuffer()).toBe(first);
    expect(queue.take(6).toString()).toBe("abcdef");
  });

  it("keeps a few free buffers after a burst, not all of them", () => {
    const queue = new ByteQueue();
    const onread = receiveInto(queue, 16);
    const nextBuffer = onread.buffer as () => Buffer;
    const burst = Array.from({ length: 12 }, () => nextBuffer());
    for (const buffer of burst) onread.callback(16, buffer);
    queue.skip(12 * 16);
    const after = Array.from({ length: 12 }, () => nextBuffer());
    const reused = after.filter((buffer) => burst.includes(buffer));
    expect(reused).toHaveLength(8);
  });
});
