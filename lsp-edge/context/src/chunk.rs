//! Splitting a document into chunks: at definition boundaries where the parse is
//! usable, in overlapping line-cut blocks where it is not.
//!
//! Every chunk starts at a line start and ends after a line end (except where two
//! items share a line), so chunk boundaries never split a UTF-8 character, a CRLF
//! pair or a line, whatever the text.

use std::collections::HashMap;
use std::ops::Range;

use tree_sitter::{Node, QueryCursor, StreamingIterator, Tree};

use crate::{ChunkQuery, EngineConfig};

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// A definition (or, when it was split, a part of one).
    Definition,
    /// Code between definitions: imports, constants, statements.
    Glue,
    /// A line-cut block of text without a usable parse.
    Block,
}

/// A span of the document that can be sent to the model on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte range in the document text.
    pub range: Range<usize>,
    /// Label without the path: `Outer::method` for definitions and their parts,
    /// `lines 3-9` for glue and blocks at the top level.
    pub symbol: String,
    /// The name this chunk defines, if it is a definition; used to boost chunks
    /// whose names are used near the cursor.
    pub name: Option<String>,
    pub kind: ChunkKind,
}

impl Chunk {
    pub fn text<'t>(&self, text: &'t str) -> &'t str {
        &text[self.range.clone()]
    }
}

/// Line starts of a text, for offset-to-line look-ups. Lines end at `\n`, so a
/// `\r\n` pair stays on its line.
#[derive(Debug)]
pub struct LineIndex {
    starts: Vec<usize>,
    len: usize,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let mut starts = Vec::with_capacity(text.len() / 32 + 1);
        starts.push(0);
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineIndex {
            starts,
            len: text.len(),
        }
    }

    /// Number of lines (a text ending in `\n` has an empty last line).
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 0-based line holding byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset) - 1
    }

    pub fn line_start(&self, line: usize) -> usize {
        self.starts.get(line).copied().unwrap_or(self.len)
    }

    /// The offset just past the line's `\n` (or the end of the text).
    pub fn line_end(&self, line: usize) -> usize {
        self.starts.get(line + 1).copied().unwrap_or(self.len)
    }
}

/// Chunks `text` along the definitions `query` finds in `tree`, or in blocks when
/// there is no tree or its ERROR nodes cover too much of the text.
pub fn chunk_text(
    text: &str,
    tree: Option<&Tree>,
    query: Option<&ChunkQuery>,
    config: &EngineConfig,
    lines: &LineIndex,
) -> Vec<Chunk> {
    match (tree, query) {
        (Some(tree), Some(query))
            if error_fraction(tree.root_node(), text.len()) <= config.max_error_fraction =>
        {
            let definitions = Definitions::collect(text, tree.root_node(), query, lines);
            let mut chunker = AstChunker {
                text,
                lines,
                tree,
                query,
                max_chars: config.max_chunk_chars,
                out: Vec::new(),
            };
            chunker.region(0..text.len(), &definitions, &definitions.roots, None);
            chunker.out
        }
        _ => fallback_blocks(text, config, lines),
    }
}

/// The fraction of the text covered by ERROR nodes.
fn error_fraction(root: Node<'_>, len: usize) -> f32 {
    if len == 0 || !root.has_error() {
        return 0.0;
    }
    let mut covered = 0;
    let mut cursor = root.walk();
    'walk: loop {
        let node = cursor.node();
        let descend = if node.is_error() {
            covered += node.byte_range().len();
            false
        } else {
            node.has_error()
        };
        if descend && cursor.goto_first_child() {
            continue;
        }
        while !cursor.goto_next_sibling() {
            if !cursor.goto_parent() {
                break 'walk;
            }
        }
    }
    covered as f32 / len as f32
}

#[derive(Debug)]
struct Definition {
    range: Range<usize>,
    name: String,
    children: Vec<usize>,
}

/// The definitions a query found, nested by containment.
#[derive(Debug)]
struct Definitions {
    all: Vec<Definition>,
    roots: Vec<usize>,
    /// For each line that ends a `@leading` node (a comment or attribute that
    /// fills its lines), the line it starts on.
    leading: HashMap<usize, usize>,
}

