//! `lsp-edge eval`: measures completion quality on single-line fill-in-the-middle
//! holes made from real source trees, through the same completer that
//! `POST /v1/complete` and `lsp-edge complete` use, against a running vps-infer, and
//! beside plain windows of text around the cursor (no chunks) in the same run.
//!
//! The hole convention: a case removes the code of one line, from the end of its
//! indentation to the end of the line. The prompt is the file up to the cursor
//! (indentation included), the suffix is the rest of the file from the line's end
//! (its newline first). The answer is the first line of what the model generates,
//! with trailing whitespace trimmed; it scores an exact match when it equals the
//! removed code with trailing whitespace trimmed, and an edit similarity of
//! `1 - levenshtein / max(chars)`. Generation is greedy and stops at the first
//! newline, which changes nothing about the first line and saves decoding.
//!
//! With `--hole-lines N`, a case also takes out the N - 1 lines below the hole's, as
//! when new code is written and the text after the cursor does not follow the line
//! being written; the first line is scored as before. Single-line holes let a method
//! win by fitting the line to the text right after it (docs/benchmarks.md, "Thirteenth
//! pass"), so a change to how answers are chosen is checked on both.
//!
//! With `--block-holes`, a case takes out the rest of its line's block instead (the
//! lines below that are blank or indented at least as deep, at most
//! `completion.max_lines` in all), and generation goes on until the trimming an
//! editor's answer gets ([`TrimContext`]) says the answer is settled, or to
//! `completion.max_tokens`. The whole trimmed answer is scored beside its first line:
//! every line right, and whether it stopped where the block ends.
//!
//! Cases are deterministic for a seed and the same trees: files are listed in sorted
//! order, case `i` draws from source `i mod sources` (so each `--source` weighs
//! the same), a file uniformly, then an eligible line uniformly. Eligible lines hold
//! code: not blank, not inside a comment or a string that began on an earlier line,
//! not a docstring, not only closing brackets, at most [`MAX_LINE_CHARS`] long.
//! Eligible files are `.py` and `.rs` files of [`MIN_FILE_BYTES`] to
//! [`MAX_FILE_BYTES`] that parse without errors.
//!
//! Every configuration's prompt is primed: sent once for one token before the
//! request that is scored, so each answer comes from the same state of vps-infer's
//! cache (the prompt in it, its last token evaluated again) whichever configuration
//! ran first. Greedy answers from a prompt evaluated cold and from the same prompt
//! in the cache differ now and then (llama.cpp's batch shapes change the sums), and
//! unprimed, that moved about one answer in twenty between two configurations that
//! send the same prompt (docs/benchmarks.md, "Eighth pass").

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cerebrum_context::{ContextEngine, EngineConfig, Language};
use futures::StreamExt as _;
use serde::Serialize;

use crate::backend::{BackendError, StreamEvent};
use crate::config::{CompletionConfig, Config, Overrides};
use crate::edge::Edge;
use crate::pipeline::script::{Completer, CompletionRequest, GenerationEvent};
use crate::pipeline::stats::HttpStats;
use crate::pipeline::trim::{indent_width, TrimContext};
use crate::pipeline::{self, GenerationInput, Opened, PipelineError, Prompt};

/// Files smaller than this are left out: the engine sends them whole, so they say
/// nothing about context selection.
pub const MIN_FILE_BYTES: u64 = 2_000;
/// Files larger than this are left out (generated tables, vendored bundles).
pub const MAX_FILE_BYTES: u64 = 64_000;
/// Lines longer than this are not holes (data, not code anyone types).
pub const MAX_LINE_CHARS: usize = 150;
/// A file with a line longer than this is generated or minified and left out.
const MAX_FILE_LINE_CHARS: usize = 400;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A source tree to draw holes from (repeatable; each weighs the same).
    #[arg(long = "source", required = true)]
    pub sources: Vec<PathBuf>,
    /// Seed of the case draw.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of cases.
    #[arg(long, default_value_t = 60)]
    pub count: usize,
    /// Languages to draw holes from (repeatable). Python and Rust by default, the
    /// set every recorded figure in docs/benchmarks.md was measured on.
    #[arg(long = "language", default_values = ["python", "rust"], value_parser = parse_language)]
    pub languages: Vec<Language>,
    /// A plain window of BEFORE characters before the cursor and AFTER after it (whole
    /// lines, no chunks), sent as fill-in-the-middle in the same run; AFTER defaults
    /// to BEFORE / 3. Repeatable.
    #[arg(long = "baseline-chars", value_name = "BEFORE[:AFTER]")]
    pub baselines: Vec<String>,
    /// Another engine configuration to compare in the same run: NAME=FILE, FILE a
    /// TOML file like `serve`'s (its `[context]` section matters; for a model with
    /// windows of its own, such as the 1.5B, `[context.models."NAME"]` sets them).
    /// Repeatable.
    #[arg(long = "variant", value_name = "NAME=FILE")]
    pub variants: Vec<String>,
    /// Ask for each case as an editor does right after Enter: first the document as it
    /// was a keystroke before (the cursor at the end of the line above, the hole's
    /// line not there yet), then the case, so that the backend's cache holds the
    /// earlier prompt. Measures what cache reuse does to answers; engine runs only.
    #[arg(long)]
    pub after_enter: bool,
    /// Take out this many lines at each hole: its own and the ones below it, as when
    /// new code is written and the text after the cursor does not follow the line
    /// being written. The answer's first line is scored against the hole's line as
    /// before; a hole near the end of its file takes what lines there are.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub hole_lines: u16,
    /// Take out the rest of each hole's block: its line and the lines below it that
    /// are blank or indented at least as deep, up to `completion.max_lines` lines, as
    /// when a block is written after Enter. The whole answer is generated and trimmed
    /// as an editor would show it, and scored against those lines too: all of them
    /// right, and whether it stopped where the block ends.
    #[arg(long, conflicts_with = "hole_lines")]
    pub block_holes: bool,
    /// Leave out the engine with the main configuration (compare variants only).
    #[arg(long)]
    pub no_engine: bool,
    /// The model to ask for (default: the backend's default model, asked for at start).
    #[arg(long)]
    pub model: Option<String>,
    /// Most tokens per answer [default: 48, which the first line never reaches
    /// (generation stops at its newline); with --block-holes, `completion.max_tokens`
    /// (128), as an editor's answers get].
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// TOML configuration file (the same as `serve`'s).
    #[arg(long, env = "CEREBRUM_LSP_CONFIG")]
    pub config: Option<PathBuf>,
    /// The backend, `URL` (a vps-infer; default http://127.0.0.1:9000) or `KIND=URL`
    /// (see `lsp-edge serve --help`); the key comes from CEREBRUM_API_KEY.
    #[arg(long, value_name = "[KIND=]URL")]
    pub backend: Option<String>,
    /// Print the cases and stop (no backend needed).
    #[arg(long)]
    pub list: bool,
    /// Print the results as JSON (with every case) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Report each case on stderr as it finishes.
    #[arg(long, short)]
    pub verbose: bool,
}

