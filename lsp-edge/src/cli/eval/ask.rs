//! Asking for one case's answer: through the engine or as a plain window, primed
//! (see the module's docs), read to its end or to where its block ends.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use cerebrum_context::Language;
use futures::StreamExt as _;

use super::cases::before_enter;
use super::score::{edit_similarity, first_line, BlockOutcome, Outcome};
use super::{Case, EvalArgs};
use crate::backend::{BackendError, StreamEvent, TokenStream};
use crate::config::CompletionConfig;
use crate::edge::Edge;
use crate::pipeline::script::{Completer, CompletionRequest, Generation, GenerationEvent};
use crate::pipeline::trim::TrimContext;
use crate::pipeline::{self, GenerationInput, Opened, PipelineError, Prompt};

/// How a configuration asks for an answer.
pub(super) enum Runner {
    /// Through the completer, context engine and all.
    Engine(Completer),
    /// A plain window of at most this many characters before and after the cursor.
    Window { before: usize, after: usize },
}

/// Asks `runner` for `case`'s answer. An evaluation is a batch job: while the backend
/// says it is busy, it waits and asks again rather than score the case as a miss.
/// `label` names the case and the configuration in what it reports on stderr.
pub(super) async fn answer(
    runner: &Runner,
    edge: &Edge,
    case: &Case,
    args: &EvalArgs,
    max_lines: usize,
    label: &str,
) -> Outcome {
    let mut busy = 0;
    loop {
        let outcome = match runner {
            Runner::Engine(completer) => run_engine(completer, case, args, max_lines).await,
            Runner::Window { before, after } => {
                run_window(edge, case, (*before, *after), args, max_lines).await
            }
        };
        match outcome.as_ref().err().and_then(busy_for) {
            Some(wait) if busy < BUSY_RETRIES => {
                busy += 1;
                eprintln!(
                    "{label}: the backend is busy; asking again in {}s",
                    wait.as_secs()
                );
                tokio::time::sleep(wait).await;
            }
            _ => return outcome.unwrap_or_else(|err| failed(&err)),
        }
    }
}

/// Whole lines of at most `before` characters before the cursor and `after` after
/// it (the cursor's own line always, cut at a character only when it alone is
/// longer).
pub fn plain_window(prompt: &str, suffix: &str, before: usize, after: usize) -> (String, String) {
    let head = prompt.rfind('\n').map_or(0, |i| i + 1);
    let mut start = head;
    let mut used = prompt[head..].chars().count();
    while start > 0 {
        let previous = prompt[..start - 1].rfind('\n').map_or(0, |i| i + 1);
        let size = prompt[previous..start].chars().count();
        if used + size > before {
            break;
        }
        used += size;
        start = previous;
    }
    let mut end = 0;
    let mut used = 0;
    for line in suffix.split_inclusive('\n') {
        let size = line.chars().count();
        if used + size > after {
            break;
        }
        used += size;
        end += line.len();
    }
    (prompt[start..].to_owned(), suffix[..end].to_owned())
}

async fn run_engine(
    completer: &Completer,
    case: &Case,
    args: &EvalArgs,
    max_lines: usize,
) -> anyhow::Result<Outcome> {
    // Each case stands alone: without `--after-enter` it names no document; with it,
    // a document of its own (a path shared by cases from one file would carry one
    // case's choices into the next), which the engine keeps between the two requests
    // as it does an editor's.
    let document = args
        .after_enter
        .then(|| format!("case-{}/{}", case.id, case.path));
    let request = |prompt: &str, suffix: &str, max_tokens| CompletionRequest {
        prompt: prompt.to_owned(),
        suffix: Some(suffix.to_owned()),
        language: Language::from_name(case.language),
        path: document.clone(),
        instruction: None,
        model: args.model.clone(),
        max_tokens,
        temperature: 0.0,
        stop: args.stop(),
    };
    if args.after_enter {
        let (before, _) = before_enter(case, args.written_lines.into());
        let earlier = request(before, &case.suffix, 1);
        let prepared = completer.prepare(earlier, Instant::now()).await?;
        completer.start(prepared).await?.collect().await?;
    }
    let started = Instant::now();
    // Primed (see the module's docs).
    let primer = completer.prepare(request(&case.prompt, &case.suffix, 1), started);
    let primed = completer.start(primer.await?).await?.collect().await?;
    let request = request(&case.prompt, &case.suffix, args.max_tokens());
    let prepared = completer.prepare(request, started).await?;
    let chunks = prepared.chunking().selected;
    let generation = completer.start(prepared).await?;
    let trim = block_trim(case, &case.prompt, &case.suffix, max_lines);
    let (raw, done) = read_answer(engine_events(generation), trim.as_ref()).await?;
    let tokens = (done, primed.prompt_tokens);
    Ok(outcome(case, &raw, trim.as_ref(), tokens, started, chunks))
}