/// How far below the node being chunked (the file, or a definition being split)
/// query patterns may start. Two levels reach `class > block > def` and
/// `impl > declaration_list > fn`; deeper definitions are found by querying a
/// definition again when it is split. Not walking whole function bodies is what
/// makes chunking cheap: most of a syntax tree is expressions.
const QUERY_DEPTH: u32 = 2;

impl Definitions {
    /// The definitions the query finds within [`QUERY_DEPTH`] levels of `node`.
    fn collect(text: &str, node: Node<'_>, query: &ChunkQuery, lines: &LineIndex) -> Definitions {
        let bytes = text.as_bytes();
        let mut found: Vec<(Range<usize>, String)> = Vec::new();
        let mut leading = HashMap::new();
        let mut cursor = QueryCursor::new();
        cursor.set_max_start_depth(Some(QUERY_DEPTH));
        let mut matches = cursor.matches(&query.query, node, bytes);
        while let Some(m) = matches.next() {
            let mut chunk = None;
            let mut name = None;
            for capture in m.captures {
                if capture.index == query.chunk {
                    chunk = Some(capture.node.byte_range());
                } else if capture.index == query.name {
                    name = capture.node.utf8_text(bytes).ok();
                } else if Some(capture.index) == query.leading {
                    let range = capture.node.byte_range();
                    if fills_its_lines(text, lines, &range) {
                        let last = lines.line_of(range.end.saturating_sub(1).max(range.start));
                        leading.insert(last, lines.line_of(range.start));
                    }
                }
            }
            if let (Some(range), Some(name)) = (chunk, name) {
                if !range.is_empty() {
                    found.push((range, name.to_owned()));
                }
            }
        }
        // Outer definitions first, so a stack can nest them.
        found.sort_by(|a, b| a.0.start.cmp(&b.0.start).then(b.0.end.cmp(&a.0.end)));
        found.dedup_by(|b, a| a.0 == b.0);

        let mut all: Vec<Definition> = Vec::with_capacity(found.len());
        let mut roots = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        for (range, name) in found {
            while let Some(&top) = stack.last() {
                if all[top].range.end <= range.start {
                    stack.pop();
                } else {
                    break;
                }
            }
            if let Some(&parent) = stack.last() {
                // A decorated definition and the definition inside it end at the
                // same byte and share a name: they are one chunk, not two.
                if all[parent].range.end == range.end && all[parent].name == name {
                    continue;
                }
            }
            let index = all.len();
            match stack.last() {
                Some(&parent) => all[parent].children.push(index),
                None => roots.push(index),
            }
            all.push(Definition {
                range,
                name,
                children: Vec::new(),
            });
            stack.push(index);
        }
        Definitions {
            all,
            roots,
            leading,
        }
    }
}

/// True when only whitespace shares the node's lines with it.
fn fills_its_lines(text: &str, lines: &LineIndex, range: &Range<usize>) -> bool {
    let first = lines.line_start(lines.line_of(range.start));
    let last_end = lines.line_end(lines.line_of(range.end.saturating_sub(1).max(range.start)));
    text[first..range.start].trim().is_empty() && text[range.end..last_end].trim().is_empty()
}

struct AstChunker<'a> {
    text: &'a str,
    lines: &'a LineIndex,
    tree: &'a Tree,
    query: &'a ChunkQuery,
    max_chars: usize,
    out: Vec<Chunk>,
}

