//! A scripted typing session for the typing-latency benchmark (`scripts/dev bench
//! typing`): a run of lines is cut out of a real file and typed back one keystroke at a
//! time, as an editor would send it, and llama.vim's request window is rebuilt at every
//! cursor position so that llama.cpp's own server can be played the same session.
//!
//! Positions are LSP positions: zero-based lines and UTF-16 code units.

use std::fmt;

/// What a keystroke is, for the benchmark's split of the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// One character typed within a line.
    Char,
    /// Enter: a line break plus the next line's indentation (the editor's auto-indent).
    Enter,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Char => "char",
            KeyKind::Enter => "enter",
        })
    }
}

/// One keystroke: `text` inserted at `at` (an empty range), leaving the cursor at
/// `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keystroke {
    pub kind: KeyKind,
    pub at: (u32, u32),
    pub text: String,
    pub cursor: (u32, u32),
}

/// The document as opened (the run of lines removed), where the cursor starts (the end
/// of the line before the run), and the keystrokes that type the run back.
#[derive(Debug, Clone)]
pub struct Session {
    pub initial: String,
    pub start: (u32, u32),
    pub keystrokes: Vec<Keystroke>,
}

fn utf16_len(s: &str) -> u32 {
    s.encode_utf16().count() as u32
}

/// Builds the session that types lines `first..first + count` (zero-based) of `text`
/// back. The run must leave at least one line before it (where the cursor starts) and
/// one after it, and the text must use `\n` line ends.
pub fn session(text: &str, first: usize, count: usize) -> Result<Session, String> {
    if text.contains('\r') {
        return Err("the file must use \\n line ends".into());
    }
    let lines: Vec<&str> = text.split('\n').collect();
    if first == 0 || count == 0 || first + count >= lines.len() {
        return Err(format!(
            "lines {}..{} (one-based) must lie strictly inside the file's {} lines",
            first + 1,
            first + count,
            lines.len()
        ));
    }
    let kept: Vec<&str> = lines[..first]
        .iter()
        .chain(&lines[first + count..])
        .copied()
        .collect();
    let start = ((first - 1) as u32, utf16_len(lines[first - 1]));
    let mut cursor = start;
    let mut keystrokes = Vec::new();
    for (offset, line) in lines[first..first + count].iter().enumerate() {
        let row = (first + offset) as u32;
        let body = line.trim_start_matches([' ', '\t']);
        let indent = &line[..line.len() - body.len()];
        let next = (row, utf16_len(indent));
        keystrokes.push(Keystroke {
            kind: KeyKind::Enter,
            at: cursor,
            text: format!("\n{indent}"),
            cursor: next,
        });
        cursor = next;
        for c in body.chars() {
            let next = (row, cursor.1 + c.len_utf16() as u32);
            keystrokes.push(Keystroke {
                kind: KeyKind::Char,
                at: cursor,
                text: c.to_string(),
                cursor: next,
            });
            cursor = next;
        }
    }
    Ok(Session {
        initial: kept.join("\n"),
        start,
        keystrokes,
    })
}

/// The byte offset of an LSP position in `text`, clamped to the line's end.
pub fn byte_offset(text: &str, (line, character): (u32, u32)) -> usize {
    let mut start = 0;
    for _ in 0..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return text.len(),
        }
    }
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let mut units = 0;
    for (i, c) in text[start..end].char_indices() {
        if units >= character {
            return start + i;
        }
        units += c.len_utf16() as u32;
    }
    end
}

/// Applies one keystroke to `text`, as the server applies the `didChange`.
pub fn apply(text: &mut String, keystroke: &Keystroke) {
    let offset = byte_offset(text, keystroke.at);
    text.insert_str(offset, &keystroke.text);
}

/// llama.vim's local context for a FIM request at `cursor` (its `s:fim_ctx_local`):
/// `n_prefix` whole lines before the cursor line, the cursor line up to the cursor,
/// and the rest of the cursor line plus `n_suffix` lines after it. A cursor line of
/// only whitespace is sent as empty, with indent 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// `input_prefix`: the lines before the cursor line, each ending in `\n`.
    pub prefix: String,
    /// `prompt`: the cursor line up to the cursor.
    pub middle: String,
    /// `input_suffix`: the rest of the cursor line, `\n`, the lines after, `\n`.
    pub suffix: String,
    /// `n_indent`: the cursor line's indentation in bytes.
    pub indent: usize,
}

/// llama.vim's defaults (`n_prefix`, `n_suffix`).
pub const LLAMA_VIM_PREFIX_LINES: usize = 256;
pub const LLAMA_VIM_SUFFIX_LINES: usize = 64;