async fn run_window(
    edge: &Edge,
    case: &Case,
    (before, after): (usize, usize),
    args: &EvalArgs,
    max_lines: usize,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let (prefix, suffix) = plain_window(&case.prompt, &case.suffix, before, after);
    let trim = block_trim(case, &prefix, &suffix, max_lines);
    // The window goes out as it is: no context engine, and the first line's or the
    // block's trimming only.
    let input = GenerationInput {
        prompt: Prompt::Fim {
            prefix,
            suffix,
            extra: Vec::new(),
        },
        model: args.model.clone(),
        fim: None,
        settings: CompletionConfig {
            max_tokens: args.max_tokens(),
            temperature: 0.0,
            top_p: None,
            seed: None,
            stop: args.stop(),
            ..CompletionConfig::default()
        },
        document: None,
    };
    // Primed (see the module's docs).
    let primer = GenerationInput {
        settings: CompletionConfig {
            max_tokens: 1,
            ..input.settings.clone()
        },
        ..input.clone()
    };
    let Opened { stream, .. } = pipeline::open(&edge.backends, &primer).await?;
    let (_, primed) = read_answer(backend_events(stream), None).await?;
    let primed = primed.context("the primer's answer was cut short")?;
    let Opened { stream, .. } = pipeline::open(&edge.backends, &input).await?;
    let (raw, done) = read_answer(backend_events(stream), trim.as_ref()).await?;
    Ok(outcome(
        case,
        &raw,
        trim.as_ref(),
        (done, primed.prompt_tokens),
        started,
        0,
    ))
}

/// What a scored request streams, from the completer or straight from a backend.
enum Event {
    Text(String),
    Done(Final),
}

/// The final event's figures.
struct Final {
    prompt_tokens: u64,
    cached_tokens: u64,
    /// `eos`, `length` or `stop`.
    stop_reason: String,
}

impl From<GenerationEvent> for Event {
    fn from(event: GenerationEvent) -> Event {
        match event {
            GenerationEvent::Token(token) => Event::Text(token),
            GenerationEvent::Done(done) => Event::Done(Final {
                prompt_tokens: done.prompt_tokens,
                cached_tokens: done.cached_tokens,
                stop_reason: done.stop_reason,
            }),
        }
    }
}

impl From<StreamEvent> for Event {
    fn from(event: StreamEvent) -> Event {
        match event {
            StreamEvent::Token(token) => Event::Text(token),
            StreamEvent::Done(done) => Event::Done(Final {
                prompt_tokens: done.prompt_tokens,
                cached_tokens: done.cached_tokens,
                stop_reason: done.stop_reason,
            }),
        }
    }
}

/// A completer's generation as [`Event`]s.
fn engine_events(generation: Generation) -> impl futures::Stream<Item = anyhow::Result<Event>> {
    futures::stream::unfold(generation, |mut generation| async move {
        let event = generation.next().await?;
        Some((
            event.map(Event::from).map_err(anyhow::Error::from),
            generation,
        ))
    })
}

/// A backend's stream as [`Event`]s.
fn backend_events(stream: TokenStream) -> impl futures::Stream<Item = anyhow::Result<Event>> {
    futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((event.map(Event::from).map_err(anyhow::Error::from), stream))
    })
}

/// Reads an answer to its final event, or with a block hole's `trim` until that says
/// the answer is settled (dropping the stream then stops the decode). Returns the raw
/// text and, when it came, the final event.
async fn read_answer(
    events: impl futures::Stream<Item = anyhow::Result<Event>>,
    trim: Option<&TrimContext>,
) -> anyhow::Result<(String, Option<Final>)> {
    let mut events = std::pin::pin!(events);
    let mut raw = String::new();
    while let Some(event) = events.next().await {
        match event? {
            Event::Text(text) => {
                raw.push_str(&text);
                if trim.is_some_and(|t| t.trim(&raw, false).finished()) {
                    return Ok((raw, None));
                }
            }
            Event::Done(last) => return Ok((raw, Some(last))),
        }
    }
    anyhow::bail!("the answer's stream ended without its final event")
}