impl AstChunker<'_> {
    /// Chunks `region`, whose definitions at this level are `level` (indices into
    /// `defs`); `parent` is the qualified name of the definition the region
    /// belongs to.
    fn region(
        &mut self,
        region: Range<usize>,
        defs: &Definitions,
        level: &[usize],
        parent: Option<&str>,
    ) {
        let mut pos = region.start;
        for &index in level {
            let def = &defs.all[index];
            let range = self.widen(defs, def.range.clone(), pos, region.end);
            if range.start >= range.end {
                continue;
            }
            self.glue(pos..range.start, parent);
            let symbol = match parent {
                Some(parent) => format!("{parent}::{}", def.name),
                None => def.name.clone(),
            };
            if !self.too_big(&range) {
                self.push(
                    range.clone(),
                    symbol,
                    Some(def.name.clone()),
                    ChunkKind::Definition,
                );
            } else if !def.children.is_empty() {
                self.region(range.clone(), defs, &def.children, Some(&symbol));
            } else if let Some((inner, children)) = self.nested(def) {
                self.region(range.clone(), &inner, &children, Some(&symbol));
            } else {
                let name = Some(def.name.as_str());
                self.split_lines(range.clone(), Some(&symbol), name, ChunkKind::Definition);
            }
            pos = range.end;
        }
        // The closing brace of a split impl or trait belongs to its last part,
        // not in a chunk of its own.
        let tail = &self.text[pos..region.end];
        let closes_only = tail
            .trim()
            .chars()
            .all(|c| matches!(c, '}' | ')' | ']' | ';'));
        match self.out.last_mut() {
            Some(last) if parent.is_some() && closes_only && last.range.end == pos => {
                last.range.end = trim_blank_lines(self.text, self.lines, pos..region.end)
                    .map_or(pos, |range| range.end);
            }
            _ => self.glue(pos..region.end, parent),
        }
    }

    /// The definitions nested in `def`, from a query started at its node.
    fn nested(&self, def: &Definition) -> Option<(Definitions, Vec<usize>)> {
        let node = self
            .tree
            .root_node()
            .descendant_for_byte_range(def.range.start, def.range.end)?;
        let inner = Definitions::collect(self.text, node, self.query, self.lines);
        // The query finds `def` itself again, with its children below it.
        let children = match inner.roots.as_slice() {
            [root] if inner.all[*root].range == def.range => inner.all[*root].children.clone(),
            _ => inner.roots.clone(),
        };
        let contained = children.iter().all(|&i| {
            let range = &inner.all[i].range;
            def.range.start <= range.start && range.end <= def.range.end && *range != def.range
        });
        (!children.is_empty() && contained).then_some((inner, children))
    }

    /// Widens a definition to whole lines and over the comments and attributes
    /// right above it, staying within `floor..ceiling`.
    fn widen(
        &self,
        defs: &Definitions,
        def: Range<usize>,
        floor: usize,
        ceiling: usize,
    ) -> Range<usize> {
        let (text, lines) = (self.text, self.lines);
        let mut line = lines.line_of(def.start);
        let mut start = def.start;
        if text[lines.line_start(line)..def.start].trim().is_empty() {
            start = lines.line_start(line);
            while line > 0 {
                match defs.leading.get(&(line - 1)) {
                    Some(&first) if lines.line_start(first) >= floor => {
                        line = first;
                        start = lines.line_start(first);
                    }
                    _ => break,
                }
            }
        }
        let end_line = lines.line_of(def.end);
        let mut end = def.end;
        let rest = &text[def.end..lines.line_end(end_line)];
        if rest.trim().is_empty() {
            end = lines.line_end(end_line);
        }
        start.max(floor)..end.min(ceiling)
    }

    fn glue(&mut self, range: Range<usize>, parent: Option<&str>) {
        let Some(range) = trim_blank_lines(self.text, self.lines, range) else {
            return;
        };
        if self.too_big(&range) {
            self.split_lines(range, parent, None, ChunkKind::Glue);
        } else {
            self.push_part(range, parent, None, ChunkKind::Glue);
        }
    }

    /// Splits an oversized range into runs of whole lines within the size budget;
    /// a single line over the budget stays whole. Parts without a `symbol` are
    /// labelled by their lines.
    fn split_lines(
        &mut self,
        range: Range<usize>,
        symbol: Option<&str>,
        name: Option<&str>,
        kind: ChunkKind,
    ) {
        let (text, lines) = (self.text, self.lines);
        let mut start = range.start;
        let mut size = 0;
        let mut line = lines.line_of(range.start);
        while lines.line_start(line) < range.end {
            let line_end = lines.line_end(line).min(range.end);
            let line_start = lines.line_start(line).max(range.start);
            let line_chars = text[line_start..line_end].chars().count();
            if size > 0 && size + line_chars > self.max_chars {
                self.push_part(start..line_start, symbol, name, kind);
                start = line_start;
                size = 0;
            }
            size += line_chars;
            line += 1;
        }
        self.push_part(start..range.end, symbol, name, kind);
    }

    fn push_part(
        &mut self,
        range: Range<usize>,
        symbol: Option<&str>,
        name: Option<&str>,
        kind: ChunkKind,
    ) {
        if let Some(range) = trim_blank_lines(self.text, self.lines, range) {
            let symbol = match symbol {
                Some(symbol) => symbol.to_owned(),
                None => line_label(self.lines, &range),
            };
            self.push(range, symbol, name.map(str::to_owned), kind);
        }
    }

    fn push(&mut self, range: Range<usize>, symbol: String, name: Option<String>, kind: ChunkKind) {
        self.out.push(Chunk {
            range,
            symbol,
            name,
            kind,
        });
    }

    fn too_big(&self, range: &Range<usize>) -> bool {
        // Bytes bound characters from above: count only when the bytes exceed.
        range.len() > self.max_chars && self.text[range.clone()].chars().count() > self.max_chars
    }
}

