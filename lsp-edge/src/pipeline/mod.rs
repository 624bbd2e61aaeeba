//! One generation, from a prompt to an answer: the one place that builds the
//! vps-infer request (fill-in-the-middle, a plain continuation for models without FIM
//! tokens, or an instruction whose answer is a fenced block), opens the stream (falling
//! back from FIM once per model), and, for editors, trims the growing text and stops
//! as soon as trimming says the answer is complete.
//!
//! Every front end goes through here: the LSP session and [`refactor`] call
//! [`generate`]; [`script`] (the HTTP endpoint's and `lsp-edge complete`'s
//! completions, which stream raw tokens to their client) calls [`open`].
//!
//! The modules below are the rest of the pipeline, all free of any protocol:
//! [`trim`] cuts an answer to what an editor should show; [`refactor`] turns a
//! function and an instruction into a validated replacement; [`script`] serves
//! scripts, with its answer [`cache`] and [`stats`].

pub mod cache;
mod error;
pub mod refactor;
pub mod script;
pub mod stats;
pub mod trim;

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

pub use self::error::PipelineError;
use self::trim::TrimContext;
use crate::backend::{
    Backend, BackendClient, BackendError, Backends, ExtraChunk, GenerationStats, InferenceRequest,
    StreamEvent, TokenStream,
};
use cerebrum_context::Language;

use crate::config::{BackendKind, CompletionConfig, ModelsConfig, Task};

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Fill in between `prefix` and `suffix`, with `extra` chunks for context.
    Fim {
        prefix: String,
        suffix: String,
        extra: Vec<ExtraChunk>,
    },
    /// Continue `prefix`, with `extra` chunks before it (a script's prompt without
    /// a suffix).
    Continue {
        prefix: String,
        extra: Vec<ExtraChunk>,
    },
    /// An instruction-first prompt whose answer is a fenced code block.
    Instruction { prompt: String },
}

/// A generation request, free of any protocol.
#[derive(Debug, Clone)]
pub struct GenerationInput {
    pub prompt: Prompt,
    /// `None`: vps-infer's default model.
    pub model: Option<String>,
    /// From config: `Some(false)` when the model is known to lack FIM tokens.
    pub fim: Option<bool>,
    pub settings: CompletionConfig,
    /// The document the request is about (its URI or path): requests for one
    /// document go to one backend while it is healthy, where its prompt is cached.
    pub document: Option<String>,
}

