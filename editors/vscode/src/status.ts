//! The status-bar text for each connection state, and the `cerebrum.instruct` arguments.
//!
//! Pure logic: no `vscode` import, so `npm test` runs it under plain Node.

export type ConnectionState =
  | { kind: "connecting" }
  | { kind: "connected" }
  | { kind: "disconnected"; reason?: string }
  | { kind: "refused"; reason: string };

export interface StatusView {
  text: string;
  tooltip: string;
  /** Whether the item should be drawn as an error (`statusBarItem.errorBackground`). */
  error: boolean;
}

/** What the status bar shows for `state` while talking to `host:port`. */
export function statusView(state: ConnectionState, host: string, port: number): StatusView {
  const where = `${host}:${port}`;
  switch (state.kind) {
    case "connecting":
      return { text: "$(sync~spin) Cerebrum", tooltip: `Connecting to lsp-edge at ${where}…`, error: false };
    case "connected":
      return { text: "$(sparkle) Cerebrum", tooltip: `Connected to lsp-edge at ${where}`, error: false };
    case "disconnected":
      return {
        text: "$(debug-disconnect) Cerebrum",
        tooltip: `Not connected to lsp-edge at ${where}${state.reason ? `: ${state.reason}` : ""}. Click to reconnect.`,
        error: false,
      };
    case "refused":
      return {
        text: "$(error) Cerebrum",
        tooltip: `lsp-edge at ${where} refused the session: ${state.reason}. Check cerebrum.token, then click to reconnect.`,
        error: true,
      };
  }
}

/**
 * Classifies why starting the client failed: a refused session (bad token, an error
 * answer to `initialize`) is shown differently from a server that cannot be reached.
 */
export function classifyStartError(err: unknown): ConnectionState {
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  if (typeof code === "string" && /^E[A-Z]+$/.test(code)) {
    // A socket error: ECONNREFUSED, EHOSTUNREACH, ETIMEDOUT, ENOTFOUND, ...
    return { kind: "disconnected", reason: `${code}: ${message}` };
  }
  if (typeof code === "number" || /token|unauthori[sz]ed|refus/i.test(message)) {
    return { kind: "refused", reason: message };
  }
  return { kind: "disconnected", reason: message };
}

/** An LSP position (0-based line, UTF-16 character as VS Code counts). */
export interface Position {
  line: number;
  character: number;
}

/** The arguments of `workspace/executeCommand` `cerebrum.instruct`. */
export function instructArguments(
  instruction: string,
  uri: string,
  range: { start: Position; end: Position },
): [{ instruction: string; uri: string; range: { start: Position; end: Position } }] | undefined {
  const trimmed = instruction.trim();
  if (trimmed === "") {
    return undefined;
  }
  return [{ instruction: trimmed, uri, range }];
}