/// One hole.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub id: usize,
    /// Path relative to the source tree's parent (`requests/sessions.py`).
    pub path: String,
    pub language: &'static str,
    /// 1-based line of the hole.
    pub line: usize,
    /// The removed code, trailing whitespace trimmed.
    pub expected: String,
    /// With `--block-holes`, every line the hole took out (the first as `expected`),
    /// each with trailing whitespace trimmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_block: Option<String>,
    #[serde(skip)]
    pub prompt: String,
    #[serde(skip)]
    pub suffix: String,
}

impl EvalArgs {
    /// Generation stops at the first line's end unless whole answers are scored.
    fn stop(&self) -> Vec<String> {
        if self.block_holes {
            Vec::new()
        } else {
            vec!["\n".into()]
        }
    }

    /// `--max-tokens`, set by [`run`] where it was not given.
    fn max_tokens(&self) -> u32 {
        self.max_tokens.unwrap_or(48)
    }
}

/// A file that can hold holes.
struct SourceFile {
    path: PathBuf,
    label: String,
}

/// SplitMix64: tiny, fixed, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SKIPPED_DIRS: [&str; 4] = ["__pycache__", "node_modules", "target", "site-packages"];

/// The `.py` and `.rs` files under `root` within the size limits, sorted.
fn list_files(root: &Path, languages: &[Language]) -> anyhow::Result<Vec<SourceFile>> {
    let base = root.parent().unwrap_or(root);
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read source directory {}", dir.display()))?;
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if kind.is_dir() {
                if !SKIPPED_DIRS.contains(&name.as_ref()) {
                    stack.push(path);
                }
            } else if kind.is_file() && languages.contains(&Language::from_path(&path)) {
                let size = entry.metadata().map_or(0, |meta| meta.len());
                if (MIN_FILE_BYTES..=MAX_FILE_BYTES).contains(&size) {
                    let label = path
                        .strip_prefix(base)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .into_owned();
                    out.push(SourceFile { path, label });
                }
            }
        }
    }
    out.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(out)
}

fn is_comment_or_string(kind: &str) -> bool {
    kind.contains("comment")
        || kind.contains("string")
        || kind == "escape_sequence"
        || kind == "interpolation"
}

/// The byte offsets of the lines of `text` that can hold a hole: (cursor, line end
/// without its newline).
fn eligible_lines(engine: &ContextEngine, language: Language, text: &str) -> Vec<(usize, usize)> {
    if text
        .lines()
        .any(|line| line.chars().count() > MAX_FILE_LINE_CHARS)
    {
        return Vec::new();
    }
    let doc = engine.parse(language, text.to_owned());
    let Some(tree) = doc.tree() else {
        return Vec::new();
    };
    let root = tree.root_node();
    if root.has_error() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let line_start = start;
        start += line.len();
        let content = line.trim_end();
        let code = content.trim_start();
        if code.is_empty() || code.chars().count() > MAX_LINE_CHARS {
            continue;
        }
        if code.chars().all(|c| ")]};,".contains(c)) {
            continue;
        }
        let cursor = line_start + (content.len() - code.len());
        let end = line_start + content.len();
        let Some(node) = root.descendant_for_byte_range(cursor, cursor + 1) else {
            continue;
        };
        let mut inside = false;
        let mut current = Some(node);
        while let Some(n) = current {
            let kind = n.kind();
            if kind.contains("comment") {
                inside = true;
                break;
            }
            if is_comment_or_string(kind) {
                // A string that began on an earlier line is prose or data; one that
                // stands alone as a statement is a docstring.
                let alone = n.parent().is_some_and(|p| {
                    p.kind() == "expression_statement" && p.named_child_count() == 1
                });
                if n.start_byte() < line_start || (language == Language::Python && alone) {
                    inside = true;
                    break;
                }
            }
            current = n.parent();
        }
        if !inside {
            out.push((cursor, end));
        }
    }
    out
}

/// A file's text and its eligible lines.
type Holes = (String, Vec<(usize, usize)>);