/// Hooks for a caller that shows progress.
#[derive(Default)]
pub struct Observer {
    /// Receives the growing trimmed text, at line ends or every `partial_interval`.
    pub partials: Option<watch::Sender<String>>,
    /// Fires when the first token arrives.
    pub first_token: Option<oneshot::Sender<()>>,
    /// Called with the number of tokens so far, after each one.
    pub tokens: Option<Box<dyn FnMut(u64) + Send>>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("partials", &self.partials.is_some())
            .field("first_token", &self.first_token.is_some())
            .field("tokens", &self.tokens.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The trimmed answer; empty when there is nothing worth showing.
    pub text: String,
    /// Whether the request went out as fill-in-the-middle.
    pub fim: bool,
    /// The backend that answered (its name); empty when none did.
    pub backend: String,
    /// Trimming ended the answer before the model did (the stream was dropped).
    pub cut_early: bool,
    /// The caller's deadline passed; `text` is what had arrived by then.
    pub deadline_hit: bool,
    /// Tokens that arrived.
    pub tokens: u64,
    /// vps-infer's statistics, when it finished the stream.
    pub stats: Option<GenerationStats>,
}

/// The plain prompt for a model without FIM: the extra chunks, then the prefix.
pub fn plain_prompt(prefix: &str, extra: &[ExtraChunk]) -> String {
    let mut prompt = String::new();
    for chunk in extra {
        prompt.push_str(&chunk.text);
        if !chunk.text.ends_with('\n') {
            prompt.push('\n');
        }
        prompt.push('\n');
    }
    prompt.push_str(prefix);
    prompt
}

/// The model a completion prompt for `document` is shaped for (its windows,
/// `[context.models]`) when the request names none: the configured completion model,
/// else the backend's default once known ([`Backends::default_model`]).
pub fn prompt_model(
    models: &ModelsConfig,
    backends: &Backends,
    language: Language,
    document: Option<&str>,
) -> Option<String> {
    (models.model_for(language, Task::Completion)).or_else(|| backends.default_model(document))
}

/// The vps-infer request for `input`, in its fill-in-the-middle form when `fim`
/// (a FIM prompt only; other prompts ignore it).
pub fn request_for(input: &GenerationInput, fim: bool) -> InferenceRequest {
    let settings = &input.settings;
    let mut request = InferenceRequest {
        model: input.model.clone(),
        max_tokens: settings.max_tokens,
        temperature: settings.temperature,
        top_p: settings.top_p,
        stop: settings.stop.clone(),
        seed: settings.seed,
        stream: true,
        ..InferenceRequest::default()
    };
    match &input.prompt {
        Prompt::Fim {
            prefix,
            suffix,
            extra,
        } if fim => {
            request.prompt = prefix.clone();
            request.suffix = Some(suffix.clone());
            request.extra = extra.clone();
            request.fim_order = settings.fim_order;
        }
        Prompt::Fim { prefix, extra, .. } | Prompt::Continue { prefix, extra } => {
            request.prompt = plain_prompt(prefix, extra);
        }
        Prompt::Instruction { prompt } => {
            request.prompt = prompt.clone();
            request.stop.push("```".into());
        }
    }
    request
}

/// Whether `input` goes out to `backend` as fill-in-the-middle first: a FIM
/// prompt, for a model not known to lack FIM tokens there.
pub fn wants_fim(backend: &Backend, input: &GenerationInput) -> bool {
    matches!(input.prompt, Prompt::Fim { .. })
        && input.fim != Some(false)
        && !backend.lacks_fim(input.model.as_deref())
}

/// A stream from a backend, which one, and whether its request went out as
/// fill-in-the-middle.
#[derive(Debug)]
pub struct Opened {
    pub stream: TokenStream,
    pub fim: bool,
    /// The backend's name.
    pub backend: String,
}

/// Sends `input` to the document's backend and waits for it to accept. When that
/// backend is down, its breaker open or it is overloaded, the next candidate is
/// tried at once (the document moves there), so a failing backend costs the
/// editor nothing while another answers. Errors a request would meet anywhere (a
/// bad request) end the search.
pub async fn open(backends: &Backends, input: &GenerationInput) -> Result<Opened, BackendError> {
    let document = input.document.as_deref();
    let candidates = backends.candidates(document);
    let last = candidates.len().saturating_sub(1);
    let mut first_error = None;
    for (index, (member, backend)) in candidates.into_iter().enumerate() {
        match open_on(&backend, input).await {
            Ok(opened) => {
                backends.settle(document, member);
                return Ok(opened);
            }
            Err(err) if index < last && err.worth_another_backend() => {
                tracing::warn!(
                    backend = backend.client.name(),
                    "{err}; trying the next backend"
                );
                first_error.get_or_insert(err);
            }
            Err(err) => return Err(first_error.unwrap_or(err)),
        }
    }
    Err(first_error.unwrap_or_else(|| BackendError::Protocol("no backend is configured".into())))
}

/// [`open`] on one backend: as fill-in-the-middle when [`wants_fim`], falling back
/// to the plain form (and remembering the model) when the backend says the model
/// has no FIM tokens.
async fn open_on(backend: &Backend, input: &GenerationInput) -> Result<Opened, BackendError> {
    let fim = wants_fim(backend, input);
    let name = backend.client.name().to_owned();
    let send = |fim: bool| {
        let (request, lead) = outgoing(input, backend.client.kind(), fim);
        async move {
            let mut stream = backend.client.stream(&request).await?;
            stream.expect_leading(lead);
            Ok::<_, BackendError>(stream)
        }
    };
    match send(fim).await {
        Ok(stream) => Ok(Opened {
            stream,
            fim,
            backend: name,
        }),
        Err(err) if fim && err.is_fim_unsupported() => {
            tracing::info!(model = ?input.model, backend = %name, "model has no FIM tokens; using plain completions");
            backend.fim.remember_no_fim(input.model.as_deref());
            let stream = send(false).await?;
            Ok(Opened {
                stream,
                fim: false,
                backend: name,
            })
        }
        Err(err) => Err(err),
    }
}

/// The request [`open_on`] sends to a backend of `kind`, and the whitespace that
/// healing took off the prompt's end (see [`heal_trailing_whitespace`]).
fn outgoing(input: &GenerationInput, kind: BackendKind, fim: bool) -> (InferenceRequest, String) {
    let mut request = request_for(input, fim);
    let lead = heal_trailing_whitespace(input, &mut request);
    if let (Some(suffix), BackendKind::VpsInfer) = (&request.suffix, kind) {
        let cursor = AroundCursor::new(&request.prompt, &lead, suffix);
        let settings = &input.settings;
        let (neighbours, indent) = (
            settings
                .reject_neighbour_lines
                .then(|| cursor.neighbour_lines()),
            settings.cap_first_line_indent.then(|| cursor.indent()),
        );
        request.reject_first_line = neighbours.unwrap_or_default();
        request.first_line_max_indent = indent.flatten();
        request.first_line_not_blank = settings.first_line_not_blank && cursor.alone();
    }
    let from_next_line = input.settings.suffix_from_next_line;
    if let Some(suffix) = request.suffix.as_mut().filter(|_| from_next_line) {
        suffix_from_next_line(suffix);
    }
    (request, lead)
}

/// Drops the rest of the cursor's line from `suffix`, its line break included, when
/// it is only whitespace (see `CompletionConfig::suffix_from_next_line`).
fn suffix_from_next_line(suffix: &mut String) {
    if let Some(newline) = suffix.find('\n') {
        if suffix[..newline].trim().is_empty() {
            suffix.drain(..=newline);
        }
    }
}

/// A fill-in-the-middle request cut at the cursor's line.
struct AroundCursor<'a> {
    /// The lines above the cursor's.
    above: &'a str,
    /// The cursor's line before it, less `lead`.
    before: &'a str,
    /// The whitespace healing took off the prompt's end (empty when it took none).
    lead: &'a str,
    /// The cursor's line after it.
    after: &'a str,
    /// The lines below the cursor's.
    below: &'a str,
}

