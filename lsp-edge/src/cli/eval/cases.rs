//! Drawing the cases: eligible files and lines from source trees, and what each
//! hole takes out.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cerebrum_context::{ContextEngine, Language};

use super::Case;
use crate::pipeline::trim::indent_width;

/// Files smaller than this are left out: the engine sends them whole, so they say
/// nothing about context selection.
pub const MIN_FILE_BYTES: u64 = 2_000;
/// Files larger than this are left out (generated tables, vendored bundles).
pub const MAX_FILE_BYTES: u64 = 64_000;
/// Lines longer than this are not holes (data, not code anyone types).
pub const MAX_LINE_CHARS: usize = 150;
/// A file with a line longer than this is generated or minified and left out.
const MAX_FILE_LINE_CHARS: usize = 400;

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
        let (cursor, suffix, expected_block) = match shape {
            HoleShape::Lines(lines) => (cursor, below_hole(&text[end..], lines), None),
            HoleShape::WholeLine => {
                let next_line = text[end..].find('\n').map_or(text.len(), |at| end + at + 1);
                (line_start(text, cursor), &text[next_line..], None)
            }
            HoleShape::Block(max_lines) => {
                let block_end = block_end(text, end, max_lines);
                let lines: Vec<&str> = text[cursor..block_end]
                    .split('\n')
                    .map(str::trim_end)
                    .collect();
                (cursor, &text[block_end..], Some(lines.join("\n")))
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
    /// Its whole line, indentation and line break too, the cursor at column 0
    /// (`--whole-line`).
    WholeLine,
}

/// Where the line that holds byte `at` of `text` starts.
fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |newline| newline + 1)
}

/// Where a block hole ends, given `end`, the end of its first line's code: after the
/// last line of code among those below it that belong to its block (blank, or
/// indented at least as deep as its first line), at most `max_lines` lines in all.
/// At the top level, where the enclosing block is the file, the block is the item the
/// hole starts: after deeper lines, a line at column 0 that does not continue the item
/// ends it. Blank lines after the block's last code stay in the suffix.
fn block_end(text: &str, end: usize, max_lines: usize) -> usize {
    let depth = indent_width(&text[line_start(text, end)..end]);
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
///
/// With `written` above 0, the user was that many lines further up, and those lines
/// are among what was typed since (all of the prompt, when it has no more lines).
pub fn before_enter(case: &Case, written: usize) -> (&str, &str) {
    let at = case
        .prompt
        .rmatch_indices('\n')
        .nth(written)
        .map_or(0, |(at, _)| at);
    case.prompt.split_at(at)
}

#[cfg(test)]
mod tests {
    use cerebrum_context::EngineConfig;

    use super::*;

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
        let whole = draw(7, HoleShape::WholeLine);
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
        // Whole lines: the same holes, the cursor at column 0, the line's indentation
        // and line break out with its code.
        assert_eq!(key(&whole), key(&a));
        for (whole, one) in whole.iter().zip(&a) {
            let indentation = one.prompt.rsplit('\n').next().unwrap();
            assert!(whole.prompt.is_empty() || whole.prompt.ends_with('\n'));
            assert_eq!(whole.expected, format!("{indentation}{}", one.expected));
            assert_eq!(
                format!("{}{}\n{}", whole.prompt, whole.expected, whole.suffix),
                body
            );
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
            let (before, typed) = before_enter(case, 0);
            assert!(["\n", "\n    "].contains(&typed), "{typed:?}");
            let mut lines: Vec<&str> = body.split_inclusive('\n').collect();
            lines.remove(case.line - 1);
            assert_eq!(format!("{before}{}", case.suffix), lines.concat());
            // A line earlier, the line above was not there either.
            let (before, typed) = before_enter(case, 1);
            assert_eq!(format!("{before}{typed}"), case.prompt);
            if case.line > 1 {
                lines.remove(case.line - 2);
                assert_eq!(format!("{before}{}", case.suffix), lines.concat());
            } else {
                assert_eq!(before, "");
            }
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
}
