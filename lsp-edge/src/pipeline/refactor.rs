//! The refactor pipeline behind "Refactor to async" and `cerebrum.instruct`: from a
//! document, a target (the function at a cursor, a selection, or the whole text) and
//! an instruction to a validated replacement for exactly the target's bytes.
//!
//! It knows nothing of LSP or HTTP: offsets are UTF-8 byte offsets into the
//! document text, and both the language server and `/v1/refactor` call it.
//!
//! The steps: the context engine picks the chunks related to the target (ranked
//! against the instruction and the names near the cursor); the prompt shows them
//! for reference, then the target alone, and ends in an open code fence; vps-infer
//! generates until the closing fence; the fenced code is extracted, the target's
//! function picked out of it by name, checked (it parses without error nodes, keeps
//! the name, and is async when the instruction asks for that) and re-indented to
//! the target's place. A rejected answer is retried once at temperature 0; a second
//! rejection is an error that says why, and no edit is made.

use std::ops::Range;
use std::sync::Arc;

use cerebrum_context::{
    dedent, extract_code_block, functions_in, rewrite_functions, validate_rewrite, ContextEngine,
    ContextOptions, Document, FunctionInfo, Language, RewriteRules,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backend::limiter::GenerationLimiter;
use crate::backend::Backends;
use crate::config::{CompletionConfig, Task};
use crate::edge::Edge;
use crate::pipeline::{self, GenerationInput, Observer, PipelineError, Prompt};

/// The first attempt's temperature; the retry is greedy (0).
pub const FIRST_TEMPERATURE: f32 = 0.2;

/// What to rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The innermost function around this byte offset.
    Function { cursor: usize },
    /// These bytes; an empty range means the function around its start, and a
    /// selection that is exactly one function is that function.
    Selection(Range<usize>),
    /// The whole text (the HTTP endpoint's snippets).
    Whole,
}

/// One refactor, free of any protocol.
#[derive(Debug, Clone)]
pub struct RefactorRequest {
    pub document: Document,
    pub target: Target,
    /// `None`: refactor to async.
    pub instruction: Option<String>,
    /// The document's path, for chunk labels.
    pub path: Option<String>,
}

/// Where a refactor runs: the engine, the backends, the shared generation
/// limiter, and the model.
#[derive(Debug, Clone)]
pub struct RefactorEnv {
    pub engine: Arc<ContextEngine>,
    pub backends: Backends,
    pub limiter: GenerationLimiter,
    /// `None`: vps-infer's default model.
    pub model: Option<String>,
}

impl RefactorEnv {
    /// The shared backends and the configured refactor model for `language`.
    pub fn shared(edge: &Edge, language: Language) -> RefactorEnv {
        RefactorEnv {
            engine: edge.engine.clone(),
            backends: edge.backends.clone(),
            limiter: edge.limiter.clone(),
            model: edge.config.models.model_for(language, Task::Refactor),
        }
    }
}

/// How far the work is, for `window/workDoneProgress` or a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefactorProgress {
    /// 1 for the first try, 2 for the retry at temperature 0.
    pub attempt: u32,
    /// Tokens generated so far in this attempt.
    pub tokens: u64,
}

/// A validated rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefactorOutcome {
    /// The bytes of the document to replace.
    pub range: Range<usize>,
    pub new_text: String,
    /// The function rewritten, when the target is one.
    pub function: Option<String>,
    pub instruction: String,
    /// 1, or 2 when the first answer was rejected.
    pub attempts: u32,
    /// Tokens generated over all attempts.
    pub tokens: u64,
}

/// Refactors `code` as a whole: the HTTP endpoint's entry point, on the shared
/// backend with the configured refactor model.
pub async fn refactor(
    edge: &Edge,
    code: &str,
    language: Language,
    instruction: Option<&str>,
    cancel: CancellationToken,
) -> Result<RefactorOutcome, PipelineError> {
    let env = RefactorEnv::shared(edge, language);
    let request = RefactorRequest {
        document: edge.engine.parse(language, code.to_owned()),
        target: Target::Whole,
        instruction: instruction.map(str::to_owned),
        path: None,
    };
    refactor_document(&env, request, None, cancel).await
}

