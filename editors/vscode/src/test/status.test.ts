import assert from "node:assert/strict";
import { test } from "node:test";
import { classifyStartError, instructArguments, statusView } from "../status";

test("each state has its own status-bar text, naming the edge in the tooltip", () => {
  const texts = new Set<string>();
  for (const state of [
    { kind: "connecting" as const },
    { kind: "connected" as const },
    { kind: "disconnected" as const },
    { kind: "refused" as const, reason: "invalid token" },
  ]) {
    const view = statusView(state, "cm4", 7001);
    texts.add(view.text);
    assert.match(view.tooltip, /cm4:7001/);
    assert.match(view.text, /Cerebrum/);
  }
  assert.equal(texts.size, 4);
});

test("a refused session is shown as an error with its reason", () => {
  const view = statusView({ kind: "refused", reason: "invalid token" }, "cm4", 7001);
  assert.equal(view.error, true);
  assert.match(view.tooltip, /invalid token/);
  assert.equal(statusView({ kind: "connected" }, "cm4", 7001).error, false);
});

test("socket errors mean disconnected, error answers to initialize mean refused", () => {
  const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:7001"), { code: "ECONNREFUSED" });
  assert.deepEqual(classifyStartError(refused), {
    kind: "disconnected",
    reason: "ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:7001",
  });
  const rpc = Object.assign(new Error("invalid session token"), { code: -32600 });
  assert.deepEqual(classifyStartError(rpc), { kind: "refused", reason: "invalid session token" });
  assert.equal(classifyStartError(new Error("Unauthorized")).kind, "refused");
  assert.equal(classifyStartError("connection closed").kind, "disconnected");
});

test("cerebrum.instruct gets one object with instruction, uri and range", () => {
  const range = { start: { line: 3, character: 0 }, end: { line: 9, character: 4 } };
  assert.deepEqual(instructArguments("  add type hints ", "file:///a.py", range), [
    { instruction: "add type hints", uri: "file:///a.py", range },
  ]);
  assert.equal(instructArguments("   ", "file:///a.py", range), undefined);
});
