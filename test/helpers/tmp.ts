// Temporary directories for tests: several hold GiB files, so each is removed when the
// test file that made it is done (this module's afterAll is registered on that file).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";

const made: string[] = [];

afterAll(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A fresh directory named sluice-<what>-XXXXXX, removed after this test file. */
export function tempDir(what: string): string {
  const dir = mkdtempSync(join(tmpdir(), `sluice-${what}-`));
  made.push(dir);
  return dir;
}