/// Refactors a target inside a document. `progress` receives the token count as
/// tokens arrive; cancelling `cancel` (or dropping the future) drops the stream to
/// vps-infer, which stops the decode there.
pub async fn refactor_document(
    env: &RefactorEnv,
    request: RefactorRequest,
    progress: Option<watch::Sender<RefactorProgress>>,
    cancel: CancellationToken,
) -> Result<RefactorOutcome, PipelineError> {
    let engine = env.engine.clone();
    let plan = tokio::task::spawn_blocking(move || plan(&engine, &request))
        .await
        .map_err(|err| PipelineError::Internal(format!("planning task failed: {err}")))??;
    tracing::debug!(
        range = ?plan.range,
        function = plan.function.as_deref(),
        prompt_chars = plan.prompt.len(),
        max_tokens = plan.max_tokens,
        "refactor planned"
    );
    let _permit = env.limiter.try_acquire()?;

    let mut tokens = 0;
    let mut reason = String::new();
    for (attempt, temperature) in [(1, FIRST_TEMPERATURE), (2, 0.0)] {
        let answer = generate(env, &plan, temperature, attempt, progress.as_ref(), &cancel).await?;
        tokens += answer.tokens;
        let checked = {
            let plan = plan.clone();
            let engine = env.engine.clone();
            let text = answer.text;
            tokio::task::spawn_blocking(move || plan.accept(&engine, &text))
                .await
                .map_err(|err| PipelineError::Internal(format!("validation task failed: {err}")))?
        };
        match checked {
            Ok(new_text) => {
                return Ok(RefactorOutcome {
                    range: plan.range.clone(),
                    new_text,
                    function: plan.function.clone(),
                    instruction: plan.instruction.clone(),
                    attempts: attempt,
                    tokens,
                })
            }
            Err(why) => {
                reason = if answer.cut_off {
                    format!(
                        "{why} (the answer was cut off at {} tokens)",
                        plan.max_tokens
                    )
                } else {
                    why
                };
                tracing::info!(attempt, temperature, reason = %reason, "refactor answer rejected");
            }
        }
    }
    Err(PipelineError::Rejected {
        attempts: 2,
        reason,
    })
}

struct Answer {
    text: String,
    tokens: u64,
    /// vps-infer stopped at `max_tokens`.
    cut_off: bool,
}

/// One attempt through the completion pipeline: an instruction prompt, whose answer
/// ends at the closing fence.
async fn generate(
    env: &RefactorEnv,
    plan: &Plan,
    temperature: f32,
    attempt: u32,
    progress: Option<&watch::Sender<RefactorProgress>>,
    cancel: &CancellationToken,
) -> Result<Answer, PipelineError> {
    let input = GenerationInput {
        prompt: Prompt::Instruction {
            prompt: plan.prompt.clone(),
        },
        model: env.model.clone(),
        fim: None,
        // A refactor is rare and its prompt shares little with completions': it
        // goes to the least busy backend.
        document: None,
        settings: CompletionConfig {
            max_tokens: plan.max_tokens,
            temperature,
            top_p: None,
            seed: None,
            stop: Vec::new(),
            ..CompletionConfig::default()
        },
    };
    let progress = progress.cloned();
    let report = move |tokens| {
        if let Some(progress) = &progress {
            progress.send_replace(RefactorProgress { attempt, tokens });
        }
    };
    report(0);
    let observer = Observer {
        tokens: Some(Box::new(report)),
        ..Observer::default()
    };
    // Cancelling drops the generation, and with it the stream: vps-infer stops.
    let generated = tokio::select! {
        biased;
        () = cancel.cancelled() => return Err(PipelineError::Cancelled),
        generated = pipeline::generate(&env.backends, &input, observer, None) => generated?,
    };
    Ok(Answer {
        cut_off: generated
            .stats
            .is_some_and(|stats| stats.stop_reason == "length"),
        text: generated.text,
        tokens: generated.tokens,
    })
}

