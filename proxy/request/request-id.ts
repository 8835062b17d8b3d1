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
const pairs = new DataView(text.buffer, text.byteOffset, text.length);
/** Where in an id's text each of its 16 bytes' two hex digits go: the dashes stay where they are. */
const PAIR_AT = new Uint8Array([0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34]);
/** A byte's two hex digits as one little-endian 16-bit word: the first digit in the low byte. */
const HEX_PAIR = new Uint16Array(256);
{
  const digit = (d: number) => (d < 10 ? 48 + d : 87 + d);
  for (let b = 0; b < 256; b++) HEX_PAIR[b] = digit(b >> 4) | (digit(b & 15) << 8);
  for (let at = 0; at < text.length; at += ID_CHARS) for (const dash of [8, 13, 18, 23]) text[at + dash] = 0x2d;
}
let ids = "";
let next = IDS;

/** IDS new ids as text, one after another. */
function refill(): void {
  randomFillSync(random);
  for (let k = 0; k < IDS; k++) {
    const r = 16 * k;
    // RFC 9562 §5.4: version 4 in the high nibble of byte 6, variant 10 in the two high bits of byte 8.
    random[r + 6] = ((random[r + 6] as number) & 0x0f) | 0x40;
    random[r + 8] = ((random[r + 8] as number) & 0x3f) | 0x80;
    const at = ID_CHARS * k;
    for (let i = 0; i < 16; i++) pairs.setUint16(at + (PAIR_AT[i] as number), HEX_PAIR[random[r + i] as number] as number, true);
  }
  ids = text.toString("latin1");
  next = 0;
}

/** A new random UUID, lower-case, as crypto.randomUUID() gives it. */
export function newRequestId(): string {
  if (next === IDS) refill();
  const at = ID_CHARS * next++;
  return ids.slice(at, at + ID_CHARS);
}