/// Draws `count` cases from the sources; fewer when the sources hold fewer holes.
pub fn make_cases(
    engine: &ContextEngine,
    sources: &[PathBuf],
    languages: &[Language],
    seed: u64,
    count: usize,
    shape: HoleShape,
) -> anyhow::Result<Vec<Case>> {
    let mut trees = Vec::new();
    for source in sources {
        let files = list_files(source, languages)?;
        if files.is_empty() {
            let names: Vec<&str> = languages.iter().map(|l| l.name()).collect();
            anyhow::bail!(
                "{} holds no {} file of {MIN_FILE_BYTES} to {MAX_FILE_BYTES} bytes",
                source.display(),
                names.join(" or ")
            );
        }
        trees.push(files);
    }
    let mut rng = Rng(seed);
    let mut used = HashSet::new();
    // Eligible lines per file, computed on first draw.
    let mut lines: BTreeMap<(usize, usize), Option<Holes>> = BTreeMap::new();
    let mut cases = Vec::new();
    let mut attempts = 0;
    while cases.len() < count && attempts < count * 50 + 100 {
        attempts += 1;
        let tree = cases.len() % trees.len();
        let files = &trees[tree];
        let index = rng.below(files.len());
        let file = &files[index];
        let entry = lines.entry((tree, index)).or_insert_with(|| {
            let text = std::fs::read_to_string(&file.path).ok()?;
            let language = Language::from_path(&file.path);
            let eligible = eligible_lines(engine, language, &text);
            (!eligible.is_empty()).then_some((text, eligible))
        });
        let Some((text, eligible)) = entry else {
            continue;
        };
        let (cursor, end) = eligible[rng.below(eligible.len())];
        if !used.insert((tree, index, cursor)) {
            continue;
        }
        let language = Language::from_path(&file.path);
        let (suffix, expected_block) = match shape {
            HoleShape::Lines(lines) => (below_hole(&text[end..], lines), None),
            HoleShape::Block(max_lines) => {
                let block_end = block_end(text, end, max_lines);
                let lines: Vec<&str> = text[cursor..block_end]
                    .split('\n')
                    .map(str::trim_end)
                    .collect();
                (&text[block_end..], Some(lines.join("\n")))
            }
        };
        cases.push(Case {
            id: cases.len(),
            path: file.label.clone(),
            language: language.name(),
            line: text[..cursor].matches('\n').count() + 1,
            expected: text[cursor..end].trim_end().to_owned(),
            expected_block,
            prompt: text[..cursor].to_owned(),
            suffix: suffix.to_owned(),
        });
    }
    Ok(cases)
}

/// How much text a hole takes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoleShape {
    /// Its own line and the `n - 1` lines below it (`--hole-lines`).
    Lines(usize),
    /// Its line and the rest of its block, at most `n` lines (`--block-holes`).
    Block(usize),
}

/// Where a block hole ends, given `end`, the end of its first line's code: after the
/// last line of code among those below it that belong to its block (blank, or
/// indented at least as deep as its first line), at most `max_lines` lines in all.
/// At the top level, where the enclosing block is the file, the block is the item the
/// hole starts: after deeper lines, a line at column 0 that does not continue the item
/// ends it. Blank lines after the block's last code stay in the suffix.
fn block_end(text: &str, end: usize, max_lines: usize) -> usize {
    let line_start = text[..end].rfind('\n').map_or(0, |at| at + 1);
    let depth = indent_width(&text[line_start..end]);
    let Some(newline) = text[end..].find('\n') else {
        return end;
    };
    let mut start = end + newline + 1;
    let mut block_end = end;
    let mut went_deeper = false;
    let below = text[start..].split_inclusive('\n');
    for line in below.take(max_lines.saturating_sub(1)) {
        let code = line.trim_end();
        if !code.is_empty() {
            let indent = indent_width(line);
            let next_item = depth == 0 && indent == 0 && went_deeper && !continues_item(code);
            if indent < depth || next_item {
                break;
            }
            went_deeper |= indent > depth;
            block_end = start + code.len();
        }
        start += line.len();
    }
    block_end
}

/// Whether `code`, a line at the top level after lines deeper than it, still belongs to
/// the item above: a closer (`}`, `)`, `]`), Rust's `{` on its own line after a `where`
/// clause, or Python's `else:`, `elif`, `except` and `finally:`.
fn continues_item(code: &str) -> bool {
    let word = code
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or("");
    code.starts_with(['}', ')', ']', '{']) || matches!(word, "else" | "elif" | "except" | "finally")
}

/// What follows a hole of `lines` lines, given `after`, the text from the end of its
/// first line on: the `lines - 1` lines below that go too, so it starts with the line
/// break that ends the last of them (or is empty at the end of the file).
fn below_hole(after: &str, lines: usize) -> &str {
    let cut = after
        .match_indices('\n')
        .nth(lines.saturating_sub(1))
        .map_or(after.len(), |(at, _)| at);
    &after[cut..]
}

/// The text before the cursor a keystroke before the case, when the user was at the end
/// of the line above, about to press Enter: the case's prompt less its last line break
/// and indentation. The suffix is the same (it starts with the hole line's own break).
/// Also returns what Enter typed.
pub fn before_enter(case: &Case) -> (&str, &str) {
    let at = case.prompt.rfind('\n').unwrap_or(0);
    case.prompt.split_at(at)
}

/// The first line of an answer, trailing whitespace trimmed.
pub fn first_line(text: &str) -> &str {
    text.split('\n').next().unwrap_or("").trim_end()
}

/// `1 - levenshtein(a, b) / max(chars)`, over characters; 1 for two empty strings.
pub fn edit_similarity(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    1.0 - row[b.len()] as f64 / longest as f64
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

/// What one configuration made of one case.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The first generated line.
    pub text: String,
    pub exact: bool,
    pub similarity: f64,
    pub prompt_tokens: u64,
    /// Not known for an answer cut where its block ends (no final event came).
    pub cached_tokens: Option<u64>,
    /// From the request to the last token, context engine included.
    pub ms: f64,
    /// Extra chunks sent (engine only).
    pub chunks: usize,
    /// With `--block-holes`, the whole answer against the hole's lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A whole answer against a block hole's lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockOutcome {
    /// The answer as an editor would show it, trailing whitespace trimmed per line.
    pub text: String,
    /// Every line right, and no more lines.
    pub exact: bool,
    /// Lines in the answer and in the hole.
    pub lines: usize,
    pub expected_lines: usize,
    /// The answer's leading lines that are right.
    pub right_lines: usize,
    /// Why the answer ends there: a trimming rule (`block_end`, `next_item`, `suffix`,
    /// `lines`) or the model (`eos`, `stop`, `length`: the token cap).
    pub stop: String,
}

