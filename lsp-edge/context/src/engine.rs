//! The engine: compiled queries and configuration, built once and shared, and the
//! request pipeline (chunk, deduplicate, rank, select, assemble).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use crate::chunk::{chunk_text, Chunk, ChunkKind, LineIndex};
use crate::dedup::fingerprint;
use crate::document::{floor_char_boundary, KeptSnippets};
use crate::prompt::{instruction_prompt, windows};
use crate::rank::{identifiers, terms, Bm25};
use crate::similar::{similar_snippets, SimilarLimits};
use crate::{
    extract_instruction, ChunkQuery, Context, ContextError, ContextStats, Document, EngineConfig,
    ExtraChunk, FunctionQuery, Language, Mode, ModelWindows,
};

/// Documents kept for [`ContextEngine::context_for_text`], by path.
const RECENT_DOCUMENTS: usize = 16;

/// Added to a chunk's BM25 score when it defines a name used near the cursor:
/// more than any plausible text match, so such definitions come first.
const DEFINES_NAME_BOOST: f32 = 100.0;

/// Added to the score of a chunk that the document's last completion chose and that
/// still matches the cursor: more than a text match, less than a definition of a
/// name in use. Without it, each Enter moves the ranking query by a line and the
/// chunks at the head of the prompt change, which costs the backend their tokens.
const STICKY_BOOST: f32 = 50.0;

/// The context engine. Build it once at start (it compiles the queries) and share
/// it through an `Arc`: it is `Send + Sync` and every method takes `&self`.
#[derive(Debug)]
pub struct ContextEngine {
    config: EngineConfig,
    /// `config` with each named model's windows over it ([`EngineConfig::windows_for`]).
    by_model: BTreeMap<String, EngineConfig>,
    /// Each parsed language's chunk query, indexed by the language (the order of
    /// [`Language::PARSED`]).
    chunk_queries: Vec<ChunkQuery>,
    /// The last documents `context_for_text` parsed, by path and language, most
    /// recent first: a request that repeats a file with a small change re-parses
    /// incrementally instead of from scratch.
    recent: Mutex<VecDeque<(String, Language, Document)>>,
}

/// What a request adds to the text and the cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct ContextOptions {
    /// An instruction switches to an instruction-first prompt.
    pub instruction: Option<String>,
    /// The document's path, used in chunk labels (`path::symbol`).
    pub path: Option<String>,
    /// Selected bytes: chunks that overlap them are always kept.
    pub selection: Option<Range<usize>>,
    /// The model the prompt is for: its windows, where it has its own, replace the
    /// configured ones (`None`: the backend's default model, which gets those).
    pub model: Option<String>,
}

