//! Code like the cursor's, from the rest of the file: the windows of lines whose
//! words overlap most with the lines above the cursor, each with the lines that
//! followed it, for the model to read as examples of what comes next (a test that
//! builds the same call, a sibling overload, the method beside the one written).
//!
//! Similarity is the Jaccard index of the two texts' sets of terms (split, lower-cased
//! identifier sub-words, as [`crate::rank`] indexes them). The query is whole lines
//! only, so the snippets stay put while a line is typed and the prompt's head with
//! them.

use std::collections::HashSet;
use std::ops::Range;

use crate::chunk::LineIndex;
use crate::rank::{terms, Term};

/// How many snippets, of what size and how alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SimilarLimits {
    /// Most snippets (0: none).
    pub snippets: usize,
    /// Lines compared: the query is this many whole lines above the cursor's line,
    /// and a snippet is as many lines like them plus as many again after them.
    pub lines: usize,
    /// Least Jaccard index a snippet's compared lines must reach.
    pub min_score: f32,
    /// Most characters of one snippet: lines past it are left off its end.
    pub max_chars: usize,
}

/// Byte ranges of up to `limits.snippets` snippets of `text`, none inside `skip`
/// (the windows already sent) or overlapping another, in document order.
pub(crate) fn similar_snippets(
    text: &str,
    lines: &LineIndex,
    cursor: usize,
    skip: &Range<usize>,
    limits: SimilarLimits,
) -> Vec<Range<usize>> {
    let width = limits.lines;
    if limits.snippets == 0 || width == 0 || lines.is_empty() {
        return Vec::new();
    }
    let cursor_line = lines.line_of(cursor);
    let query: HashSet<Term> =
        line_terms(text, lines, cursor_line.saturating_sub(width)..cursor_line)
            .flatten()
            .collect();
    if query.is_empty() {
        return Vec::new();
    }
    let per_line: Vec<Vec<Term>> = line_terms(text, lines, 0..lines.len()).collect();
    // Lines `skip` covers, first and last.
    let skip_lines = lines.line_of(skip.start)..lines.line_of(skip.end.saturating_sub(1)) + 1;
    let outside =
        |span: &Range<usize>| span.end <= skip_lines.start || span.start >= skip_lines.end;

    let mut scored: Vec<(f32, usize)> = Vec::new();
    let mut window: HashSet<Term> = HashSet::new();
    for first in 0..lines.len().saturating_sub(width - 1) {
        if !outside(&(first..first + width)) {
            continue;
        }
        window.clear();
        window.extend(per_line[first..first + width].iter().flatten());
        let shared = window.intersection(&query).count();
        let score = shared as f32 / (window.len() + query.len() - shared) as f32;
        if score >= limits.min_score && shared > 0 {
            scored.push((score, first));
        }
    }
    // Best first; a tie goes to the lines nearer the cursor.
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.abs_diff(cursor_line).cmp(&b.1.abs_diff(cursor_line)))
    });

    let mut picked: Vec<Range<usize>> = Vec::new();
    for (_, first) in scored {
        if picked.len() == limits.snippets {
            break;
        }
        // The compared lines and those after them, up to the windows or the end.
        let mut end = (first + 2 * width).min(lines.len());
        if first < skip_lines.start {
            end = end.min(skip_lines.start);
        }
        let span = first..end;
        if picked
            .iter()
            .any(|p| p.start < span.end && span.start < p.end)
        {
            continue;
        }
        // Whole lines off the end while the snippet is too long; the compared
        // lines stay, or the snippet goes.
        let too_long = |last: usize| {
            let chars = text[lines.line_start(first)..lines.line_end(last - 1)].chars();
            chars.count() > limits.max_chars
        };
        let mut last = end;
        while last > first + width && too_long(last) {
            last -= 1;
        }
        if too_long(last) {
            continue;
        }
        picked.push(first..last);
    }
    picked.sort_unstable_by_key(|span| span.start);
    picked
        .into_iter()
        .map(|span| lines.line_start(span.start)..lines.line_end(span.end - 1))
        .collect()
}

/// The terms of each line in `range`.
fn line_terms<'a>(
    text: &'a str,
    lines: &'a LineIndex,
    range: Range<usize>,
) -> impl Iterator<Item = Vec<Term>> + 'a {
    range.map(move |line| {
        let mut out = Vec::new();
        terms(
            &text[lines.line_start(line)..lines.line_end(line)],
            &mut out,
        );
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SimilarLimits = SimilarLimits {
        snippets: 2,
        lines: 2,
        min_score: 0.3,
        max_chars: 1_000,
    };

    fn snippets<'t>(text: &'t str, cursor_at: &str, skip: Range<usize>) -> Vec<&'t str> {
        let lines = LineIndex::new(text);
        let cursor = text.find(cursor_at).unwrap();
        similar_snippets(text, &lines, cursor, &skip, LIMITS)
            .into_iter()
            .map(|range| &text[range])
            .collect()
    }

    #[test]
    fn finds_the_lines_like_the_cursors_and_what_followed_them() {
        let text = "\
def parse_header(raw):
    name, value = raw.split(':')
    return Header(name.strip(), value.strip())

def unrelated():
    pass

def parse_cookie(raw):
    name, value = raw.split('=')
    <cursor>
";
        let skip = text.find("def parse_cookie").unwrap()..text.len();
        let found = snippets(text, "<cursor>", skip);
        assert_eq!(
            found,
            ["def parse_header(raw):\n    name, value = raw.split(':')\n    return Header(name.strip(), value.strip())\n\n"]
        );
    }

    #[test]
    fn nothing_inside_the_windows_or_below_the_score() {
        let text = "fn a() {\n    let x = 1;\n}\nfn b() {\n    let x = 1;\n    <cursor>\n}\n";
        // The whole text is the window: nothing is outside it to send.
        assert!(snippets(text, "<cursor>", 0..text.len()).is_empty());
        // Outside the windows, but sharing no word with the cursor's lines.
        let text = "struct Point;\nimpl Display for Point {}\nfn b() {\n    let total = 1;\n    <cursor>\n}\n";
        let skip = text.find("fn b").unwrap()..text.len();
        assert!(snippets(text, "<cursor>", skip).is_empty());
    }

    #[test]
    fn snippets_stop_at_the_windows_and_are_trimmed_to_the_limit() {
        let text = "x = load(a)\ny = load(b)\nz = 3\nx = load(a)\ny = load(b)\n<cursor>\n";
        let skip = text.find("z = 3").unwrap()..text.len();
        // The compared lines, then the lines after them up to the windows.
        assert_eq!(
            snippets(text, "<cursor>", skip),
            ["x = load(a)\ny = load(b)\n"]
        );

        let lines = LineIndex::new(text);
        let cursor = text.find("<cursor>").unwrap();
        let skip = text.find("x = load(a)\ny = load(b)\n<cursor>").unwrap()..text.len();
        let tight = SimilarLimits {
            max_chars: 5,
            ..LIMITS
        };
        assert!(similar_snippets(text, &lines, cursor, &skip, tight).is_empty());
    }
}