impl BlockOutcome {
    /// Compares lines with trailing whitespace trimmed; blank lines at the end of the
    /// answer do not count.
    pub fn new(answer: &str, expected: &str, stop: &str) -> BlockOutcome {
        let mut lines: Vec<&str> = answer.split('\n').map(str::trim_end).collect();
        while lines.last().is_some_and(|line| line.is_empty()) {
            lines.pop();
        }
        let expected: Vec<&str> = expected.split('\n').collect();
        let right_lines = lines
            .iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count();
        BlockOutcome {
            text: lines.join("\n"),
            exact: lines == expected,
            lines: lines.len(),
            expected_lines: expected.len(),
            right_lines,
            stop: stop.to_owned(),
        }
    }
}

enum Runner {
    Engine(Completer),
    Window { before: usize, after: usize },
}

struct Variant {
    name: String,
    runner: Runner,
}

/// Totals for one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub name: String,
    pub cases: usize,
    pub errors: usize,
    pub exact_match: f64,
    pub edit_similarity: f64,
    pub mean_prompt_tokens: f64,
    /// `None` when no answer said (every answer was cut where its block ends).
    pub mean_cached_tokens: Option<f64>,
    pub mean_ms: f64,
    pub mean_chunks: f64,
    /// The same figures per language.
    pub by_language: BTreeMap<String, LanguageScore>,
    /// With `--block-holes`, the whole answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockScore>,
}

/// Whole answers against block holes, each a share of the cases (an error is in none
/// of them, and no line of it is right).
#[derive(Debug, Clone, Serialize)]
pub struct BlockScore {
    /// Every line right, and no more.
    pub exact_match: f64,
    /// As many lines as the hole: stopped where the block ends.
    pub stopped_right: f64,
    pub too_short: f64,
    pub too_long: f64,
    /// The mean share of a hole's lines that the answer's leading lines got right.
    pub lines_right: f64,
    pub mean_expected_lines: f64,
    /// How many answers end for each reason ([`BlockOutcome::stop`]).
    pub stops: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LanguageScore {
    pub cases: usize,
    pub exact_match: f64,
    pub edit_similarity: f64,
    pub mean_prompt_tokens: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    #[serde(flatten)]
    pub case: Case,
    pub outcomes: BTreeMap<String, Outcome>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub count: usize,
    /// Lines each hole takes out (`--hole-lines`).
    pub hole_lines: u16,
    /// With `--block-holes`, the most lines a hole takes out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_max_lines: Option<usize>,
    pub sources: Vec<String>,
    pub model: Option<String>,
    pub scores: Vec<Score>,
    pub cases: Vec<CaseResult>,
}

fn parse_baseline(spec: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |s: &str| {
        s.trim().parse::<usize>().with_context(|| {
            format!("--baseline-chars {spec:?}: expected BEFORE[:AFTER] in characters")
        })
    };
    match spec.split_once(':') {
        Some((before, after)) => Ok((parse(before)?, parse(after)?)),
        None => {
            let before = parse(spec)?;
            Ok((before, before / 3))
        }
    }
}

fn load_config(file: Option<&Path>, backend: Option<&String>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        backends: backend.into_iter().cloned().collect(),
        ..Overrides::default()
    };
    let mut config = Config::load(file, |name| std::env::var(name).ok(), &overrides)
        .context("invalid configuration")?;
    // A cold prompt on a busy 2-core machine can take longer than an editor would
    // wait; an evaluation waits.
    for backend in std::iter::once(&mut config.backend).chain(&mut config.backends) {
        backend.first_token_timeout_ms = backend.first_token_timeout_ms.max(300_000);
        backend.total_timeout_ms = backend.total_timeout_ms.max(600_000);
    }
    config.breaker.failure_threshold = config.breaker.failure_threshold.max(1_000);
    Ok(config)
}

