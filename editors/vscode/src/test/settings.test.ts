import assert from "node:assert/strict";
import { test } from "node:test";
import {
  affectsConnection,
  DEFAULT_SETTINGS,
  documentSelector,
  initializationOptions,
  isLoopback,
  parseSettings,
  settingsWarning,
} from "../settings";

test("unset values fall back to the defaults", () => {
  assert.deepEqual(parseSettings({}), { ok: true, settings: DEFAULT_SETTINGS });
});

test("values are trimmed and duplicate languages dropped", () => {
  const parsed = parseSettings({ host: " cm4.tailnet.ts.net ", port: 7002, token: " s3cret\n", languages: ["python", "python", "go"] });
  assert.deepEqual(parsed, {
    ok: true,
    settings: { host: "cm4.tailnet.ts.net", port: 7002, token: "s3cret", languages: ["python", "go"] },
  });
});

const bad: [string, Parameters<typeof parseSettings>[0], string][] = [
  ["empty host", { host: "" }, "cerebrum.host"],
  ["host with a space", { host: "a b" }, "cerebrum.host"],
  ["port zero", { port: 0 }, "cerebrum.port"],
  ["port too big", { port: 65536 }, "cerebrum.port"],
  ["fractional port", { port: 7001.5 }, "cerebrum.port"],
  ["port as a string", { port: "7001" }, "cerebrum.port"],
  ["token not a string", { token: 42 }, "cerebrum.token"],
  ["languages not a list", { languages: "python" }, "cerebrum.languages"],
  ["empty language id", { languages: [""] }, "cerebrum.languages"],
];
for (const [name, raw, field] of bad) {
  test(`rejects ${name}, naming ${field}`, () => {
    const parsed = parseSettings(raw);
    assert.equal(parsed.ok, false);
    assert.ok(!parsed.ok && parsed.error.startsWith(field), JSON.stringify(parsed));
  });
}

test("loopback addresses", () => {
  for (const host of ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"]) {
    assert.equal(isLoopback(host), true, host);
  }
  for (const host of ["100.64.0.10", "cm4", "127.0.0.1.example.com", "0.0.0.0"]) {
    assert.equal(isLoopback(host), false, host);
  }
});

test("a remote edge without a token is warned about, a loopback one is not", () => {
  assert.match(settingsWarning({ ...DEFAULT_SETTINGS, host: "100.64.0.10" }) ?? "", /cerebrum\.token is empty/);
  assert.equal(settingsWarning({ ...DEFAULT_SETTINGS, host: "100.64.0.10", token: "t" }), undefined);
  assert.equal(settingsWarning(DEFAULT_SETTINGS), undefined);
});

test("the token travels as initializationOptions.token, and only when set", () => {
  assert.deepEqual(initializationOptions({ ...DEFAULT_SETTINGS, token: "t0k" }), { token: "t0k" });
  assert.deepEqual(initializationOptions(DEFAULT_SETTINGS), {});
});

test("the document selector covers files and unsaved buffers of each language", () => {
  assert.deepEqual(documentSelector({ ...DEFAULT_SETTINGS, languages: ["python"] }), [
    { scheme: "file", language: "python" },
    { scheme: "untitled", language: "python" },
  ]);
});

test("only our own settings trigger a reconnect", () => {
  assert.equal(affectsConnection((s) => s === "cerebrum.port"), true);
  assert.equal(affectsConnection((s) => s === "editor.fontSize"), false);
});
