//! The extension's settings, validated once, and what they turn into on the wire.
//!
//! Pure logic: no `vscode` import, so `npm test` runs it under plain Node.

/** What the user configured under `cerebrum.*`, after validation. */
export interface Settings {
  host: string;
  port: number;
  /** Empty when the edge runs without a session token (loopback only). */
  token: string;
  languages: string[];
}

export const DEFAULT_SETTINGS: Settings = {
  host: "127.0.0.1",
  port: 7001,
  token: "",
  languages: ["python", "rust", "typescript", "javascript", "javascriptreact", "go", "c", "java"],
};

export type SettingsResult = { ok: true; settings: Settings } | { ok: false; error: string };

/**
 * Validates raw configuration values (as `WorkspaceConfiguration.get` returns them,
 * `undefined` for unset) and names the bad field in the error.
 */
export function parseSettings(raw: {
  host?: unknown;
  port?: unknown;
  token?: unknown;
  languages?: unknown;
}): SettingsResult {
  const host = raw.host ?? DEFAULT_SETTINGS.host;
  if (typeof host !== "string" || host.trim() === "" || /\s/.test(host.trim())) {
    return { ok: false, error: `cerebrum.host must be a host name or address, got ${JSON.stringify(host)}` };
  }
  const port = raw.port ?? DEFAULT_SETTINGS.port;
  if (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535) {
    return { ok: false, error: `cerebrum.port must be an integer from 1 to 65535, got ${JSON.stringify(port)}` };
  }
  const token = raw.token ?? DEFAULT_SETTINGS.token;
  if (typeof token !== "string") {
    return { ok: false, error: "cerebrum.token must be a string" };
  }
  const languages = raw.languages ?? DEFAULT_SETTINGS.languages;
  if (!Array.isArray(languages) || !languages.every((l) => typeof l === "string" && l !== "")) {
    return { ok: false, error: "cerebrum.languages must be a list of language ids" };
  }
  return {
    ok: true,
    settings: { host: host.trim(), port, token: token.trim(), languages: [...new Set(languages as string[])] },
  };
}

/** Whether `host` is a loopback address, where lsp-edge may run without a token. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** A warning to show before connecting, if any: a remote edge requires a token. */
export function settingsWarning(settings: Settings): string | undefined {
  if (settings.token === "" && !isLoopback(settings.host)) {
    return `cerebrum.token is empty but ${settings.host} is not a loopback address; lsp-edge will refuse the session.`;
  }
  return undefined;
}

/** `initializationOptions` for the `initialize` request: the session token, if set. */
export function initializationOptions(settings: Settings): { token?: string } {
  return settings.token === "" ? {} : { token: settings.token };
}

/** The documents the client sends to the edge: files and unsaved buffers of the languages. */
export function documentSelector(settings: Settings): { scheme: string; language: string }[] {
  return settings.languages.flatMap((language) => [
    { scheme: "file", language },
    { scheme: "untitled", language },
  ]);
}

/** Whether a configuration change touches our settings (and so needs a reconnect). */
export function affectsConnection(changed: (section: string) => boolean): boolean {
  return ["cerebrum.host", "cerebrum.port", "cerebrum.token", "cerebrum.languages"].some(changed);
}