async fn run_engine(
    completer: &Completer,
    case: &Case,
    args: &EvalArgs,
    max_lines: usize,
) -> anyhow::Result<Outcome> {
    let request = |prompt: &str, suffix: &str, max_tokens| CompletionRequest {
        prompt: prompt.to_owned(),
        suffix: Some(suffix.to_owned()),
        language: Language::from_name(case.language),
        // No path: each case stands alone (a kept document would carry one case's
        // chosen chunks into the next case from the same file).
        path: None,
        instruction: None,
        model: args.model.clone(),
        max_tokens,
        temperature: 0.0,
        stop: args.stop(),
    };
    if args.after_enter {
        let (before, _) = before_enter(case);
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
    let events = futures::stream::unfold(generation, |mut generation| async move {
        let event = generation.next().await?.map(|event| match event {
            GenerationEvent::Token(token) => Event::Text(token),
            GenerationEvent::Done(done) => Event::Done(Final {
                prompt_tokens: done.prompt_tokens,
                cached_tokens: done.cached_tokens,
                stop_reason: done.stop_reason,
            }),
        });
        Some((event.map_err(anyhow::Error::from), generation))
    });
    let trim = block_trim(case, &case.prompt, &case.suffix, max_lines);
    let (raw, done) = read_answer(events, trim.as_ref()).await?;
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
    let Opened { mut stream, .. } = pipeline::open(&edge.backends, &primer).await?;
    let mut primed = None;
    while let Some(event) = stream.next().await.transpose()? {
        if let StreamEvent::Done(done) = event {
            primed = Some(done.prompt_tokens);
        }
    }
    let primed = primed.context("vps-infer's stream ended without its final event")?;
    let Opened { stream, .. } = pipeline::open(&edge.backends, &input).await?;
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?.map(|event| match event {
            StreamEvent::Token(token) => Event::Text(token),
            StreamEvent::Done(done) => Event::Done(Final {
                prompt_tokens: done.prompt_tokens,
                cached_tokens: done.cached_tokens,
                stop_reason: done.stop_reason,
            }),
        });
        Some((event.map_err(anyhow::Error::from), stream))
    });
    let (raw, done) = read_answer(events, trim.as_ref()).await?;
    Ok(outcome(
        case,
        &raw,
        trim.as_ref(),
        (done, primed),
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

fn failed(err: &anyhow::Error) -> Outcome {
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

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// Scores one variant. Exact match and similarity count an error as a miss; the
/// means of tokens and time are over the cases that ran.
fn score(name: &str, results: &[CaseResult]) -> Score {
    let outcomes: Vec<(&Case, &Outcome)> = results
        .iter()
        .filter_map(|r| r.outcomes.get(name).map(|o| (&r.case, o)))
        .collect();
    let ok = || outcomes.iter().filter(|(_, o)| o.error.is_none());
    let mut by_language = BTreeMap::new();
    let languages: HashSet<&str> = outcomes.iter().map(|(c, _)| c.language).collect();
    for language in languages {
        let these: Vec<&Outcome> = outcomes
            .iter()
            .filter(|(c, _)| c.language == language)
            .map(|(_, o)| *o)
            .collect();
        by_language.insert(
            language.to_owned(),
            LanguageScore {
                cases: these.len(),
                exact_match: mean(these.iter().map(|o| f64::from(u8::from(o.exact)))),
                edit_similarity: mean(these.iter().map(|o| o.similarity)),
                mean_prompt_tokens: mean(
                    these
                        .iter()
                        .filter(|o| o.error.is_none())
                        .map(|o| o.prompt_tokens as f64),
                ),
            },
        );
    }
    Score {
        name: name.to_owned(),
        cases: outcomes.len(),
        errors: outcomes.iter().filter(|(_, o)| o.error.is_some()).count(),
        exact_match: mean(outcomes.iter().map(|(_, o)| f64::from(u8::from(o.exact)))),
        edit_similarity: mean(outcomes.iter().map(|(_, o)| o.similarity)),
        mean_prompt_tokens: mean(ok().map(|(_, o)| o.prompt_tokens as f64)),
        mean_cached_tokens: ok()
            .any(|(_, o)| o.cached_tokens.is_some())
            .then(|| mean(ok().filter_map(|(_, o)| o.cached_tokens).map(|t| t as f64))),
        mean_ms: mean(ok().map(|(_, o)| o.ms)),
        mean_chunks: mean(ok().map(|(_, o)| o.chunks as f64)),
        by_language,
        block: block_score(&outcomes),
    }
}

/// `None` unless the cases are block holes.
fn block_score(outcomes: &[(&Case, &Outcome)]) -> Option<BlockScore> {
    let expected_lines: Vec<f64> = outcomes
        .iter()
        .map(|(c, _)| Some(c.expected_block.as_ref()?.split('\n').count() as f64))
        .collect::<Option<_>>()?;
    let blocks: Vec<Option<&BlockOutcome>> =
        outcomes.iter().map(|(_, o)| o.block.as_ref()).collect();
    let share = |test: fn(&BlockOutcome) -> bool| {
        mean(
            blocks
                .iter()
                .map(|b| f64::from(u8::from(b.is_some_and(test)))),
        )
    };
    Some(BlockScore {
        exact_match: share(|b| b.exact),
        stopped_right: share(|b| b.lines == b.expected_lines),
        too_short: share(|b| b.lines < b.expected_lines),
        too_long: share(|b| b.lines > b.expected_lines),
        lines_right: mean(
            blocks
                .iter()
                .zip(&expected_lines)
                .map(|(b, lines)| b.map_or(0.0, |b| b.right_lines as f64 / lines)),
        ),
        mean_expected_lines: mean(expected_lines.iter().copied()),
        stops: blocks
            .iter()
            .flatten()
            .fold(BTreeMap::new(), |mut stops, b| {
                *stops.entry(b.stop.clone()).or_default() += 1;
                stops
            }),
    })
}

/// The table `lsp-edge eval` prints without `--json`.
pub fn render_table(report: &Report) -> String {
    let holes = match (report.block_max_lines, report.hole_lines) {
        (Some(max), _) => format!(", holes to the end of their block, at most {max} lines"),
        (None, 1) => String::new(),
        (None, n) => format!(", holes of {n} lines"),
    };
    let mut out = format!(
        "{} cases (seed {}{holes}), model {}\n{:<24} {:>6} {:>9} {:>10} {:>9} {:>8} {:>7} {:>6}\n",
        report.count,
        report.seed,
        report.model.as_deref().unwrap_or("(vps-infer's default)"),
        "variant",
        "EM",
        "edit sim",
        "prompt tok",
        "cached",
        "mean ms",
        "chunks",
        "errors",
    );
    for s in &report.scores {
        let cached = s
            .mean_cached_tokens
            .map_or_else(|| "-".to_owned(), |t| format!("{t:.0}"));
        out.push_str(&format!(
            "{:<24} {:>6.3} {:>9.3} {:>10.0} {:>9} {:>8.0} {:>7.2} {:>6}\n",
            s.name,
            s.exact_match,
            s.edit_similarity,
            s.mean_prompt_tokens,
            cached,
            s.mean_ms,
            s.mean_chunks,
            s.errors
        ));
    }
    for s in &report.scores {
        for (language, l) in &s.by_language {
            out.push_str(&format!(
                "  {:<22} {:>6.3} {:>9.3} {:>10.0}   ({} {} cases)\n",
                s.name, l.exact_match, l.edit_similarity, l.mean_prompt_tokens, language, l.cases
            ));
        }
    }
    let blocks: Vec<(&str, &BlockScore)> = report
        .scores
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.block.as_ref()?)))
        .collect();
    if let Some((_, first)) = blocks.first() {
        out.push_str(&format!(
            "whole answers (holes of {:.1} lines on average)\n{:<24} {:>6} {:>13} {:>9} {:>8} {:>11}\n",
            first.mean_expected_lines,
            "variant",
            "EM",
            "stopped right",
            "too short",
            "too long",
            "lines right",
        ));
        for (name, b) in blocks {
            out.push_str(&format!(
                "{:<24} {:>6.3} {:>13.3} {:>9.3} {:>8.3} {:>11.3}\n",
                name, b.exact_match, b.stopped_right, b.too_short, b.too_long, b.lines_right
            ));
            let stops: Vec<String> = b
                .stops
                .iter()
                .map(|(why, n)| format!("{why} {n}"))
                .collect();
            out.push_str(&format!("  {:<22} ended by: {}\n", name, stops.join(", ")));
        }
    }
    out
}

