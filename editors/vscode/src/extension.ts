//! The VS Code side of Cerebrum: a language client that reaches a remote lsp-edge over
//! TCP, for ghost-text completions (LSP inline completion) and the "Refactor to async"
//! code action, with the connection state in the status bar.

import * as net from "node:net";
import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  RevealOutputChannelOn,
  State,
  StreamInfo,
} from "vscode-languageclient/node";
import {
  affectsConnection,
  documentSelector,
  initializationOptions,
  parseSettings,
  Settings,
  settingsWarning,
} from "./settings";
import { classifyStartError, ConnectionState, instructArguments, statusView } from "./status";

let client: LanguageClient | undefined;
let statusItem: vscode.StatusBarItem;
let current: Settings | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = "cerebrum.reconnect";
  context.subscriptions.push(statusItem);

  context.subscriptions.push(
    vscode.commands.registerCommand("cerebrum.reconnect", () => restart()),
    // Not named `cerebrum.instruct`: the language client registers the server's own
    // command under that name, and VS Code refuses a second registration.
    vscode.commands.registerCommand("cerebrum.instructSelection", () => instructSelection()),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (affectsConnection((section) => e.affectsConfiguration(section))) {
        void restart();
      }
    }),
    { dispose: () => void client?.stop() },
  );

  await restart();
}

export async function deactivate(): Promise<void> {
  await client?.stop();
  client = undefined;
}

function readSettings(): Settings | undefined {
  const config = vscode.workspace.getConfiguration("cerebrum");
  const parsed = parseSettings({
    host: config.get("host"),
    port: config.get("port"),
    token: config.get("token"),
    languages: config.get("languages"),
  });
  if (!parsed.ok) {
    void vscode.window.showErrorMessage(`Cerebrum: ${parsed.error}`);
    return undefined;
  }
  return parsed.settings;
}

function show(state: ConnectionState): void {
  const view = statusView(state, current?.host ?? "?", current?.port ?? 0);
  statusItem.text = view.text;
  statusItem.tooltip = view.tooltip;
  statusItem.backgroundColor = view.error ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  statusItem.show();
}

/** Opens a TCP connection to the edge; the language client speaks LSP over it. */
function connect(settings: Settings): () => Promise<StreamInfo> {
  return () =>
    new Promise((resolve, reject) => {
      const socket = net.connect({ host: settings.host, port: settings.port });
      socket.setNoDelay(true);
      socket.once("connect", () => {
        socket.removeListener("error", reject);
        resolve({ reader: socket, writer: socket });
      });
      socket.once("error", reject);
    });
}

async function restart(): Promise<void> {
  const old = client;
  client = undefined;
  if (old) {
    await old.stop().catch(() => undefined);
  }
  current = readSettings();
  if (!current) {
    show({ kind: "disconnected", reason: "invalid settings" });
    return;
  }
  const warning = settingsWarning(current);
  if (warning) {
    void vscode.window.showWarningMessage(`Cerebrum: ${warning}`);
  }

  const clientOptions: LanguageClientOptions = {
    documentSelector: documentSelector(current),
    initializationOptions: initializationOptions(current),
    // A remote edge that goes away is not worth a modal dialog; the status bar says it.
    revealOutputChannelOn: RevealOutputChannelOn.Never,
  };
  const next = new LanguageClient("cerebrum", "Cerebrum", connect(current), clientOptions);
  next.onDidChangeState((e) => {
    if (client !== next) {
      return;
    }
    if (e.newState === State.Running) {
      show({ kind: "connected" });
    } else if (e.newState === State.Starting) {
      show({ kind: "connecting" });
    } else {
      show({ kind: "disconnected" });
    }
  });
  client = next;
  show({ kind: "connecting" });
  try {
    await next.start();
  } catch (err) {
    if (client === next) {
      const state = classifyStartError(err);
      show(state);
      if (state.kind === "refused") {
        void vscode.window.showErrorMessage(`Cerebrum: lsp-edge refused the session: ${state.reason}`);
      }
    }
  }
}

/** Asks for an instruction and sends `cerebrum.instruct` for the selection. */
async function instructSelection(): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!editor || !client || client.state !== State.Running) {
    void vscode.window.showWarningMessage("Cerebrum: open a file connected to lsp-edge first.");
    return;
  }
  const instruction = await vscode.window.showInputBox({
    prompt: "Instruction for the selected code",
    placeHolder: "add type hints",
  });
  if (instruction === undefined) {
    return;
  }
  const selection = editor.selection;
  const args = instructArguments(instruction, editor.document.uri.toString(), {
    start: { line: selection.start.line, character: selection.start.character },
    end: { line: selection.end.line, character: selection.end.character },
  });
  if (!args) {
    return;
  }
  // The edge answers with a `workspace/applyEdit`, which the client applies.
  await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: "Cerebrum", cancellable: true },
    async (_progress, token) => {
      try {
        await client?.sendRequest(ExecuteCommandRequest.type, { command: "cerebrum.instruct", arguments: args }, token);
      } catch (err) {
        if (!token.isCancellationRequested) {
          void vscode.window.showErrorMessage(`Cerebrum: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    },
  );
}