impl<'a> AroundCursor<'a> {
    fn new(prompt: &'a str, lead: &'a str, suffix: &'a str) -> AroundCursor<'a> {
        let (above, before) = prompt.rsplit_once('\n').unwrap_or(("", prompt));
        let (after, below) = suffix.split_once('\n').unwrap_or((suffix, ""));
        AroundCursor {
            above,
            before,
            lead,
            after,
            below,
        }
    }

    /// Only spaces and tabs stand before the cursor on its line.
    fn after_indentation(&self) -> bool {
        let blank = |s: &str| s.chars().all(|c| c == ' ' || c == '\t');
        blank(self.before) && blank(self.lead)
    }

    /// Nothing but spaces and tabs on the cursor's line.
    fn alone(&self) -> bool {
        self.after_indentation() && self.after.trim().is_empty()
    }

    /// The deepest indentation the answer's first line may have when the cursor
    /// stands after a line's indentation with nothing after it: `lead` (empty when
    /// healing took none, the prompt ending in it). `None` elsewhere, and at the start
    /// of an empty line, where nothing says how deep the line goes.
    fn indent(&self) -> Option<String> {
        let at_column_0 = self.before.is_empty() && self.lead.is_empty();
        (self.alone() && !at_column_0).then(|| self.lead.to_owned())
    }

    /// The lines next to the cursor's, as the answer's first line would spell them
    /// (what follows the text before the cursor): the nearest line above that is not
    /// blank, and the one below: the rest of the cursor's line when the cursor stands
    /// before its text (a line inserted there must not repeat it), else the nearest
    /// line below that is not blank. Nothing when the cursor is inside a line's text,
    /// where the answer fills in part of that line.
    fn neighbour_lines(&self) -> Vec<String> {
        let AroundCursor {
            above,
            before,
            lead,
            after,
            below,
        } = *self;
        let below = if after.trim().is_empty() {
            below
                .lines()
                .find(|l| !l.trim().is_empty())
                .map(str::to_owned)
        } else if self.after_indentation() {
            Some(format!("{before}{lead}{after}"))
        } else {
            return Vec::new();
        };
        let above = above.lines().rev().find(|l| !l.trim().is_empty());
        let mut lines = Vec::new();
        for line in [above, below.as_deref()].into_iter().flatten() {
            let Some(rest) = line.trim_end().strip_prefix(before) else {
                continue;
            };
            let fits = rest.len() <= MAX_REJECTED_LINE_BYTES;
            if fits && !rest.trim().is_empty() && !lines.iter().any(|l| l == rest) {
                lines.push(rest.to_owned());
            }
        }
        lines
    }
}

/// Cuts the spaces and tabs that end a completion prompt (see
/// [`CompletionConfig::heal_trailing_whitespace`]) and returns them: the answer's
/// start is expected to repeat them, and the stream takes them off again, so callers
/// see the text that follows the cursor as before.
///
/// Only fill-in-the-middle requests are healed, where it was measured to help: the
/// suffix shows the model that the block goes on. A plain continuation that ends at a
/// line break reads as a finished block to small models (SmolLM2 closed the function
/// and answered nothing).
fn heal_trailing_whitespace(input: &GenerationInput, request: &mut InferenceRequest) -> String {
    if !input.settings.heal_trailing_whitespace || request.suffix.is_none() {
        return String::new();
    }
    let kept = request.prompt.trim_end_matches([' ', '\t']).len();
    request.prompt.split_off(kept)
}

/// The longest line vps-infer takes in `reject_first_line`.
const MAX_REJECTED_LINE_BYTES: usize = 1024;

/// Runs one generation. `deadline` bounds the whole call: when it passes, the
/// text that has arrived is the answer.
pub async fn generate(
    backends: &Backends,
    input: &GenerationInput,
    mut observer: Observer,
    deadline: Option<Instant>,
) -> Result<Generated, BackendError> {
    let start = open(backends, input);
    let started = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, start).await.ok(),
        None => Some(start.await),
    };
    let Some(started) = started else {
        // The budget ran out before vps-infer answered: nothing to show yet.
        return Ok(Generated {
            text: String::new(),
            fim: wants_fim(backends.first(), input),
            backend: String::new(),
            cut_early: false,
            deadline_hit: true,
            tokens: 0,
            stats: None,
        });
    };
    let Opened {
        mut stream,
        fim,
        backend,
    } = started?;

    let trim = match &input.prompt {
        Prompt::Fim { prefix, suffix, .. } => {
            Some(TrimContext::new(prefix, suffix, input.settings.max_lines))
        }
        Prompt::Continue { .. } | Prompt::Instruction { .. } => None,
    };
    let interval = input.settings.partial_interval();
    let mut raw = String::new();
    let mut published = String::new();
    let mut last_publish = Instant::now();
    let mut cut_early = false;
    let mut deadline_hit = false;
    let mut stats = None;
    let mut tokens = 0;

    loop {
        let event = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(event) => event,
                Err(_) => {
                    deadline_hit = true;
                    break;
                }
            },
            None => stream.next().await,
        };
        let token = match event {
            None => break,
            Some(Err(err)) => return Err(err),
            Some(Ok(StreamEvent::Done(done))) => {
                stats = Some(done);
                break;
            }
            Some(Ok(StreamEvent::Token(token))) => token,
        };
        if let Some(first) = observer.first_token.take() {
            let _ = first.send(());
        }
        tokens += 1;
        if let Some(report) = &mut observer.tokens {
            report(tokens);
        }
        raw.push_str(&token);
        let view = match &trim {
            Some(trim) => trim.trim(&raw, false),
            None => crate::pipeline::trim::Trimmed {
                text: raw.clone(),
                cut: None,
            },
        };
        if view.finished() {
            cut_early = true;
            break;
        }
        if let Some(partials) = &observer.partials {
            let due = token.contains('\n') || last_publish.elapsed() >= interval;
            if due && !view.text.is_empty() && view.text != published {
                published = view.text;
                last_publish = Instant::now();
                partials.send_replace(published.clone());
            }
        }
    }
    // Dropping the stream before its end stops vps-infer's decode loop.
    drop(stream);

    let text = match &trim {
        Some(trim) => {
            let settled = if deadline_hit {
                // The last line may be half a word: keep whole lines only, unless the
                // answer is a single line so far.
                match raw.rfind('\n') {
                    Some(end) if raw[..end].contains(|c: char| !c.is_whitespace()) => &raw[..end],
                    _ => raw.as_str(),
                }
            } else {
                raw.as_str()
            };
            trim.trim(settled, true).text
        }
        None => raw.trim_end().to_owned(),
    };
    Ok(Generated {
        text,
        fim,
        backend,
        cut_early,
        deadline_hit,
        tokens,
        stats,
    })
}

