//! Cuts a raw model continuation down to what an editor should show: no further than
//! the enclosing block, no more than `max_lines`, not into text the suffix already
//! has, and never a pure duplicate of the text after the cursor.
//!
//! It works on plain text around the cursor, so streamed partial results and the
//! final answer go through the same rules.

/// What the trimmer needs to know about the cursor's surroundings.
#[derive(Debug, Clone)]
pub struct TrimContext {
    /// The cursor line's text before the cursor.
    line_prefix: String,
    /// The text after the cursor on its line.
    rest_of_line: String,
    /// The first non-blank line after the cursor line, trailing whitespace trimmed:
    /// with its indentation, because a `}` that closes the block being written is not
    /// the `}` of the enclosing one that follows it.
    next_suffix_line: String,
    /// The whole suffix with leading whitespace removed, for the duplicate check.
    suffix_start: String,
    base_indent: usize,
    opens_block: bool,
    max_lines: usize,
}

/// A trimmed continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    pub text: String,
    /// The rule that cut the continuation, if one did: generating more cannot change
    /// the answer then.
    pub cut: Option<Cut>,
}

impl Trimmed {
    pub fn finished(&self) -> bool {
        self.cut.is_some()
    }
}

/// What the rules make of one line of an answer.
enum Verdict {
    Keep,
    /// The answer ends at this line, with it or without it.
    End {
        keep: bool,
        why: Cut,
    },
}

/// Why an answer ends where it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// `max_lines` reached.
    Lines,
    /// The model began writing the line that already follows the cursor.
    Suffix,
    /// A line less deep than the cursor's, or the closer of the block the cursor's
    /// line opens.
    BlockEnd,
}

impl Cut {
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::Lines => "lines",
            Cut::Suffix => "suffix",
            Cut::BlockEnd => "block_end",
        }
    }
}

const CLOSERS: [char; 3] = ['}', ')', ']'];

impl TrimContext {
    /// `prefix` ends at the cursor and `suffix` starts there (either may be a window
    /// of the document, as long as it holds the cursor's lines).
    pub fn new(prefix: &str, suffix: &str, max_lines: usize) -> TrimContext {
        let line_prefix = prefix.rsplit('\n').next().unwrap_or("").to_owned();
        let mut suffix_lines = suffix.split('\n');
        let rest_of_line = suffix_lines.next().unwrap_or("").to_owned();
        let next_suffix_line = suffix_lines
            .map(str::trim_end)
            .find(|line| !line.is_empty())
            .unwrap_or("")
            .to_owned();
        let trimmed = line_prefix.trim_end();
        let opens_block = trimmed.ends_with([':', '{', '(', '[']);
        TrimContext {
            base_indent: indent_width(&line_prefix),
            opens_block,
            line_prefix,
            rest_of_line,
            next_suffix_line,
            suffix_start: suffix.trim_start().to_owned(),
            max_lines: max_lines.max(1),
        }
    }

    /// Trims `raw`. With `complete` false the text is still growing: a later line
    /// without its newline is shown only once no rule can cut it or clear the answer
    /// whatever tokens follow, so that a line once shown is not taken back; otherwise
    /// it is left out, and no rule cuts on it.
    pub fn trim(&self, raw: &str, complete: bool) -> Trimmed {
        let mut kept: Vec<&str> = Vec::new();
        let mut cut = None;
        let segments: Vec<&str> = raw.split('\n').collect();
        let last = segments.len() - 1;
        for (index, line) in segments.iter().copied().enumerate() {
            let partial = !complete && index == last;
            if index == 0 {
                kept.push(line);
                continue;
            }
            if index >= self.max_lines {
                cut = Some(Cut::Lines);
                break;
            }
            if line.trim().is_empty() {
                if !partial {
                    kept.push(line);
                }
                continue;
            }
            if partial {
                // Shown once no rule can cut it whatever follows: its depth keeps it,
                // it cannot grow into the line after the cursor, and the answer cannot
                // grow into a copy of the suffix (`raw` is the answer so far).
                let settled = matches!(self.judge(line), Verdict::Keep)
                    && !self.next_suffix_line.starts_with(line.trim_end())
                    && !self.duplicates_suffix(raw);
                if settled {
                    kept.push(line);
                }
                break;
            }
            match self.judge(line) {
                Verdict::Keep => kept.push(line),
                Verdict::End { keep, why } => {
                    if keep {
                        kept.push(line);
                    }
                    cut = Some(why);
                    break;
                }
            }
        }

        while kept.len() > 1 && kept.last().is_some_and(|line| line.trim().is_empty()) {
            kept.pop();
        }
        let mut text = kept.join("\n");
        if complete || cut.is_some() {
            text.truncate(text.trim_end().len());
            self.strip_rest_of_line_overlap(&mut text);
            if self.duplicates_suffix(&text) {
                text.clear();
            }
        }
        Trimmed { text, cut }
    }