impl ContextEngine {
    /// Validates the configuration and compiles the queries (built-in, or from
    /// `config.queries_dir` where it has them). The built-in function queries are
    /// compiled here too, so that a broken one fails at start, not at a code action.
    pub fn new(config: EngineConfig) -> Result<ContextEngine, ContextError> {
        config.validate()?;
        let dir = config.queries_dir.as_deref();
        let mut chunk_queries = Vec::with_capacity(Language::PARSED.len());
        for &language in Language::PARSED {
            chunk_queries.push(ChunkQuery::load(language, dir)?);
            FunctionQuery::built_in(language)?;
        }
        let names = config
            .models
            .keys()
            .map(String::as_str)
            .chain(ModelWindows::BUILT_IN.iter().map(|(name, _)| *name));
        let by_model = names
            .filter_map(|name| {
                let windows = config.windows_for(name)?;
                Some((name.to_owned(), config.with_windows(windows)))
            })
            .collect();
        Ok(ContextEngine {
            chunk_queries,
            config,
            by_model,
            recent: Mutex::new(VecDeque::new()),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The configuration a prompt for `model` is assembled with.
    pub fn config_for(&self, model: Option<&str>) -> &EngineConfig {
        model
            .and_then(|model| self.by_model.get(model))
            .unwrap_or(&self.config)
    }

    fn query(&self, language: Language) -> Option<&ChunkQuery> {
        // `Other` is the last variant, past the end of the table.
        self.chunk_queries.get(language as usize)
    }

    /// Parses `text` into a document to keep and edit. Never fails: broken code
    /// parses with ERROR nodes, and `Other` text has no tree.
    pub fn parse(&self, language: Language, text: String) -> Document {
        Document::new(language, text)
    }

    /// The chunks of a document, in document order.
    pub fn chunks(&self, doc: &Document) -> Vec<Chunk> {
        let lines = LineIndex::new(doc.text());
        chunk_text(
            doc.text(),
            doc.tree(),
            self.query(doc.language()),
            &self.config,
            &lines,
        )
    }

    /// The context for a cursor (a byte offset into the document; one inside a
    /// character means that character's start). With `opts.instruction` the
    /// result is an instruction-first prompt; without, a fill-in-the-middle
    /// context. The document's text is taken as it is: instructions inside it are
    /// not looked for (see [`ContextEngine::context_for_text`]).
    pub fn context(&self, doc: &Document, cursor: usize, opts: &ContextOptions) -> Context {
        let started = Instant::now();
        let mut context = self.assemble(doc, cursor, opts, opts.instruction.as_deref());
        context.stats.elapsed_us = elapsed_us(started);
        context
    }

    /// The context for plain text without a kept document (the HTTP endpoint and
    /// the CLI): parses, then, when `opts` has no instruction, takes one from the
    /// text if it carries one ([`extract_instruction`]) and cuts that line out of
    /// the code. The statistics count the parse and the whole original text.
    ///
    /// With `opts.path`, the engine keeps the last few documents it parsed and
    /// re-parses a repeated path incrementally from the old tree.
    pub fn context_for_text(
        &self,
        language: Language,
        text: &str,
        cursor: usize,
        opts: &ContextOptions,
    ) -> Context {
        let started = Instant::now();
        let cursor = floor_char_boundary(text, cursor);
        let extracted = match opts.instruction {
            Some(_) => None,
            None => extract_instruction(text),
        };
        let mut context = match extracted {
            Some((instruction, line)) => {
                // The instruction's line becomes a blank line, so that chunk
                // labels keep the file's line numbers.
                let blank = if text[line.clone()].ends_with('\n') {
                    "\n"
                } else {
                    ""
                };
                let mut code = String::with_capacity(text.len());
                code.push_str(&text[..line.start]);
                code.push_str(blank);
                code.push_str(&text[line.end..]);
                let at = |offset: usize| {
                    if offset >= line.end {
                        offset - line.len() + blank.len()
                    } else {
                        offset.min(line.start)
                    }
                };
                let cursor = at(cursor);
                let shift = |range: &Range<usize>| at(range.start)..at(range.end);
                let opts = ContextOptions {
                    selection: opts.selection.as_ref().map(shift),
                    ..opts.clone()
                };
                let doc = self.recall(language, code, opts.path.as_deref());
                let mut context = self.assemble(&doc, cursor, &opts, Some(&instruction));
                self.remember(doc, opts.path.as_deref());
                let after = context.stats.chars_after;
                context.stats.set_chars(text.chars().count(), after);
                context
            }
            None => {
                let doc = self.recall(language, text.to_owned(), opts.path.as_deref());
                let context = self.assemble(&doc, cursor, opts, opts.instruction.as_deref());
                self.remember(doc, opts.path.as_deref());
                context
            }
        };
        context.stats.elapsed_us = elapsed_us(started);
        context
    }

    /// A document for `text`: the kept one for `path`, brought up to date
    /// incrementally, or a fresh parse.
    fn recall(&self, language: Language, text: String, path: Option<&str>) -> Document {
        let kept = path.and_then(|path| {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let index = recent
                .iter()
                .position(|(p, lang, _)| p == path && *lang == language)?;
            recent.remove(index).map(|(_, _, doc)| doc)
        });
        match kept {
            Some(mut doc) => {
                doc.set_text(self, &text);
                doc
            }
            None => self.parse(language, text),
        }
    }

    fn remember(&self, doc: Document, path: Option<&str>) {
        if let Some(path) = path {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            recent.push_front((path.to_owned(), doc.language(), doc));
            recent.truncate(RECENT_DOCUMENTS);
        }
    }

    fn assemble(
        &self,
        doc: &Document,
        cursor: usize,
        opts: &ContextOptions,
        instruction: Option<&str>,
    ) -> Context {
        let text = doc.text();
        let cursor = floor_char_boundary(text, cursor);
        let text_chars = text.chars().count();
        let lines = LineIndex::new(text);
        let config = self.config_for(opts.model.as_deref());
        let request = Request {
            engine: self,
            config,
            doc,
            text,
            lines: &lines,
            cursor,
            opts,
            chunk: text_chars >= config.min_chars_to_chunk,
        };
        match instruction {
            Some(instruction) => request.instruction(instruction, text_chars),
            None => request.fim(text_chars),
        }
    }
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// One request's inputs, shared by the FIM and instruction paths.
struct Request<'a> {
    engine: &'a ContextEngine,
    /// The engine's configuration for the request's model.
    config: &'a EngineConfig,
    doc: &'a Document,
    text: &'a str,
    lines: &'a LineIndex,
    cursor: usize,
    opts: &'a ContextOptions,
    /// False below `min_chars_to_chunk`: the document is sent whole.
    chunk: bool,
}

/// Chunks after deduplication, with what selection needs to know about them.
struct Candidates {
    chunks: Vec<Chunk>,
    total: usize,
    unique: usize,
}

impl Request<'_> {
    fn config(&self) -> &EngineConfig {
        self.config
    }

    fn chunks(&self) -> Vec<Chunk> {
        chunk_text(
            self.text,
            self.doc.tree(),
            self.engine.query(self.doc.language()),
            self.config(),
            self.lines,
        )
    }

    /// An extra file's label: `path::what`, or `what` without a path.
    fn label(&self, what: &str) -> String {
        match &self.opts.path {
            Some(path) => format!("{path}::{what}"),
            None => what.to_owned(),
        }
    }

    fn extra(&self, chunks: &[Chunk]) -> Vec<ExtraChunk> {
        chunks
            .iter()
            .map(|chunk| ExtraChunk {
                label: self.label(&chunk.symbol),
                text: chunk.text(self.text).to_owned(),
            })
            .collect()
    }

    /// Snippets of code like the cursor's from outside `window`
    /// ([`EngineConfig::similar_snippets`]), labelled with their lines.
    ///
    /// They sit at the head of the prompt, so a change costs the whole prompt: the
    /// document's last snippets (or its choice of none) are sent again, labels
    /// unchanged, while the cursor stays within `similar_keep_lines` lines of the
    /// line they were chosen for and each is still in the text outside `window`.
    /// A new line typed does not change them; a jump, or a snippet edited or
    /// reached by the windows, does. A model allowed none gets none.
    fn similar(&self, window: &Range<usize>) -> Vec<ExtraChunk> {
        let config = self.config();
        if config.similar_snippets == 0 {
            return Vec::new();
        }
        let line = self.lines.line_of(self.cursor);
        if let Some(kept) = self.doc.kept_snippets() {
            let keep_lines = config.similar_keep_lines.unwrap_or(config.prefix_max_lines);
            let near = kept.line.abs_diff(line) <= keep_lines;
            let outside = |snippet: &ExtraChunk| {
                self.text
                    .match_indices(snippet.text.as_str())
                    .any(|(start, found)| {
                        start + found.len() <= window.start || start >= window.end
                    })
            };
            if near && kept.snippets.iter().all(outside) {
                return kept.snippets;
            }
        }
        let snippets = self.fresh_similar(window);
        self.doc.keep_snippets(KeptSnippets {
            line,
            snippets: snippets.clone(),
        });
        snippets
    }

    fn fresh_similar(&self, window: &Range<usize>) -> Vec<ExtraChunk> {
        let config = self.config();
        let limits = SimilarLimits {
            snippets: config.similar_snippets,
            lines: config.similar_lines,
            min_score: config.similar_min_score,
            max_chars: config.similar_max_chars,
        };
        similar_snippets(self.text, self.lines, self.cursor, window, limits)
            .into_iter()
            .map(|range| {
                let first = self.lines.line_of(range.start) + 1;
                let last = self.lines.line_of(range.end.saturating_sub(1)) + 1;
                ExtraChunk {
                    label: self.label(&format!("lines {first}-{last}")),
                    text: self.text[range].to_owned(),
                }
            })
            .collect()
    }

    /// True when `chunk` holds the cursor (a cursor at the very end of the text
    /// belongs to the chunk that ends there).
    fn encloses_cursor(&self, chunk: &Chunk) -> bool {
        chunk.range.contains(&self.cursor)
            || (self.cursor == self.text.len() && chunk.range.end == self.cursor)
    }

    fn must_keep(&self, chunk: &Chunk) -> bool {
        self.encloses_cursor(chunk)
            || self.opts.selection.as_ref().is_some_and(|selection| {
                chunk.range.start < selection.end.max(selection.start.saturating_add(1))
                    && selection.start < chunk.range.end
            })
    }

    /// Lines between a chunk and the windows (0 when they touch).
    fn lines_between(&self, chunk: &Chunk, window: &Range<usize>) -> usize {
        let lines = self.lines;
        if chunk.range.end <= window.start {
            lines
                .line_of(window.start)
                .saturating_sub(lines.line_of(chunk.range.end.saturating_sub(1)) + 1)
        } else if chunk.range.start >= window.end {
            lines
                .line_of(chunk.range.start)
                .saturating_sub(lines.line_of(window.end.saturating_sub(1)) + 1)
        } else {
            0
        }
    }

    fn distance(&self, chunk: &Chunk) -> usize {
        if chunk.range.contains(&self.cursor) {
            0
        } else if chunk.range.end <= self.cursor {
            self.cursor - chunk.range.end
        } else {
            chunk.range.start - self.cursor
        }
    }

    /// The lines around the cursor whose identifiers stand for "what the user is
    /// working on", minus the word being typed: a half-typed identifier would
    /// change the ranking, and with it the leading text, at every keystroke.
    /// In FIM mode the region stays inside the windows, so a definition that
    /// merely follows the cursor does not count as a use of its name.
    fn cursor_region(&self, window: Option<&Range<usize>>) -> [&str; 2] {
        let config = self.config();
        let line = self.lines.line_of(self.cursor);
        let first = line.saturating_sub(config.cursor_context_lines);
        let last = line + config.cursor_context_lines / 2;
        let mut start = self.lines.line_start(first);
        let mut end = self
            .lines
            .line_end(last.min(self.lines.len().saturating_sub(1)));
        if let Some(window) = window {
            start = start.max(window.start);
            end = end.min(window.end).max(self.cursor);
        }
        let is_ident = |c: char| c == '_' || c.is_alphanumeric();
        let word_start = self.text[..self.cursor]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_ident(c))
            .last()
            .map_or(self.cursor, |(i, _)| i);
        let word_end = self.text[self.cursor..]
            .char_indices()
            .find(|&(_, c)| !is_ident(c))
            .map_or(self.text.len(), |(i, _)| self.cursor + i);
        [
            &self.text[start..word_start.max(start)],
            &self.text[word_end.min(end)..end],
        ]
    }

    /// Splits chunks into the distinct ones, preferring for each fingerprint the
    /// copy that must be kept, else the first; `seen` holds fingerprints already
    /// sent (the FIM windows), whose chunks are dropped.
    fn dedup(&self, chunks: Vec<Chunk>, mut seen: HashSet<u64>) -> Candidates {
        let total = chunks.len();
        let prints: Vec<u64> = chunks
            .iter()
            .map(|c| fingerprint(c.text(self.text)))
            .collect();
        let unique = prints.iter().collect::<HashSet<_>>().len();
        let kept: HashSet<u64> = chunks
            .iter()
            .zip(&prints)
            .filter(|(chunk, _)| self.must_keep(chunk))
            .map(|(_, &print)| print)
            .collect();
        let chunks = chunks
            .into_iter()
            .zip(prints)
            .filter(|(chunk, print)| {
                if kept.contains(print) && !self.must_keep(chunk) {
                    return false;
                }
                seen.insert(*print)
            })
            .map(|(chunk, _)| chunk)
            .collect();
        Candidates {
            chunks,
            total,
            unique,
        }
    }

    /// Ranks candidates against the instruction's terms (a completion: the cursor
    /// region's) plus the names-near-cursor boost, and selects: kept chunks first,
    /// then by score (ties: nearer the cursor) while within the mode's limit
    /// (`max_chunks` for a completion, `instruction_max_chunks` for an instruction)
    /// and the budget; returned in document order.
    fn select(
        &self,
        candidates: Vec<Chunk>,
        instruction: Option<&str>,
        window: Option<&Range<usize>>,
        frame: Option<&str>,
    ) -> Vec<Chunk> {
        let config = self.config();
        let max_chunks = match window {
            Some(_) => config.max_chunks,
            None => config.instruction_max_chunks,
        };
        if max_chunks == 0 {
            // Only the kept chunks can be picked (a completion's default): the
            // ranking, which would run at every keystroke, has nothing to choose.
            return candidates
                .into_iter()
                .filter(|c| self.must_keep(c))
                .collect();
        }
        let region = self.cursor_region(window);
        let mut query = Vec::new();
        match instruction {
            Some(instruction) => terms(instruction, &mut query),
            None => region.iter().for_each(|part| terms(part, &mut query)),
        }
        let index = Bm25::new(candidates.iter().map(|c| c.text(self.text)));
        let mut scores = index.scores(&query);
        // Without an instruction (FIM), rank by the cursor and add nothing that
        // does not match it rather than guess.
        let positive_only = window.is_some();
        let near: HashSet<&str> = region.iter().flat_map(|part| identifiers(part)).collect();
        let sticky: HashSet<u64> = match window {
            Some(_) => self.doc.last_picks().into_iter().collect(),
            None => HashSet::new(),
        };
        for (score, chunk) in scores.iter_mut().zip(&candidates) {
            if chunk
                .name
                .as_deref()
                .is_some_and(|name| near.contains(name))
            {
                *score += DEFINES_NAME_BOOST;
            }
            if *score > 0.0
                && !sticky.is_empty()
                && sticky.contains(&fingerprint(chunk.text(self.text)))
            {
                *score += STICKY_BOOST;
            }
            if let Some(window) = window {
                if config.proximity_weight > 0.0 {
                    let lines = self.lines_between(chunk, window) as f32;
                    *score += config.proximity_weight * 20.0 / (20.0 + lines);
                }
                if config.frame_boost > 0.0 && frame.is_some_and(|f| frames(f, &chunk.symbol)) {
                    *score += config.frame_boost;
                }
            }
        }
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| {
            let (ca, cb) = (&candidates[a], &candidates[b]);
            self.must_keep(cb)
                .cmp(&self.must_keep(ca))
                .then(scores[b].total_cmp(&scores[a]))
                .then(self.distance(ca).cmp(&self.distance(cb)))
                .then(a.cmp(&b))
        });
        let mut picked = Vec::new();
        let mut used = 0;
        for i in order {
            let chunk = &candidates[i];
            let keep = self.must_keep(chunk);
            if !keep && (picked.len() >= max_chunks || (positive_only && scores[i] <= 0.0)) {
                continue;
            }
            let size = chunk.text(self.text).chars().count();
            if !keep && used + size > config.budget_chars {
                continue;
            }
            used += size;
            picked.push(i);
        }
        picked.sort_unstable();
        let mut candidates: Vec<Option<Chunk>> = candidates.into_iter().map(Some).collect();
        picked
            .into_iter()
            .filter_map(|i| candidates[i].take())
            .collect()
    }