fn parse_language(name: &str) -> Result<Language, String> {
    match Language::from_name(name) {
        Language::Other => {
            let known: Vec<&str> = Language::PARSED.iter().map(|l| l.name()).collect();
            Err(format!("unknown language (known: {})", known.join(", ")))
        }
        language => Ok(language),
    }
}

/// `lsp-edge eval`.
pub async fn run(mut args: EvalArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref(), args.backend.as_ref())?;
    if args.block_holes {
        args.max_tokens = args.max_tokens.or(Some(config.completion.max_tokens));
    }
    let engine =
        ContextEngine::new(EngineConfig::default()).context("cannot build the context engine")?;
    let sources = args.sources.clone();
    let (languages, seed, count) = (args.languages.clone(), args.seed, args.count);
    let max_lines = config.completion.max_lines;
    let shape = if args.block_holes {
        HoleShape::Block(max_lines)
    } else {
        HoleShape::Lines(usize::from(args.hole_lines))
    };
    let cases = tokio::task::spawn_blocking(move || {
        make_cases(&engine, &sources, &languages, seed, count, shape)
    })
    .await
    .context("drawing cases failed")??;
    if cases.is_empty() {
        anyhow::bail!("the sources hold no eligible line");
    }
    if args.list {
        for case in &cases {
            println!("{}", serde_json::to_string(case)?);
        }
        return Ok(());
    }

    let main_edge = Edge::new(config.clone()).context("cannot start lsp-edge")?;
    if args.model.is_none() && config.models.completion.is_none() {
        // Named, the backend's default model gives every case, its primer included,
        // that model's windows, and the report says what it measured.
        let health = main_edge.backends.first().client.health().await;
        args.model = health.ok().and_then(|health| health.default_model);
    }
    let mut variants = Vec::new();
    if !args.no_engine {
        variants.push(Variant {
            name: "cerebrum".into(),
            runner: Runner::Engine(Completer::new(
                main_edge.clone(),
                Arc::new(HttpStats::default()),
            )),
        });
    }
    for spec in &args.variants {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--variant {spec:?}: expected NAME=FILE"))?;
        let mut variant_config = load_config(Some(Path::new(file)), args.backend.as_ref())?;
        variant_config.backend = config.backend.clone();
        variant_config.backends = config.backends.clone();
        let edge = Edge::new(variant_config).with_context(|| format!("variant {name}"))?;
        variants.push(Variant {
            name: name.to_owned(),
            runner: Runner::Engine(Completer::new(edge, Arc::new(HttpStats::default()))),
        });
    }
    for spec in &args.baselines {
        let (before, after) = parse_baseline(spec)?;
        variants.push(Variant {
            name: format!("window {before}/{after}"),
            runner: Runner::Window { before, after },
        });
    }
    if variants.is_empty() {
        anyhow::bail!("nothing to run: --no-engine needs --variant or --baseline-chars");
    }
    if variants.iter().any(|v| v.name.is_empty())
        || variants
            .iter()
            .map(|v| &v.name)
            .collect::<HashSet<_>>()
            .len()
            != variants.len()
    {
        anyhow::bail!("variant names must be distinct and not empty");
    }

    let mut results = Vec::new();
    let mut consecutive_errors = 0;
    for (i, case) in cases.iter().enumerate() {
        let mut outcomes = BTreeMap::new();
        // Rotating the order spreads the state each variant finds the machine in
        // (caches warm, load from the previous case) evenly across variants.
        for k in 0..variants.len() {
            let variant = &variants[(i + k) % variants.len()];
            let mut busy = 0;
            let outcome = loop {
                let outcome = match &variant.runner {
                    Runner::Engine(completer) => {
                        run_engine(completer, case, &args, max_lines).await
                    }
                    Runner::Window { before, after } => {
                        run_window(&main_edge, case, (*before, *after), &args, max_lines).await
                    }
                };
                // An evaluation is a batch job: when the backend is busy it waits
                // rather than score the case as a miss.
                match outcome.as_ref().err().and_then(busy_for) {
                    Some(wait) if busy < BUSY_RETRIES => {
                        busy += 1;
                        eprintln!(
                            "case {i} {}: the backend is busy; asking again in {}s",
                            variant.name,
                            wait.as_secs()
                        );
                        tokio::time::sleep(wait).await;
                    }
                    _ => break outcome,
                }
            };
            let outcome = outcome.unwrap_or_else(|err| failed(&err));
            if let Some(err) = &outcome.error {
                consecutive_errors += 1;
                eprintln!(
                    "case {i} ({}:{}) {}: {err}",
                    case.path, case.line, variant.name
                );
                if consecutive_errors >= 5 {
                    anyhow::bail!("five requests in a row failed; last: {err}");
                }
            } else {
                consecutive_errors = 0;
            }
            if args.verbose {
                eprintln!(
                    "case {i} {}:{} {}: {} {:?} (want {:?}) {} tokens {:.0} ms",
                    case.path,
                    case.line,
                    variant.name,
                    if outcome.exact { "HIT " } else { "miss" },
                    outcome.text,
                    case.expected,
                    outcome.prompt_tokens,
                    outcome.ms
                );
            }
            outcomes.insert(variant.name.clone(), outcome);
        }
        if !args.verbose {
            eprint!("\rcase {}/{}", i + 1, cases.len());
        }
        results.push(CaseResult {
            case: case.clone(),
            outcomes,
        });
    }
    if !args.verbose {
        eprintln!();
    }
    let report = Report {
        seed: args.seed,
        count: cases.len(),
        hole_lines: args.hole_lines,
        block_max_lines: args.block_holes.then_some(max_lines),
        sources: args
            .sources
            .iter()
            .map(|s| s.display().to_string())
            .collect(),
        model: args.model.clone(),
        scores: variants.iter().map(|v| score(&v.name, &results)).collect(),
        cases: results,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_table(&report));
    }
    Ok(())
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
    fn edit_similarity_counts_characters() {
        assert_eq!(edit_similarity("", ""), 1.0);
        assert_eq!(edit_similarity("abc", "abc"), 1.0);
        assert_eq!(edit_similarity("abc", ""), 0.0);
        assert!((edit_similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-9);
        assert!((edit_similarity("é", "e") - 0.0).abs() < 1e-9);
    }

    #[test]
    fn the_first_line_is_trimmed_at_the_end_only() {
        assert_eq!(first_line("  x = 1  \ny = 2"), "  x = 1");
        assert_eq!(first_line("\nx"), "");
        assert_eq!(first_line(""), "");
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

    #[test]
    fn holes_are_on_code_lines_only() {
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let text = "\"\"\"Module doc.\n\nMore.\n\"\"\"\n\n# A comment.\nimport os\n\n\ndef f(a):\n    \"\"\"Doc.\"\"\"\n    x = [\n        1,\n    ]\n    return x  # why\n";
        let lines: Vec<&str> = eligible_lines(&engine, Language::Python, text)
            .into_iter()
            .map(|(cursor, end)| &text[cursor..end])
            .collect();
        assert_eq!(
            lines,
            ["import os", "def f(a):", "x = [", "1,", "return x  # why"]
        );
    }

    #[test]
    fn cases_are_the_same_for_a_seed() {
        let dir = std::env::temp_dir().join(format!("cerebrum-eval-{}", std::process::id()));
        let src = dir.join("pkg");
        std::fs::create_dir_all(&src).unwrap();
        let body: String = (0..60)
            .map(|i| format!("def f{i}(a, b):\n    return a * {i} + b\n\n"))
            .collect();
        std::fs::write(src.join("m.py"), &body).unwrap();
        std::fs::write(src.join("small.py"), "x = 1\n").unwrap();
        let engine = ContextEngine::new(EngineConfig::default()).unwrap();
        let draw = |seed, shape| {
            let languages = [Language::Python];
            make_cases(
                &engine,
                std::slice::from_ref(&src),
                &languages,
                seed,
                5,
                shape,
            )
            .unwrap()
        };
        let a = draw(7, HoleShape::Lines(1));
        let b = draw(7, HoleShape::Lines(1));
        let c = draw(8, HoleShape::Lines(1));
        let wide = draw(7, HoleShape::Lines(3));
        let blocks = draw(7, HoleShape::Block(12));
        std::fs::remove_dir_all(&dir).unwrap();
        let key = |cases: &[Case]| cases.iter().map(|c| c.line).collect::<Vec<_>>();
        assert_eq!(a.len(), 5);
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        // Wider holes: the same holes and expected lines, less text after them.
        assert_eq!(key(&wide), key(&a));
        for (wide, one) in wide.iter().zip(&a) {
            assert_eq!((&wide.prompt, &wide.expected), (&one.prompt, &one.expected));
            assert_eq!(wide.suffix, below_hole(&one.suffix, 3));
            assert_eq!(one.expected_block, None);
        }
        // Block holes: the same holes, and the text they take out is the document's.
        assert_eq!(key(&blocks), key(&a));
        for case in &blocks {
            let block = case.expected_block.as_deref().unwrap();
            assert!(block.starts_with(&case.expected), "{block:?}");
            assert_eq!(format!("{}{block}{}", case.prompt, case.suffix), body);
        }
        for case in &a {
            assert_eq!(case.path, "pkg/m.py");
            assert!(body.contains(&format!(
                "{}{}{}",
                case.prompt.rsplit('\n').next().unwrap(),
                case.expected,
                "\n"
            )));
            assert_eq!(
                format!("{}{}{}", case.prompt, case.expected, case.suffix),
                body
            );
            // A keystroke earlier the hole's line was not there yet.
            let (before, typed) = before_enter(case);
            assert!(["\n", "\n    "].contains(&typed), "{typed:?}");
            let mut lines: Vec<&str> = body.split_inclusive('\n').collect();
            lines.remove(case.line - 1);
            assert_eq!(format!("{before}{}", case.suffix), lines.concat());
        }
    }

    #[test]
    fn a_wider_hole_takes_the_lines_below_it_out_too() {
        let after = "\n    y = 2\n    return x\n\nz = 3\n";
        assert_eq!(below_hole(after, 1), after);
        assert_eq!(below_hole(after, 3), "\n\nz = 3\n");
        assert_eq!(below_hole("\n    y = 2", 3), "");
    }

    #[test]
    fn a_block_hole_runs_to_the_end_of_its_block() {
        let text = "def f(a):\n    x = 1\n    if a:\n        y = 2\n\n    return x  \n\nz = 3\n";
        let end_of = |line: &str| text.find(line).unwrap() + line.len();
        let at = |offset: usize| &text[offset..];
        // The rest of the function, blank line and trailing spaces included; the blank
        // line after it stays in the suffix.
        assert_eq!(at(block_end(text, end_of("x = 1"), 12)), "  \n\nz = 3\n");
        // A deeper line's block ends where its indentation does.
        assert_eq!(
            at(block_end(text, end_of("y = 2"), 12)),
            "\n\n    return x  \n\nz = 3\n"
        );
        // At most max_lines lines, blank ones counted.
        assert_eq!(
            at(block_end(text, end_of("x = 1"), 3)),
            "\n\n    return x  \n\nz = 3\n"
        );
        assert_eq!(at(block_end(text, end_of("x = 1"), 1)), at(end_of("x = 1")));
        // The last line of a file, with and without its newline.
        assert_eq!(at(block_end(text, end_of("z = 3"), 12)), "\n");
        assert_eq!(block_end("a\n  b", 1, 12), 5);
    }

    #[test]
    fn a_top_level_block_hole_is_one_item() {
        fn end(text: &str) -> &str {
            &text[block_end(text, text.find('\n').unwrap(), 12)..]
        }
        assert_eq!(
            end("def f():\n    pass\n\ndef g():\n    pass\n"),
            "\n\ndef g():\n    pass\n"
        );
        assert_eq!(
            end("if a:\n    x = 1\nelse:\n    x = 2\n# next\ny = x\n"),
            "\n# next\ny = x\n"
        );
        assert_eq!(
            end("impl<T> A for T\nwhere\n    T: Copy,\n{\n    fn f() {}\n}\nfn g() {}\n"),
            "\nfn g() {}\n"
        );
        // Statements that never go deeper run on, as deeper holes' blocks do.
        assert_eq!(end("import a\nimport b\n"), "\n");
    }

    #[test]
    fn whole_answers_are_scored_line_by_line() {
        let expected = "x = 1\n    if a:\n        y = 2";
        let right = BlockOutcome::new("x = 1\n    if a:  \n        y = 2\n\n", expected, "eos");
        assert_eq!(
            (
                right.exact,
                right.lines,
                right.expected_lines,
                right.right_lines
            ),
            (true, 3, 3, 3)
        );
        assert_eq!(right.text, "x = 1\n    if a:\n        y = 2");
        let short = BlockOutcome::new("x = 1\n    if a:", expected, "eos");
        assert_eq!((short.exact, short.lines, short.right_lines), (false, 2, 2));
        let long = BlockOutcome::new(
            "x = 1\n    if b:\n        y = 2\n    z = 3",
            expected,
            "block_end",
        );
        assert_eq!((long.exact, long.lines, long.right_lines), (false, 4, 1));
        assert_eq!(BlockOutcome::new("", expected, "eos").lines, 0);
    }

    #[test]
    fn scores_count_errors_as_misses_and_the_table_names_every_variant() {
        let case = |id: usize, language: &'static str| Case {
            id,
            path: format!("p{id}.py"),
            language,
            line: 1,
            expected: "x = 1".into(),
            expected_block: None,
            prompt: String::new(),
            suffix: String::new(),
        };
        let outcome = |exact: bool, tokens: u64| Outcome {
            text: if exact { "x = 1".into() } else { "y".into() },
            exact,
            similarity: if exact { 1.0 } else { 0.0 },
            prompt_tokens: tokens,
            cached_tokens: Some(0),
            ms: 10.0,
            chunks: 1,
            block: None,
            error: None,
        };
        let results = vec![
            CaseResult {
                case: case(0, "python"),
                outcomes: BTreeMap::from([("a".to_owned(), outcome(true, 100))]),
            },
            CaseResult {
                case: case(1, "rust"),
                outcomes: BTreeMap::from([(
                    "a".to_owned(),
                    failed(&anyhow::anyhow!("backend down")),
                )]),
            },
        ];
        let score = score("a", &results);
        assert_eq!((score.cases, score.errors), (2, 1));
        assert_eq!(score.exact_match, 0.5);
        // Tokens and time average over the cases that ran.
        assert_eq!(score.mean_prompt_tokens, 100.0);
        assert_eq!(score.by_language["python"].exact_match, 1.0);
        assert_eq!(score.by_language["rust"].exact_match, 0.0);
        let report = Report {
            seed: 1,
            count: 2,
            hole_lines: 1,
            block_max_lines: None,
            sources: Vec::new(),
            model: None,
            scores: vec![score],
            cases: results,
        };
        let table = render_table(&report);
        assert!(table.starts_with("2 cases (seed 1), model"), "{table}");
        assert!(table.contains("\na "), "{table}");
        assert!(table.contains("0.500"), "{table}");
        let wide = Report {
            hole_lines: 4,
            ..report
        };
        let table = render_table(&wide);
        assert!(
            table.starts_with("2 cases (seed 1, holes of 4 lines)"),
            "{table}"
        );
        assert!(!table.contains("whole answers"), "{table}");

        // Block holes: one answer stops a line short, the other case failed.
        let mut results = wide.cases;
        for result in &mut results {
            result.case.expected_block = Some("x = 1\ny = 2".into());
        }
        if let Some(outcome) = results[0].outcomes.get_mut("a") {
            outcome.block = Some(BlockOutcome::new("x = 1", "x = 1\ny = 2", "eos"));
        }
        let block = super::score("a", &results).block.unwrap();
        assert_eq!((block.exact_match, block.stopped_right), (0.0, 0.0));
        assert_eq!((block.too_short, block.too_long), (0.5, 0.0));
        assert_eq!((block.lines_right, block.mean_expected_lines), (0.25, 2.0));
        assert_eq!(block.stops, BTreeMap::from([("eos".to_owned(), 1)]));
        let report = Report {
            hole_lines: 1,
            block_max_lines: Some(12),
            scores: vec![super::score("a", &results)],
            cases: results,
            ..wide
        };
        let table = render_table(&report);
        assert!(
            table
                .starts_with("2 cases (seed 1, holes to the end of their block, at most 12 lines)"),
            "{table}"
        );
        assert!(
            table.contains("whole answers (holes of 2.0 lines on average)"),
            "{table}"
        );
        assert!(table.contains("0.250"), "{table}");
        assert!(
            table.contains("a                      ended by: eos 1\n"),
            "{table}"
        );
    }
}