/// `lines 3-9` (1-based, inclusive) for a range.
fn line_label(lines: &LineIndex, range: &Range<usize>) -> String {
    let first = lines.line_of(range.start) + 1;
    let last = lines.line_of(range.end.saturating_sub(1).max(range.start)) + 1;
    if first == last {
        format!("line {first}")
    } else {
        format!("lines {first}-{last}")
    }
}

/// Shrinks a range to the lines that hold something other than whitespace;
/// `None` when there are none.
fn trim_blank_lines(text: &str, lines: &LineIndex, range: Range<usize>) -> Option<Range<usize>> {
    let slice = &text[range.clone()];
    let first = slice.find(|c: char| !c.is_whitespace())? + range.start;
    let last = slice.rfind(|c: char| !c.is_whitespace())? + range.start;
    let start = lines.line_start(lines.line_of(first)).max(range.start);
    let end = lines.line_end(lines.line_of(last)).min(range.end);
    Some(start..end)
}

/// Blocks of about `fallback_block_chars` characters, cut after a line end, each
/// starting at a line start about `fallback_overlap_chars` before the previous
/// block's end.
pub fn fallback_blocks(text: &str, config: &EngineConfig, lines: &LineIndex) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = advance_chars(text, start, config.fallback_block_chars);
        if end < text.len() {
            // Cut after the last line end in the block; a single overlong line is
            // cut at a character boundary.
            if let Some(newline) = text[start..end].rfind('\n') {
                end = start + newline + 1;
            }
        }
        if let Some(range) = trim_blank_lines(text, lines, start..end) {
            let symbol = line_label(lines, &range);
            out.push(Chunk {
                range,
                symbol,
                name: None,
                kind: ChunkKind::Block,
            });
        }
        if end >= text.len() {
            break;
        }
        let overlap = retreat_chars(text, end, config.fallback_overlap_chars);
        let next = if overlap == 0 || text.as_bytes()[overlap - 1] == b'\n' {
            overlap
        } else {
            text[overlap..end]
                .find('\n')
                .map_or(end, |i| overlap + i + 1)
        };
        start = if next > start { next } else { end };
    }
    out
}

/// The byte offset `n` characters after `from` (or the end).
fn advance_chars(text: &str, from: usize, n: usize) -> usize {
    text[from..]
        .char_indices()
        .nth(n)
        .map_or(text.len(), |(i, _)| from + i)
}

/// The byte offset `n` characters before `from` (or 0).
fn retreat_chars(text: &str, from: usize, n: usize) -> usize {
    if n == 0 {
        return from;
    }
    text[..from]
        .char_indices()
        .rev()
        .nth(n - 1)
        .map_or(0, |(i, _)| i)
}