/// Everything decided before the model runs; `accept` turns an answer into the
/// replacement text or says why not.
#[derive(Debug, Clone)]
struct Plan {
    language: Language,
    range: Range<usize>,
    /// The function rewritten: the answer's definition of it is picked out.
    function: Option<String>,
    /// Functions the rewrite must keep (the target, or those in the selection).
    keep: Vec<String>,
    /// The instruction is "refactor to async": kept functions must be async.
    require_async: bool,
    /// Parameters the target function's body uses; its rewrite must still use them.
    used_parameters: Vec<String>,
    instruction: String,
    prompt: String,
    max_tokens: u32,
    /// Put before every line of the replacement but the first.
    indent: String,
    /// Put before the first line (when the target starts at its line's start).
    first_indent: String,
    /// The target ends with a line break, so must the replacement.
    ends_with_newline: bool,
}

fn plan(engine: &ContextEngine, request: &RefactorRequest) -> Result<Plan, PipelineError> {
    let doc = &request.document;
    let language = doc.language();
    if language == Language::Other {
        return Err(PipelineError::UnsupportedLanguage(language));
    }
    let text = doc.text();
    let (instruction, require_async) = match request.instruction.as_deref().map(str::trim) {
        None => match language.async_instruction() {
            Some(instruction) => (instruction.to_owned(), true),
            None => return Err(PipelineError::UnsupportedLanguage(language)),
        },
        Some("") => return Err(PipelineError::EmptyInstruction),
        Some(instruction) => (instruction.to_owned(), false),
    };

    let (range, function) = resolve_target(doc, &request.target)?;
    if let (Some(function), true) = (&function, require_async) {
        if function.is_async {
            return Err(PipelineError::AlreadyAsync(function.name.clone()));
        }
    }
    let used_parameters = match &function {
        Some(function) => function.used_parameters(text),
        None => Vec::new(),
    };
    let keep = match &function {
        Some(function) => vec![function.name.clone()],
        None => functions_in(doc, range.clone())
            .into_iter()
            .map(|def| def.name)
            .collect(),
    };

    // The target as the model sees it: whole lines, dedented.
    let line_start = text[..range.start].rfind('\n').map_or(0, |i| i + 1);
    let lead = &text[line_start..range.start];
    let lead_is_indent = lead.chars().all(|c| c == ' ' || c == '\t');
    let shown = if lead_is_indent {
        dedent(&text[line_start..range.end])
    } else {
        dedent(&text[range.clone()])
    };
    let indent = leading_indent(&text[line_start..]).to_owned();
    let (first_indent, indent) = if lead.is_empty() && function.is_none() {
        // A selection from a line's start carries its own first indentation.
        (indent.clone(), indent)
    } else {
        (String::new(), indent)
    };

    let related = related_chunks(engine, request, &instruction, range.clone());
    let prompt = refactor_prompt(language, &instruction, &related, &shown);
    let target_chars = text[range.clone()].chars().count();
    let max_tokens = u32::try_from(target_chars / 3 * 2 + 128)
        .unwrap_or(u32::MAX)
        .clamp(256, 2048);
    Ok(Plan {
        language,
        ends_with_newline: text[range.clone()].ends_with('\n'),
        range,
        function: function.map(|function| function.name),
        keep,
        require_async,
        used_parameters,
        instruction,
        prompt,
        max_tokens,
        indent,
        first_indent,
    })
}

