// X-Request-Id values made by the proxy: random (version 4) UUIDs, what crypto.randomUUID()
// makes, from the same source (the system's CSPRNG through randomFillSync). They are written
// as text 256 at a time and each is a slice of that one flat string: randomUUID() joins its
// id from about thirty pieces, and the head it goes into had to flatten them all again before
// its bytes could be sent (docs/BENCHMARKS.md, 2026-12-03).
import { randomFillSync } from "node:crypto";

const IDS = 256;
const ID_CHARS = 36;
const random = new Uint8Array(16 * IDS);
const text = Buffer.alloc(ID_CHARS * IDS);
/** Where in an id's text each of its 16 bytes' two hex digits go: the dashes stay where they are. */
const PAIR_AT = new Uint8Array([0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34]);
/** A byte's first and second hex digit (ASCII), by the byte. */
const HIGH_DIGIT = new Uint8Array(256);
const LOW_DIGIT = new Uint8Array(256);
{
  const digit = (d: number) => (d < 10 ? 48 + d : 87 + d);
  for (let b = 0; b < 256; b++) {
    HIGH_DIGIT[b] = digit(b >> 4);
    LOW_DIGIT[b] = digit(b & 15);
  }
  for (let at = 0; at < text.length; at += ID_CHARS) for (const dash of [8, 13, 18, 23]) text[at + dash] = 0x2d;
}
let ids = "";
let next = IDS;

/**
 * IDS new ids as text, one after another. The arrays are read into locals first (in the loop a
 * module constant is a load and a check per use), and each pair of digits is two byte stores:
 * about 31 instructions a pair against 43 with a DataView's setUint16 (callgrind, 2026-12-04).
 */
function refill(): void {
  const rnd = random;
  const out = text;
  const pairAt = PAIR_AT;
  const high = HIGH_DIGIT;
  const low = LOW_DIGIT;
  randomFillSync(rnd);
  for (let k = 0; k < IDS; k++) {
    const r = 16 * k;
    // RFC 9562 §5.4: version 4 in the high nibble of byte 6, variant 10 in the two high bits of byte 8.
    rnd[r + 6] = ((rnd[r + 6] as number) & 0x0f) | 0x40;
    rnd[r + 8] = ((rnd[r + 8] as number) & 0x3f) | 0x80;
    const at = ID_CHARS * k;
    for (let i = 0; i < 16; i++) {
      const b = rnd[r + i] as number;
      const p = at + (pairAt[i] as number);
      out[p] = high[b] as number;
      out[p + 1] = low[b] as number;
    }
  }
  ids = out.toString("latin1");
  next = 0;
}

/** A new random UUID, lower-case, as crypto.randomUUID() gives it. */
export function newRequestId(): string {
  if (next === IDS) refill();
  const at = ID_CHARS * next++;
  return ids.slice(at, at + ID_CHARS);
}