/// How long a request has been waiting for its first token before it is worth
/// asking vps-infer whether it is loading a model.
pub fn load_probe_delay(backend: &BackendClient) -> Duration {
    Duration::from_millis(backend.config().load_probe_after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FimOrder;

    fn input(prompt: Prompt) -> GenerationInput {
        GenerationInput {
            prompt,
            model: Some("m".into()),
            fim: None,
            settings: CompletionConfig::default(),
            document: None,
        }
    }

    #[test]
    fn fim_requests_carry_the_suffix_and_extra_chunks() {
        let chunk = ExtraChunk {
            label: "util.py::helper".into(),
            text: "def helper():\n    pass".into(),
        };
        let input = input(Prompt::Fim {
            prefix: "def f():\n    ".into(),
            suffix: "\n".into(),
            extra: vec![chunk.clone()],
        });
        let fim = request_for(&input, true);
        assert_eq!(fim.prompt, "def f():\n    ");
        assert_eq!(fim.suffix.as_deref(), Some("\n"));
        assert_eq!(fim.extra, vec![chunk]);
        assert!(fim.stream);

        let plain = request_for(&input, false);
        assert_eq!(plain.suffix, None);
        assert!(plain.extra.is_empty());
        assert_eq!(plain.prompt, "def helper():\n    pass\n\ndef f():\n    ");
    }

    #[test]
    fn the_fim_order_goes_out_with_the_fim_form_only() {
        let mut input = input(Prompt::Fim {
            prefix: "x = ".into(),
            suffix: "\n".into(),
            extra: Vec::new(),
        });
        input.settings.fim_order = FimOrder::Spm;
        assert_eq!(request_for(&input, true).fim_order, FimOrder::Spm);
        let plain = request_for(&input, false);
        assert_eq!(plain.fim_order, FimOrder::Psm);
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("fim_order").is_none(), "{json}");
    }

    #[test]
    fn trailing_indentation_is_left_out_of_completion_prompts() {
        let fim = |prefix: &str| {
            input(Prompt::Fim {
                prefix: prefix.into(),
                suffix: "\n".into(),
                extra: Vec::new(),
            })
        };
        let cut = |input: &GenerationInput, as_fim: bool| {
            let mut request = request_for(input, as_fim);
            let lead = heal_trailing_whitespace(input, &mut request);
            (request.prompt, lead)
        };
        let indented = fim("def f():\n    ");
        assert_eq!(cut(&indented, true), ("def f():\n".into(), "    ".into()));
        assert_eq!(
            cut(&indented, false),
            ("def f():\n    ".into(), String::new())
        );
        assert_eq!(cut(&fim("x = \t"), true), ("x =".into(), " \t".into()));
        assert_eq!(cut(&fim("x = f("), true), ("x = f(".into(), String::new()));
        let mut off = fim("def f():\n    ");
        off.settings.heal_trailing_whitespace = false;
        assert_eq!(cut(&off, true), ("def f():\n    ".into(), String::new()));
        let instruction = input(Prompt::Instruction {
            prompt: "# INSTRUCTION: x\n```python\n    ".into(),
        });
        assert_eq!(cut(&instruction, true).1, "");
    }

    #[test]
    fn instruction_prompts_stop_at_the_closing_fence() {
        let request = request_for(
            &input(Prompt::Instruction {
                prompt: "# INSTRUCTION: x\n```python\n".into(),
            }),
            true,
        );
        assert_eq!(request.suffix, None);
        assert_eq!(request.stop, vec!["```".to_owned()]);
    }

    #[test]
    fn the_lines_next_to_the_cursor_are_rejected_as_the_first_line() {
        let lines =
            |prompt, lead, suffix| AroundCursor::new(prompt, lead, suffix).neighbour_lines();
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // After an Enter, healed: the prompt ends at the line break.
        let prompt = "def f(x):\n    y = g(x)\n\n";
        assert_eq!(
            lines(prompt, "    ", "\n\n    return y\n"),
            owned(&["    y = g(x)", "    return y"])
        );
        // A whole line taken out, the cursor before the next line's text.
        assert_eq!(
            lines(prompt, "", "    return y\n"),
            owned(&["    y = g(x)", "    return y"])
        );
        assert_eq!(
            lines("a = 1\n", "    ", "b = 2\n"),
            owned(&["a = 1", "    b = 2"])
        );
        // The same line above and below is sent once; blank lines give nothing.
        assert_eq!(lines("x = 1\n", "", "\nx = 1"), owned(&["x = 1"]));
        assert!(lines("\n \n", "", "\n\t\n").is_empty());
        // Mid-line: what would follow the text before the cursor.
        assert_eq!(
            lines("    x = f(1)\n    x =", " ", "\n    x = f(2)"),
            owned(&[" f(1)", " f(2)"])
        );
        // Lines that do not start with it cannot be repeated.
        assert!(lines("a = 1\nb =", " ", "\nc = 2").is_empty());
        // Inside a line's text: the answer fills in part of that line.
        assert!(lines("a = 1\nb = (", "", ")\nb = 2").is_empty());
        // Lines longer than vps-infer takes are left out.
        let long = "x".repeat(MAX_REJECTED_LINE_BYTES + 1);
        assert_eq!(
            lines(&format!("{long}\n"), "", "\ny = 2"),
            owned(&["y = 2"])
        );
    }

    #[test]
    fn the_first_line_goes_no_deeper_than_the_indentation_the_cursor_stands_after() {
        let indent = |prompt, lead, suffix| AroundCursor::new(prompt, lead, suffix).indent();
        // After an Enter, healed: what healing took off.
        assert_eq!(indent("if x:\n", "    ", "\n    y\n"), Some("    ".into()));
        assert_eq!(indent("{\n", "\t", ""), Some("\t".into()));
        // Not healed: no more than the prompt has.
        assert_eq!(indent("if x:\n    ", "", "\n"), Some(String::new()));
        // Nothing says how deep a line at column 0 goes.
        assert_eq!(indent("x = 1\n", "", "\ny = 2"), None);
        // Text before the cursor, or after it on its line.
        assert_eq!(indent("    x =", " ", "\n"), None);
        assert_eq!(indent("if x:\n", "    ", "return y\n"), None);
    }

    fn fim_input(prefix: &str, suffix: &str) -> GenerationInput {
        input(Prompt::Fim {
            prefix: prefix.into(),
            suffix: suffix.into(),
            extra: Vec::new(),
        })
    }

    #[test]
    fn only_vps_infer_fim_requests_reject_the_neighbour_lines() {
        let fim = fim_input("x = 1\n    ", "\ny = 2\n");
        let rejected = |input: &GenerationInput, kind, as_fim| {
            outgoing(input, kind, as_fim).0.reject_first_line
        };
        let both = vec!["x = 1".to_owned(), "y = 2".to_owned()];
        assert_eq!(rejected(&fim, BackendKind::VpsInfer, true), both);
        assert!(rejected(&fim, BackendKind::VpsInfer, false).is_empty());
        assert!(rejected(&fim, BackendKind::LlamaServer, true).is_empty());
        let mut off = fim.clone();
        off.settings.reject_neighbour_lines = false;
        assert!(rejected(&off, BackendKind::VpsInfer, true).is_empty());
        let json = serde_json::to_value(outgoing(&fim, BackendKind::VpsInfer, true).0).unwrap();
        assert_eq!(json["reject_first_line"], serde_json::json!(both));
    }

    #[test]
    fn only_vps_infer_fim_requests_cap_the_first_lines_indentation() {
        let fim = fim_input("if x:\n    ", "\ny = 2\n");
        let indent = |input: &GenerationInput, kind, as_fim| {
            outgoing(input, kind, as_fim).0.first_line_max_indent
        };
        assert_eq!(
            indent(&fim, BackendKind::VpsInfer, true),
            Some("    ".into())
        );
        assert_eq!(indent(&fim, BackendKind::VpsInfer, false), None);
        assert_eq!(indent(&fim, BackendKind::LlamaServer, true), None);
        let mut off = fim.clone();
        off.settings.cap_first_line_indent = false;
        assert_eq!(indent(&off, BackendKind::VpsInfer, true), None);
        let json = serde_json::to_value(outgoing(&fim, BackendKind::VpsInfer, true).0).unwrap();
        assert_eq!(json["first_line_max_indent"], "    ");
        let json = serde_json::to_value(outgoing(&off, BackendKind::VpsInfer, true).0).unwrap();
        assert!(json.get("first_line_max_indent").is_none());
    }

    #[test]
    fn a_first_line_with_text_is_asked_for_only_on_an_empty_line() {
        let empty_line = fim_input("if x:\n    ", "\ny = 2\n");
        let asked = |input: &GenerationInput, kind, on: bool| {
            let mut input = input.clone();
            input.settings.first_line_not_blank = on;
            outgoing(&input, kind, true).0.first_line_not_blank
        };
        assert!(asked(&empty_line, BackendKind::VpsInfer, true));
        assert!(!asked(&empty_line, BackendKind::VpsInfer, false));
        assert!(!asked(&empty_line, BackendKind::LlamaServer, true));
        let at_column_0 = fim_input("x = 1\n", "  \ny = 2\n");
        assert!(asked(&at_column_0, BackendKind::VpsInfer, true));
        let inside_text = fim_input("if x:\n    ret", "\ny = 2\n");
        assert!(!asked(&inside_text, BackendKind::VpsInfer, true));
        let before_text = fim_input("if x:\n    ", "y = 2\n");
        assert!(!asked(&before_text, BackendKind::VpsInfer, true));

        let json = |input: &GenerationInput| {
            serde_json::to_value(outgoing(input, BackendKind::VpsInfer, true).0).unwrap()
        };
        assert!(json(&empty_line).get("first_line_not_blank").is_none());
        let mut on = empty_line.clone();
        on.settings.first_line_not_blank = true;
        assert_eq!(json(&on)["first_line_not_blank"], true);
    }

    #[test]
    fn the_suffix_may_start_at_the_next_line_when_the_cursors_line_is_done() {
        let suffix = |prefix: &str, suffix: &str, on: bool| {
            let mut input = fim_input(prefix, suffix);
            input.settings.suffix_from_next_line = on;
            let (request, _) = outgoing(&input, BackendKind::VpsInfer, true);
            let neighbours = request.reject_first_line.clone();
            (request.suffix.unwrap(), neighbours)
        };
        // Nothing after the cursor: the line break goes to the middle; the lines the
        // first line must not repeat are those of the document, as before.
        let (sent, neighbours) = suffix("if x:\n    ", "  \n    y = 2\n", true);
        assert_eq!(sent, "    y = 2\n");
        assert_eq!(
            neighbours,
            suffix("if x:\n    ", "  \n    y = 2\n", false).1
        );
        assert_eq!(
            suffix("if x:\n    ", "\n    y = 2\n", false).0,
            "\n    y = 2\n"
        );
        // Text after the cursor, or no line break: the suffix as it is.
        assert_eq!(suffix("print(", ")\ny\n", true).0, ")\ny\n");
        assert_eq!(suffix("x = ", "  ", true).0, "  ");
    }
}