    fn fim(&self, text_chars: usize) -> Context {
        let text = self.text;
        let whole = |stats: ContextStats| Context {
            mode: Mode::Fim,
            prefix: text[..self.cursor].to_owned(),
            suffix: text[self.cursor..].to_owned(),
            extra: Vec::new(),
            prompt: None,
            instruction: None,
            stats: ContextStats {
                chunks_selected: 0,
                ..stats
            },
        };
        let mut stats = ContextStats::default();
        stats.set_chars(text_chars, text_chars);
        if !self.chunk {
            return whole(stats);
        }
        let config = self.config();
        let chunks = self.chunks();
        let (mut prefix, suffix) = windows(text, self.lines, self.cursor, config);
        let enclosing = chunks
            .iter()
            .find(|chunk| self.encloses_cursor(chunk) && chunk.kind == ChunkKind::Definition);
        if config.enclosing_max_chars > 0 {
            // The function's own start: a chunk may be a part of a long one.
            let function =
                crate::function::enclosing_function(self.doc, self.cursor).map(|function| {
                    self.lines
                        .line_start(self.lines.line_of(function.range.start))
                });
            let start = function.or(enclosing.map(|chunk| chunk.range.start));
            if let Some(start) = start.filter(|&start| {
                start < prefix.start
                    && text[start..prefix.start].chars().count() <= config.enclosing_max_chars
            }) {
                prefix.start = start;
            }
        }
        let frame = enclosing.map(|chunk| chunk.symbol.clone());
        let window = prefix.start..suffix.end;
        let overlaps =
            |chunk: &Chunk| chunk.range.start < window.end && window.start < chunk.range.end;
        // Chunks inside the windows are already sent; so is any copy of them.
        let seen: HashSet<u64> = chunks
            .iter()
            .filter(|chunk| overlaps(chunk))
            .map(|chunk| fingerprint(chunk.text(text)))
            .collect();
        let Candidates {
            chunks,
            total,
            unique,
        } = self.dedup(chunks, seen);
        stats.chunks_total = total;
        stats.chunks_unique = unique;
        let candidates: Vec<Chunk> = chunks.into_iter().filter(|c| !overlaps(c)).collect();
        let selected = self.select(candidates, None, Some(&window), frame.as_deref());
        self.doc.set_picks(
            selected
                .iter()
                .map(|chunk| fingerprint(chunk.text(text)))
                .collect(),
        );
        let (prefix_text, mut extra) = if config.chunks_in_prefix && !selected.is_empty() {
            // The chunks read as the file's own text above the window, with a blank
            // line wherever text was left out.
            let mut head = join_chunks(text, &selected);
            let adjacent = selected.last().is_some_and(|c| c.range.end == prefix.start);
            if !adjacent {
                if !head.ends_with('\n') {
                    head.push('\n');
                }
                head.push('\n');
            }
            head.push_str(&text[prefix.clone()]);
            (head, Vec::new())
        } else {
            (text[prefix.clone()].to_owned(), self.extra(&selected))
        };
        extra.extend(self.similar(&window));
        let after = prefix_text.chars().count()
            + text[suffix.clone()].chars().count()
            + extra
                .iter()
                .map(|c| c.label.chars().count() + 1 + c.text.chars().count())
                .sum::<usize>();
        if after as f32 >= (1.0 - config.min_saving) * text_chars as f32 {
            return whole(stats);
        }
        stats.chunks_selected = selected.len();
        stats.set_chars(text_chars, after);
        Context {
            mode: Mode::Fim,
            prefix: prefix_text,
            suffix: text[suffix].to_owned(),
            extra,
            prompt: None,
            instruction: None,
            stats,
        }
    }