    /// What the rules make of a line after the first that has content.
    fn judge(&self, line: &str) -> Verdict {
        let end = |keep, why| Verdict::End { keep, why };
        if !self.next_suffix_line.is_empty() && line.trim_end() == self.next_suffix_line {
            // The model started writing what already follows the cursor.
            return end(false, Cut::Suffix);
        }
        let content = line.trim();
        let indent = indent_width(line);
        if !self.opens_block {
            return if indent < self.base_indent {
                end(false, Cut::BlockEnd)
            } else {
                Verdict::Keep
            };
        }
        if indent > self.base_indent {
            return Verdict::Keep;
        }
        if indent < self.base_indent || !content.starts_with(CLOSERS) {
            return end(false, Cut::BlockEnd);
        }
        // The closer of the block this line opened: keep it unless the document
        // already has it (a closer at the same depth next).
        let closer = content.chars().next();
        let next = &self.next_suffix_line;
        let has_it = indent_width(next) == self.base_indent
            && next.trim_start().starts_with(|c| Some(c) == closer);
        end(!has_it, Cut::BlockEnd)
    }

    /// The model often re-types the closing characters that already follow the
    /// cursor (`print("hi|")` → `hi")`); they stay in the document, so drop them.
    fn strip_rest_of_line_overlap(&self, text: &mut String) {
        let rest = self.rest_of_line.trim_end();
        if rest.is_empty() {
            return;
        }
        let last_line_start = text.rfind('\n').map_or(0, |i| i + 1);
        let last_line = &text[last_line_start..];
        let mut overlap = 0;
        for (end, _) in rest.char_indices().skip(1).chain([(rest.len(), ' ')]) {
            let candidate = &rest[..end];
            if last_line.ends_with(candidate) {
                overlap = end;
            }
        }
        let starts_with_punctuation = rest
            .chars()
            .next()
            .is_some_and(|c| !c.is_alphanumeric() && c != '_' && !c.is_whitespace());
        if overlap > 0 && starts_with_punctuation {
            text.truncate(text.len() - overlap);
            text.truncate(text.trim_end().len());
        }
    }

    fn duplicates_suffix(&self, text: &str) -> bool {
        let text = text.trim();
        text.is_empty() || self.suffix_start.starts_with(text)
    }

    /// The cursor line's text before the cursor.
    pub fn line_prefix(&self) -> &str {
        &self.line_prefix
    }
}