/// Whether "Refactor to async" makes sense for `target`: a synchronous function, or
/// a selection that is not wholly inside an async function (or that defines a
/// synchronous one). Cheap: no model, one walk of the tree.
pub fn async_refactor_applies(doc: &Document, target: &Target) -> bool {
    if doc.language().async_instruction().is_none() {
        return false;
    }
    match resolve_target(doc, target) {
        Err(_) => false,
        Ok((_, Some(function))) => !function.is_async,
        Ok((range, None)) => {
            let inside_async = cerebrum_context::enclosing_function(doc, range.start)
                .is_some_and(|f| f.is_async && f.range.end >= range.end);
            !inside_async || functions_in(doc, range).iter().any(|def| !def.is_async)
        }
    }
}

/// The byte range to replace, and the function when the target is one.
fn resolve_target(
    doc: &Document,
    target: &Target,
) -> Result<(Range<usize>, Option<FunctionInfo>), PipelineError> {
    let text = doc.text();
    let function_at = |cursor: usize| {
        cerebrum_context::enclosing_function(doc, cursor)
            .map(|info| (info.range.clone(), Some(info)))
            .ok_or(PipelineError::NoFunction)
    };
    match target {
        Target::Function { cursor } => function_at(*cursor),
        Target::Whole => Ok((0..text.len(), None)),
        Target::Selection(range) => {
            let start = floor_char_boundary(text, range.start.min(range.end));
            let end = floor_char_boundary(text, range.end.max(range.start));
            let trimmed_start =
                start + (text[start..end].len() - text[start..end].trim_start().len());
            let trimmed_end = start + text[start..end].trim_end().len();
            if trimmed_start >= trimmed_end {
                return function_at(start);
            }
            match cerebrum_context::enclosing_function(doc, trimmed_start) {
                Some(info) if info.range == (trimmed_start..trimmed_end) => {
                    Ok((info.range.clone(), Some(info)))
                }
                _ => Ok((start..end, None)),
            }
        }
    }
}

/// Chunks the engine ranks as related to the target (what it calls, what calls it,
/// what the instruction names), without the target itself. For a document small
/// enough that the engine sends it whole, every other chunk.
fn related_chunks(
    engine: &ContextEngine,
    request: &RefactorRequest,
    instruction: &str,
    target: Range<usize>,
) -> Vec<String> {
    let doc = &request.document;
    let text = doc.text();
    let options = ContextOptions {
        instruction: Some(instruction.to_owned()),
        path: request.path.clone(),
        selection: Some(target.clone()),
        ..ContextOptions::default()
    };
    let context = engine.context(doc, target.start, &options);
    let overlaps = |range: &Range<usize>| range.start < target.end && target.start < range.end;
    let mut related: Vec<String> = Vec::new();
    for chunk in engine.chunks(doc) {
        let body = chunk.text(text);
        let selected = context.extra.is_empty() || context.extra.iter().any(|e| e.text == body);
        if overlaps(&chunk.range) || !selected || body.trim().is_empty() {
            continue;
        }
        if !related.iter().any(|seen| seen == body) {
            related.push(body.to_owned());
        }
    }
    related
}

/// The instruction-first prompt: the instruction, the related code for reference,
/// the target alone, then an open fence for the answer.
fn refactor_prompt(
    language: Language,
    instruction: &str,
    related: &[String],
    code: &str,
) -> String {
    let fence = language.fence_tag();
    let mut prompt = format!("# INSTRUCTION: {instruction}\n\n");
    if !related.is_empty() {
        prompt.push_str(&format!("Related code, for reference:\n```{fence}\n"));
        for (i, chunk) in related.iter().enumerate() {
            if i > 0 {
                prompt.push('\n');
            }
            prompt.push_str(chunk.trim_end());
            prompt.push('\n');
        }
        prompt.push_str("```\n\n");
    }
    let code = code.trim_end();
    prompt.push_str(&format!(
        "Here is the code:\n```{fence}\n{code}\n```\n\nRefactored code:\n```{fence}\n"
    ));
    prompt
}

