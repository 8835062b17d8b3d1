// Path normalisation: one spelling per path for routing, no bypass through encodings.
import { describe, expect, test } from "vitest";
import { HttpError } from "../proxy/http1/errors.js";
import { normalizePath } from "../proxy/http1/normalize-path.js";

describe("normalizePath", () => {
  test.each([
    ["/", "/"],
    ["/a/b", "/a/b"],
    ["/a/b/", "/a/b/"],
    ["/%61dmin", "/admin"],
    ["/%41dmin", "/Admin"],
    ["/x/../admin", "/admin"],
    ["/./admin", "/admin"],
    ["//admin", "/admin"],
    ["/a//b///c", "/a/b/c"],
    ["/a/./b/../c", "/a/c"],
    ["/a/b/..", "/a/"],
    ["/a/.", "/a/"],
    ["/%2e%2E/x", null],
    ["/a/%2e%2e/admin", "/admin"],
    ["/a%2Fb", "/a%2Fb"],
    ["/a%2fb", "/a%2Fb"],
    ["/caf%c3%a9", "/caf%C3%A9"],
    ["/%7euser", "/~user"],
    ["/p?x=/../y&z=%61", "/p?x=/../y&z=%61"],
    ["/..", null],
    ["/admin%00.png", null],
    ["/p?q=%00", "/p?q=%00"],
  ])("%s → %s", (input, want) => {
    if (want === null) expect(() => normalizePath(input)).toThrow(HttpError);
    else expect(normalizePath(input)).toBe(want);
  });
});