/// Leading whitespace in columns, a tab counting as four.
pub(crate) fn indent_width(line: &str) -> usize {
    line.chars()
        .take_while(|c| c.is_whitespace())
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum()
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};

    use super::*;

    /// `fixture` is the document with `$0` at the cursor; `raw` is what the model said.
    fn check(fixture: &str, raw: &str, max_lines: usize, expect: Expect) {
        let (prefix, suffix) = fixture.split_once("$0").expect("fixture needs $0");
        let context = TrimContext::new(prefix, suffix, max_lines);
        let trimmed = context.trim(raw, true);
        let shown = match trimmed.cut {
            Some(cut) => format!("{}\n<cut: {cut:?}>", trimmed.text),
            None => trimmed.text,
        };
        expect.assert_eq(&shown);
    }

    #[test]
    fn python_body_stops_at_the_next_top_level_definition() {
        check(
            "def add(a, b):\n    $0\n",
            "return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
            12,
            expect![[r#"
                return a + b
                <cut: BlockEnd>"#]],
        );
    }

    #[test]
    fn a_line_that_opens_a_block_gets_its_body_only() {
        check(
            "def add(a, b):$0\n\nprint(add(1, 2))\n",
            "\n    return a + b\ndef sub(a, b):\n",
            12,
            expect![[r#"

                    return a + b
                <cut: BlockEnd>"#]],
        );
    }

    #[test]
    fn rust_block_keeps_its_own_closer_when_the_document_lacks_it() {
        check(
            "fn main() {$0",
            "\n    println!(\"hi\");\n}\n\nfn other() {}\n",
            12,
            expect![[r#"

                    println!("hi");
                }
                <cut: BlockEnd>"#]],
        );
    }

    #[test]
    fn rust_block_drops_a_closer_the_document_already_has() {
        check(
            "fn main() {$0\n}\n",
            "\n    println!(\"hi\");\n}\n",
            12,
            expect![[r#"

                    println!("hi");
                <cut: Suffix>"#]],
        );
    }

    #[test]
    fn a_block_keeps_its_closer_when_the_enclosing_blocks_closer_follows() {
        // A method written inside an impl: its `}` is not the impl's.
        check(
            "impl R for T {\n    $0\n}\n",
            "fn f(self) -> u32 {\n        1\n    }\n}\n",
            12,
            expect![[r#"
                fn f(self) -> u32 {
                        1
                    }
                <cut: Suffix>"#]],
        );
        // The same after a line that opens a block.
        check(
            "fn f() {\n    if x {$0\n}\n",
            "\n        y();\n    }\n",
            12,
            expect![[r#"

                        y();
                    }
                <cut: BlockEnd>"#]],
        );
    }

    #[test]
    fn statements_stop_at_the_end_of_the_enclosing_block() {
        check(
            "fn f() {\n    let x = $0\n}\n",
            "1;\n    let y = x + 1;\n}\nfn g() {}",
            12,
            expect![[r#"
                1;
                    let y = x + 1;
                <cut: Suffix>"#]],
        );
    }

    #[test]
    fn stops_where_the_model_repeats_the_suffix() {
        check(
            "def f(x):\n    y = $0\n    return y\n",
            "x * 2\n    return y\n",
            12,
            expect![[r#"
                x * 2
                <cut: Suffix>"#]],
        );
    }

    #[test]
    fn caps_the_number_of_lines() {
        check(
            "$0",
            "a = 1\nb = 2\nc = 3\nd = 4\n",
            2,
            expect![[r#"
                a = 1
                b = 2
                <cut: Lines>"#]],
        );
    }

    #[test]
    fn drops_closing_characters_already_after_the_cursor() {
        check("print(\"hel$0\")\n", "lo\")", 12, expect![[r#"lo"#]]);
        // Letters after the cursor are not an overlap to strip.
        check("v = ma$0x + 1\n", "in_x", 12, expect![[r#"in_x"#]]);
    }

    #[test]
    fn a_duplicate_of_the_text_after_the_cursor_is_no_completion() {
        check(
            "def f():\n    $0return 1\n",
            "return 1",
            12,
            expect![[r#""#]],
        );
        check("x = 1\n$0", "\n\n   \n", 12, expect![[r#""#]]);
    }

    #[test]
    fn growing_text_shows_a_later_line_once_no_rule_can_cut_it() {
        let context = TrimContext::new("def f():\n    ", "\n", 12);
        assert_eq!(
            context.trim("return 1\n    # a comm", false),
            Trimmed {
                text: "return 1\n    # a comm".into(),
                cut: None
            }
        );
        // Its first character has not come: its depth is not known yet.
        assert_eq!(context.trim("x = 1\n    ", false).text, "x = 1");
        // Less deep than the cursor: left out, and not cut on while it grows.
        assert_eq!(
            context.trim("x = 1\nde", false),
            Trimmed {
                text: "x = 1".into(),
                cut: None
            }
        );
        // An answer that starts with a line break shows its second line as it comes.
        let opens = TrimContext::new("def f():", "\n\nprint(f())\n", 12);
        assert_eq!(opens.trim("\n    retu", false).text, "\n    retu");
        // The closer of the block being written may grow into `} else {`: wait.
        let rust = TrimContext::new("fn f() {\n    if x {", "\n}\n", 12);
        assert_eq!(
            rust.trim("\n        a();\n    }", false).text,
            "\n        a();"
        );
        assert_eq!(
            context.trim("retu", false),
            Trimmed {
                text: "retu".into(),
                cut: None
            }
        );
        // A complete line that ends the block finishes it even mid-stream.
        assert!(context.trim("return 1\ndef g", false).text == "return 1");
        assert_eq!(
            context.trim("return 1\ndef g():\n", false).cut,
            Some(Cut::BlockEnd)
        );
    }

    #[test]
    fn growing_text_hides_a_later_line_that_may_become_the_suffix() {
        // The line after the cursor is `    return total`: a growing line that could
        // still become it is left out, one that cannot is shown.
        let context = TrimContext::new(
            "def f(xs):\n    total = 0\n    ",
            "\n    return total\n",
            12,
        );
        assert_eq!(
            context.trim("for x in xs:\n    return to", false).text,
            "for x in xs:"
        );
        assert_eq!(
            context.trim("for x in xs:\n        total += x", false).text,
            "for x in xs:\n        total += x"
        );
        // An answer that could still grow into a copy of the text after the cursor
        // (`\nb = 2` would be cleared as one).
        let copy = TrimContext::new("a = 1\n", "\n  b = 2\n", 12);
        assert_eq!(copy.trim("\nb = ", false).text, "");
        assert_eq!(copy.trim("\nb = 2", true).text, "");
        assert_eq!(copy.trim("\nc = ", false).text, "\nc = ");
    }

    #[test]
    fn tabs_count_as_indentation() {
        check(
            "fn f() {\n\tlet x = $0\n}\n",
            "1;\n\tlet y = 2;\n}",
            12,
            expect![[r#"
                1;
                	let y = 2;
                <cut: Suffix>"#]],
        );
    }
}