impl Plan {
    /// The replacement for `self.range` made from a model's answer, or why the
    /// answer is not good enough.
    fn accept(&self, engine: &ContextEngine, answer: &str) -> Result<String, String> {
        let code = dedent(&extract_code_block(answer));
        if code.trim().is_empty() {
            return Err("it holds no code".into());
        }
        let code = match &self.function {
            Some(name) => pick_function(engine, self.language, &code, name, self.require_async)?,
            None => code,
        };
        let rules = RewriteRules {
            keep: &self.keep,
            require_async: self.require_async,
            used_parameters: self
                .function
                .as_deref()
                .map(|name| (name, self.used_parameters.as_slice())),
        };
        validate_rewrite(self.language, &code, &rules).map_err(|why| why.to_string())?;
        Ok(self.place(&code))
    }

    /// Indents the (dedented) code for the target's place.
    fn place(&self, code: &str) -> String {
        let mut out = String::with_capacity(code.len() + 64);
        for (i, line) in code.trim_end().split_inclusive('\n').enumerate() {
            if !line.trim().is_empty() {
                out.push_str(if i == 0 {
                    &self.first_indent
                } else {
                    &self.indent
                });
            }
            out.push_str(line);
        }
        if self.ends_with_newline {
            out.push('\n');
        }
        out
    }
}

/// The answer's definition of `name` (with its decorators), dedented. With several,
/// the first async one when async is wanted, else the first.
fn pick_function(
    engine: &ContextEngine,
    language: Language,
    code: &str,
    name: &str,
    want_async: bool,
) -> Result<String, String> {
    let doc = engine.parse(language, code.to_owned());
    let mut defs = functions_in(&doc, 0..code.len());
    if !defs.iter().any(|def| def.name == name) {
        // Not found where the answer parses with errors: a method alone parses only
        // inside a class in some languages, and the validator knows how to look (or
        // says where the syntax error is).
        defs = rewrite_functions(language, code).map_err(|why| why.to_string())?;
    }
    let def = defs
        .iter()
        .filter(|def| def.name == name)
        .find(|def| def.is_async || !want_async)
        .or_else(|| defs.iter().find(|def| def.name == name));
    match def {
        Some(def) => {
            // From the line start, so that dedenting sees the first line's
            // indentation; but not over words before the definition (TypeScript's
            // `export`), which the target's range leaves outside too.
            let line_start = code[..def.range.start].rfind('\n').map_or(0, |i| i + 1);
            let start = match code[line_start..def.range.start].trim().is_empty() {
                true => line_start,
                false => def.range.start,
            };
            Ok(dedent(&code[start..def.range.end]))
        }
        None => Err(format!("it does not define `{name}`")),
    }
}