    fn instruction(&self, instruction: &str, text_chars: usize) -> Context {
        let text = self.text;
        let mut stats = ContextStats::default();
        let mut selected = Vec::new();
        let mut code = text.to_owned();
        if self.chunk {
            let Candidates {
                chunks,
                total,
                unique,
            } = self.dedup(self.chunks(), HashSet::new());
            stats.chunks_total = total;
            stats.chunks_unique = unique;
            selected = self.select(chunks, Some(instruction), None, None);
            let joined = join_chunks(text, &selected);
            if (joined.chars().count() as f32)
                < (1.0 - self.config().min_saving) * text_chars as f32
            {
                code = joined;
            } else {
                selected.clear();
            }
        }
        let prompt = instruction_prompt(self.doc.language(), instruction, &code);
        stats.chunks_selected = selected.len();
        stats.set_chars(
            text_chars + instruction.chars().count(),
            prompt.chars().count(),
        );
        Context {
            mode: Mode::Instruction,
            prefix: String::new(),
            suffix: String::new(),
            extra: self.extra(&selected),
            prompt: Some(prompt),
            instruction: Some(instruction.to_owned()),
            stats,
        }
    }
}

/// Whether `symbol` frames the definition `enclosing` (`A::B::m`): it is the
/// enclosing class or impl's own text (`A::B`) or its constructor
/// (`A::B::__init__`, `A::B::new`).
fn frames(enclosing: &str, symbol: &str) -> bool {
    let Some((parent, _)) = enclosing.rsplit_once("::") else {
        return false;
    };
    symbol == parent
        || symbol
            .strip_prefix(parent)
            .and_then(|rest| rest.strip_prefix("::"))
            .is_some_and(|name| name == "__init__" || name == "new")
}

/// Selected chunks as one piece of code: adjacent chunks run on, separate ones
/// are set apart by a blank line.
fn join_chunks(text: &str, chunks: &[Chunk]) -> String {
    let mut code = String::new();
    let mut last_end = None;
    for chunk in chunks {
        if last_end.is_some_and(|end| end != chunk.range.start) {
            if !code.ends_with('\n') {
                code.push('\n');
            }
            code.push('\n');
        }
        code.push_str(chunk.text(text));
        last_end = Some(chunk.range.end);
    }
    code
}