pub fn llama_vim_window(
    text: &str,
    cursor: (u32, u32),
    n_prefix: usize,
    n_suffix: usize,
) -> Window {
    // Vim's buffer has no empty line after the final line break.
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.len() > 1 && lines.last() == Some(&"") {
        lines.pop();
    }
    let row = (cursor.0 as usize).min(lines.len() - 1);
    let line = lines[row];
    let line_start = byte_offset(text, (row as u32, 0));
    let split = byte_offset(text, (row as u32, cursor.1)) - line_start;
    let (mut middle, mut rest) = (&line[..split], &line[split..]);
    let indent = if line.trim().is_empty() {
        middle = "";
        rest = "";
        0
    } else {
        line.len() - line.trim_start_matches([' ', '\t']).len()
    };
    let before = &lines[row.saturating_sub(n_prefix)..row];
    let after = &lines[(row + 1).min(lines.len())..(row + 1 + n_suffix).min(lines.len())];
    Window {
        prefix: format!("{}\n", before.join("\n")),
        middle: middle.to_owned(),
        suffix: format!("{rest}\n{}\n", after.join("\n")),
        indent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH_FILE: &str = include_str!("../data/typing/requests_sessions.py");

    #[test]
    fn typing_the_session_back_rebuilds_the_file_exactly() {
        for (first, count) in [(539, 15), (1, 1), (100, 40)] {
            let session = session(BENCH_FILE, first, count).expect("a valid run");
            let mut text = session.initial.clone();
            assert!(text.len() < BENCH_FILE.len());
            let mut cursor = session.start;
            for keystroke in &session.keystrokes {
                assert_eq!(keystroke.at, cursor, "each keystroke types at the cursor");
                apply(&mut text, keystroke);
                cursor = keystroke.cursor;
            }
            assert_eq!(text, BENCH_FILE, "lines {first}+{count}");
            let enters = session
                .keystrokes
                .iter()
                .filter(|k| k.kind == KeyKind::Enter)
                .count();
            assert_eq!(enters, count);
        }
    }

    #[test]
    fn enter_inserts_the_next_lines_indentation_and_characters_follow_it() {
        let text = "def f():\n    x = 1\n\n    return é\nend\n";
        let session = session(text, 1, 3).expect("a valid run");
        assert_eq!(session.initial, "def f():\nend\n");
        assert_eq!(session.start, (0, 8));
        let keys = &session.keystrokes;
        assert_eq!(keys[0].kind, KeyKind::Enter);
        assert_eq!(keys[0].text, "\n    ");
        assert_eq!(keys[0].cursor, (1, 4));
        assert_eq!((keys[1].text.as_str(), keys[1].at), ("x", (1, 4)));
        // The empty line is a bare Enter.
        assert_eq!(keys[6].text, "\n");
        assert_eq!(keys[6].cursor, (2, 0));
        assert_eq!(keys.last().map(|k| k.cursor), Some((3, 12)));
        assert_eq!(keys.len(), 1 + 5 + 1 + 1 + 8);
    }

    #[test]
    fn runs_that_touch_the_files_ends_are_refused() {
        let text = "a\nb\nc";
        assert!(session(text, 0, 1).is_err());
        assert!(session(text, 1, 2).is_err());
        assert!(session(text, 1, 0).is_err());
        assert!(session("a\r\nb\r\nc\r\n", 1, 1).is_err());
        assert!(session(text, 1, 1).is_ok());
    }

    #[test]
    fn llama_vim_window_splits_at_the_cursor() {
        let text = "l0\nl1\n    call(x)\nl3\nl4\n";
        let window = llama_vim_window(text, (2, 9), 1, 1);
        assert_eq!(
            window,
            Window {
                prefix: "l1\n".into(),
                middle: "    call(".into(),
                suffix: "x)\nl3\n".into(),
                indent: 4,
            }
        );
        let whole = llama_vim_window(text, (2, 9), 256, 64);
        assert_eq!(whole.prefix, "l0\nl1\n");
        assert_eq!(whole.suffix, "x)\nl3\nl4\n");
        // A line of only whitespace (just after Enter) is sent empty.
        let text = "a\n        \nb\n";
        let window = llama_vim_window(text, (1, 8), 256, 64);
        assert_eq!((window.middle.as_str(), window.indent), ("", 0));
        assert_eq!(window.suffix, "\nb\n");
        // The first line has no lines before it: vim's join of nothing, then "\n".
        assert_eq!(llama_vim_window(text, (0, 1), 256, 64).prefix, "\n");
    }
}