/// With a block hole, the trimming an editor's answer gets (an answer stops where
/// it says the block ends).
fn block_trim(case: &Case, prefix: &str, suffix: &str, max_lines: usize) -> Option<TrimContext> {
    case.expected_block
        .as_ref()
        .map(|_| TrimContext::new(prefix, suffix, max_lines))
}

/// Scores an answer: its first line, and with a block hole the whole answer, trimmed.
/// `done` is the final event. An answer cut where its block ends has none: its prompt
/// tokens are the primer's (`primed`, the same prompt), and how much of it was cached
/// is not known.
fn outcome(
    case: &Case,
    raw: &str,
    trim: Option<&TrimContext>,
    (done, primed): (Option<Final>, u64),
    started: Instant,
    chunks: usize,
) -> Outcome {
    let text = first_line(raw).to_owned();
    let block = trim
        .zip(case.expected_block.as_ref())
        .map(|(trim, expected)| {
            let trimmed = trim.trim(raw, true);
            let stop = match (trimmed.cut, &done) {
                (Some(cut), _) => cut.as_str(),
                (None, Some(done)) => &done.stop_reason,
                (None, None) => "unknown",
            };
            BlockOutcome::new(&trimmed.text, expected, stop)
        });
    let (prompt_tokens, cached_tokens) = done.map_or((primed, None), |done| {
        (done.prompt_tokens, Some(done.cached_tokens))
    });
    Outcome {
        exact: text == case.expected,
        similarity: edit_similarity(&text, &case.expected),
        text,
        prompt_tokens,
        cached_tokens,
        ms: started.elapsed().as_secs_f64() * 1000.0,
        chunks,
        block,
        error: None,
    }
}

/// How many times one request is asked again while the backend says it is busy.
const BUSY_RETRIES: u32 = 12;

/// How long to wait when the backend refused for now (a 503: vps-infer's resource
/// guard, a model still loading), honouring its `Retry-After` within 1-30 s; `None`
/// for every other error.
fn busy_for(err: &anyhow::Error) -> Option<Duration> {
    let backend = match err.downcast_ref::<PipelineError>() {
        Some(PipelineError::Backend(backend)) => backend,
        Some(_) => return None,
        None => err.downcast_ref::<BackendError>()?,
    };
    match backend {
        BackendError::Api {
            status: 503,
            retry_after,
            ..
        } => Some(
            retry_after
                .unwrap_or(Duration::from_secs(5))
                .clamp(Duration::from_secs(1), Duration::from_secs(30)),
        ),
        _ => None,
    }
}

pub(super) fn failed(err: &anyhow::Error) -> Outcome {
    Outcome {
        text: String::new(),
        exact: false,
        similarity: 0.0,
        prompt_tokens: 0,
        cached_tokens: None,
        ms: 0.0,
        chunks: 0,
        block: None,
        error: Some(format!("{err:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_only_when_the_backend_is_busy() {
        let api = |status, retry_after| BackendError::Api {
            status,
            kind: "unavailable_error".into(),
            message: "server busy".into(),
            retry_after,
        };
        let busy = anyhow::Error::from(PipelineError::from(api(503, None)));
        assert_eq!(busy_for(&busy), Some(Duration::from_secs(5)));
        let told = anyhow::Error::from(api(503, Some(Duration::from_secs(2))));
        assert_eq!(busy_for(&told), Some(Duration::from_secs(2)));
        let long = anyhow::Error::from(api(503, Some(Duration::from_secs(600))));
        assert_eq!(busy_for(&long), Some(Duration::from_secs(30)));
        assert_eq!(busy_for(&anyhow::Error::from(api(500, None))), None);
        assert_eq!(busy_for(&anyhow::Error::from(api(400, None))), None);
        let broken = anyhow::Error::from(BackendError::Stream("reset".into()));
        assert_eq!(busy_for(&broken), None);
        assert_eq!(busy_for(&anyhow::anyhow!("something else")), None);
    }

    #[test]
    fn plain_windows_keep_whole_lines() {
        let prompt = "aaaa\nbbbb\ncccc\n    ";
        let suffix = "\ndddd\neeee\n";
        let (before, after) = plain_window(prompt, suffix, 10, 6);
        assert_eq!(before, "cccc\n    ");
        assert_eq!(after, "\ndddd\n");
        let (before, after) = plain_window(prompt, suffix, 1_000, 1_000);
        assert_eq!((before.as_str(), after.as_str()), (prompt, suffix));
        // The cursor's own line is kept even past the limit.
        let (before, after) = plain_window(prompt, suffix, 2, 0);
        assert_eq!((before.as_str(), after.as_str()), ("    ", ""));
    }
}