fn leading_indent(line: &str) -> &str {
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use cerebrum_context::EngineConfig;
    use expect_test::{expect, Expect};

    fn engine() -> ContextEngine {
        ContextEngine::new(EngineConfig::default()).unwrap()
    }

    /// A fixture with `$0` (cursor) or `$0…$1` (selection) markers, a fake model
    /// answer, and the document after the edit (or the error).
    fn check_refactor(
        language: Language,
        fixture: &str,
        instruction: Option<&str>,
        answer: &str,
        expect: Expect,
    ) {
        let start = fixture.find("$0").unwrap();
        let text = fixture.replace("$0", "");
        let target = match text.find("$1") {
            Some(end) => Target::Selection(start..end),
            None => Target::Function { cursor: start },
        };
        let text = text.replace("$1", "");
        let engine = engine();
        let request = RefactorRequest {
            document: engine.parse(language, text.clone()),
            target,
            instruction: instruction.map(str::to_owned),
            path: None,
        };
        let actual = match plan(&engine, &request) {
            Err(err) => format!("plan error: {err}"),
            Ok(plan) => match plan.accept(&engine, answer) {
                Ok(new_text) => {
                    let mut edited = text.clone();
                    edited.replace_range(plan.range.clone(), &new_text);
                    edited
                }
                Err(reason) => format!("rejected: {reason}"),
            },
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn a_method_is_replaced_in_place_and_the_rest_is_untouched() {
        check_refactor(
            Language::Python,
            "import time\n\nclass Client:\n    def fetch(self, url):\n        time.sl$0eep(1)\n        return get(url)\n\n    def other(self):\n        pass\n",
            None,
            "import asyncio\n\nasync def fetch(self, url):\n    await asyncio.sleep(1)\n    return await get(url)\n",
            expect![[r#"
                import time

                class Client:
                    async def fetch(self, url):
                        await asyncio.sleep(1)
                        return await get(url)

                    def other(self):
                        pass
            "#]],
        );
    }

    #[test]
    fn decorators_and_a_fenced_answer() {
        check_refactor(
            Language::Python,
            "@retry(3)\ndef fetch(url):\n    return get(u$0rl)\nx = 1\n",
            None,
            "Sure:\n```python\n@retry(3)\nasync def fetch(url):\n    return await get(url)\n```\nDone.",
            expect![[r#"
                @retry(3)
                async def fetch(url):
                    return await get(url)
                x = 1
            "#]],
        );
    }

    #[test]
    fn rust_functions_keep_their_visibility_and_indentation() {
        check_refactor(
            Language::Rust,
            "impl S {\n    pub fn wait(&self) {\n        std::thread::sleep(D)$0;\n    }\n}\n",
            None,
            "use tokio::time::sleep;\n\n    pub async fn wait(&self) {\n        sleep(D).await;\n    }\n",
            expect![[r#"
                impl S {
                    pub async fn wait(&self) {
                        sleep(D).await;
                    }
                }
            "#]],
        );
    }

    #[test]
    fn answers_that_are_not_good_enough_are_rejected() {
        let fixture = "def fetch(url):\n    return get(u$0rl)\n";
        check_refactor(
            Language::Python,
            fixture,
            None,
            "def fetch(url):\n    return get(url)\n",
            expect!["rejected: `fetch` is not async"],
        );
        check_refactor(
            Language::Python,
            fixture,
            None,
            "async def load(url):\n    return await get(url)\n",
            expect!["rejected: it does not define `fetch`"],
        );
        check_refactor(
            Language::Python,
            fixture,
            None,
            "async def fetch(url:\n    return await get(url)\n",
            expect!["rejected: it has a syntax error at line 1, column 1"],
        );
        check_refactor(
            Language::Python,
            fixture,
            None,
            "\n\n",
            expect!["rejected: it holds no code"],
        );
        // SmolLM2's way of following the instruction: await something, drop the work.
        check_refactor(
            Language::Python,
            fixture,
            None,
            "async def fetch(url):\n    return await asyncio.sleep(1)\n",
            expect!["rejected: `fetch` no longer uses its parameter `url`"],
        );
        // The 0.5B model's favourite mistake in Rust: a prefix `await`.
        check_refactor(
            Language::Rust,
            "fn wait() {\n    sleep(D);$0\n}\n",
            None,
            "async fn wait() {\n    await sleep(D);\n}\n",
            expect!["rejected: it has a syntax error at line 2, column 5"],
        );
    }

    #[test]
    fn other_instructions_only_need_the_name_and_a_clean_parse() {
        check_refactor(
            Language::Python,
            "def add(a, b):\n    return a + $0b\n",
            Some("add type hints"),
            "def add(a: int, b: int) -> int:\n    return a + b\n",
            expect![[r#"
                def add(a: int, b: int) -> int:
                    return a + b
            "#]],
        );
    }

    #[test]
    fn no_action_where_it_makes_no_sense() {
        let answer = "async def f():\n    pass\n";
        check_refactor(
            Language::Python,
            "async def f():\n    await $0x\n",
            None,
            answer,
            expect!["plan error: `f` is already async"],
        );
        check_refactor(
            Language::Python,
            "x = 1$0\n",
            None,
            answer,
            expect!["plan error: the cursor is not inside a function; select the code to refactor"],
        );
        check_refactor(
            Language::Other,
            "hello $0world\n",
            None,
            answer,
            expect!["plan error: there is nothing to refactor in other code (python, rust, typescript, javascript, go, c, java are supported)"],
        );
        check_refactor(
            Language::Python,
            "def f():\n    $0pass\n",
            Some("  "),
            answer,
            expect!["plan error: the instruction is empty"],
        );
    }

    #[test]
    fn selections_are_replaced_exactly() {
        // Statements inside a function, selected from the line start.
        check_refactor(
            Language::Python,
            "def main():\n$0    time.sleep(1)\n    data = requests.get(u)\n$1    return data\n",
            None,
            "await asyncio.sleep(1)\ndata = await client.get(u)\n",
            expect![[r#"
                def main():
                    await asyncio.sleep(1)
                    data = await client.get(u)
                    return data
            "#]],
        );
        // A selection that is exactly one function is that function.
        check_refactor(
            Language::Python,
            "x = 1\n$0def f():\n    g()\n$1y = 2\n",
            None,
            "import asyncio\n\nasync def f():\n    await g()\n",
            expect![[r#"
                x = 1
                async def f():
                    await g()
                y = 2
            "#]],
        );
        // Two functions: both must survive, async.
        check_refactor(
            Language::Python,
            "$0def f():\n    g()\n\ndef h():\n    f()\n$1",
            None,
            "async def f():\n    await g()\n\ndef h():\n    f()\n",
            expect!["rejected: `h` is not async"],
        );
    }

    #[test]
    fn the_prompt_shows_related_code_then_the_target_alone() {
        let text = "import requests\n\ndef parse(r):\n    return r.json()\n\nclass C:\n    def fetch(self, url):\n        return parse(requests.get(url))\n";
        let engine = engine();
        let cursor = text.find("return parse").unwrap();
        let request = RefactorRequest {
            document: engine.parse(Language::Python, text.to_owned()),
            target: Target::Function { cursor },
            instruction: Some("add docstrings".into()),
            path: Some("a.py".into()),
        };
        let plan = plan(&engine, &request).unwrap();
        expect![[r#"
            # INSTRUCTION: add docstrings

            Related code, for reference:
            ```python
            import requests

            def parse(r):
                return r.json()
            ```

            Here is the code:
            ```python
            def fetch(self, url):
                return parse(requests.get(url))
            ```

            Refactored code:
            ```python
        "#]]
        .assert_eq(&plan.prompt);
        assert_eq!(plan.max_tokens, 256);
        assert_eq!(
            &text[plan.range.clone()],
            "def fetch(self, url):\n        return parse(requests.get(url))"
        );
    }

    #[test]
    fn typescript_and_javascript_functions_become_async() {
        check_refactor(
            Language::TypeScript,
            "export class Store {\n  load(key: string): string {\n    return fs.readFileSync(k$0ey, \"utf8\");\n  }\n}\n",
            None,
            "```typescript\nasync load(key: string): Promise<string> {\n  return await fs.promises.readFile(key, \"utf8\");\n}\n```",
            expect![[r#"
                export class Store {
                  async load(key: string): Promise<string> {
                    return await fs.promises.readFile(key, "utf8");
                  }
                }
            "#]],
        );
        // `export` is outside the function: kept, and not doubled when the answer
        // repeats it.
        check_refactor(
            Language::TypeScript,
            "export function readConfig(path: string): string {\n  return fs.readFileSync(p$0ath, \"utf8\").trim();\n}\n",
            None,
            "export async function readConfig(path: string): Promise<string> {\n  return (await fs.promises.readFile(path, \"utf8\")).trim();\n}\n",
            expect![[r#"
                export async function readConfig(path: string): Promise<string> {
                  return (await fs.promises.readFile(path, "utf8")).trim();
                }
            "#]],
        );
        // An arrow function is replaced with its `const` declaration.
        check_refactor(
            Language::JavaScript,
            "const fetchAll = (urls) => urls.map((u) => get($0u));\nmodule.exports = { fetchAll };\n",
            None,
            "const fetchAll = async (urls) => Promise.all(urls.map((u) => get(u)));\n",
            expect![[r#"
                const fetchAll = async (urls) => Promise.all(urls.map((u) => get(u)));
                module.exports = { fetchAll };
            "#]],
        );
        check_refactor(
            Language::JavaScript,
            "function wait(ms) {\n  sleep$0Sync(ms);\n}\n",
            None,
            "function wait(ms) {\n  return sleep(ms);\n}\n",
            expect!["rejected: `wait` is not async"],
        );
    }

    #[test]
    fn the_typescript_prompt_carries_the_typescript_instruction() {
        let text =
            "function load(path: string): string {\n  return fs.readFileSync(path, \"utf8\");\n}\n";
        let engine = engine();
        let request = RefactorRequest {
            document: engine.parse(Language::TypeScript, text.to_owned()),
            target: Target::Function {
                cursor: text.find("return").unwrap(),
            },
            instruction: None,
            path: None,
        };
        let plan = plan(&engine, &request).unwrap();
        assert!(plan.require_async);
        assert_eq!(
            Some(plan.instruction.as_str()),
            Language::TypeScript.async_instruction()
        );
        expect![[r#"
            # INSTRUCTION: Refactor to use async/await. Example: `function load(path: string): string { sleepSync(100); return fs.readFileSync(path, "utf8"); }` becomes `async function load(path: string): Promise<string> { await sleep(100); return await fs.promises.readFile(path, "utf8"); }` (an `async` function returns a `Promise`, and `await` goes before each call that returns one).

            Here is the code:
            ```typescript
            function load(path: string): string {
              return fs.readFileSync(path, "utf8");
            }
            ```

            Refactored code:
            ```typescript
        "#]]
        .assert_eq(&plan.prompt);
    }

    /// Languages without async functions get no action and a clear error, never
    /// another language's instruction.
    #[test]
    fn no_refactor_to_async_without_async_functions() {
        let engine = engine();
        for (language, text) in [
            (Language::Go, "func wait() {\n\ttime.Sleep(d)\n}\n"),
            (Language::C, "void wait(void) {\n    sleep(1);\n}\n"),
            (
                Language::Java,
                "class A {\n    void wait() {\n        sleep(1);\n    }\n}\n",
            ),
        ] {
            let doc = engine.parse(language, text.to_owned());
            let cursor = text.find("leep").unwrap();
            assert!(
                !async_refactor_applies(&doc, &Target::Function { cursor }),
                "{language}"
            );
            let request = RefactorRequest {
                document: doc.clone(),
                target: Target::Function { cursor },
                instruction: None,
                path: None,
            };
            let err = plan(&engine, &request).unwrap_err();
            assert!(matches!(err, PipelineError::UnsupportedLanguage(l) if l == language));
            assert_eq!(
                err.to_string(),
                format!(
                    "{language} has no async functions: there is no \"Refactor to async\" for it"
                )
            );
            // Other instructions still apply.
            let request = RefactorRequest {
                instruction: Some("add a comment".into()),
                ..request
            };
            assert!(plan(&engine, &request).is_ok(), "{language}");
        }
        let ts = engine.parse(Language::TypeScript, "function f() { g(); }\n".into());
        assert!(async_refactor_applies(
            &ts,
            &Target::Function { cursor: 15 }
        ));
    }

    #[test]
    fn dedent_keeps_relative_indentation() {
        assert_eq!(dedent("    a\n\n      b\n    c"), "a\n\n  b\nc");
        assert_eq!(dedent("a\n  b\n"), "a\n  b\n");
    }
}
