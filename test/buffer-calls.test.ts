// Node's Buffer methods called through module constants (base/buffer-calls.ts): the same
// results as the methods looked up on each buffer.
import { expect, test } from "vitest";
import { copyOf, latin1Of, viewOf } from "../proxy/base/buffer-calls.js";
import { prng } from "./helpers/corpus.js";

test("latin1Of, viewOf and copyOf give what toString('latin1'), subarray and Buffer.from give", () => {
  const r = prng(23);
  for (let n = 0; n < 500; n++) {
    const buf = Buffer.alloc(Math.floor(r() * 300));
    for (let i = 0; i < buf.length; i++) buf[i] = Math.floor(r() * 256);
    const a = Math.floor(r() * (buf.length + 1));
    const b = a + Math.floor(r() * (buf.length - a + 1));
    expect(latin1Of(buf, a, b)).toBe(buf.toString("latin1", a, b));
    const view = viewOf(buf, a, b);
    expect(Buffer.isBuffer(view)).toBe(true);
    expect(view.equals(buf.subarray(a, b))).toBe(true);
    const copy = copyOf(view);
    expect(Buffer.isBuffer(copy) && copy.equals(view)).toBe(true);
    if (b > a) {
      // The view is the buffer's memory; the copy is not.
      view[0] = ((view[0] as number) + 1) & 255;
      expect(buf[a]).toBe(view[0]);
      expect(copy[0]).not.toBe(view[0]);
    }
  }
});
