// The proxy's X-Request-Id values: version 4 UUIDs as crypto.randomUUID() writes them, never
// the same twice, across the refills of the text they are cut from.
import { expect, test } from "vitest";
import { newRequestId } from "../proxy/request/request-id.js";

test("made ids are lower-case version 4 UUIDs, all different, their bits spread evenly across refills", () => {
  const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const seen = new Set<string>();
  // 24 of each id's random hex digits counted: those of bytes 6 to 9 (the version's and the variant's among them) left out.
  const digits = new Array<number>(16).fill(0);
  const n = 10 * 256 + 7;
  for (let i = 0; i < n; i++) {
    const id = newRequestId();
    expect(id).toMatch(uuid);
    seen.add(id);
    const hex = id.replace(/-/g, "");
    for (const c of hex.slice(0, 12) + hex.slice(20)) {
      const d = Number.parseInt(c, 16);
      digits[d] = (digits[d] ?? 0) + 1;
    }
  }
  expect(seen.size).toBe(n);
  // 24 digits of each id: about n * 24 / 16 of each value; a fixed or missing digit would be far off.
  const each = (n * 24) / 16;
  for (const d of digits) expect(Math.abs(d - each) / each).toBeLessThan(0.1);
});
