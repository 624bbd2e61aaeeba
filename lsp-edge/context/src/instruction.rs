//! Finding an instruction in request text, and the code in a model's answer.

use std::ops::Range;

use crate::Language;

/// Verbs that open an instruction: `# refactor ...`, `Convert this to async`.
const COMMAND_VERBS: &[&str] = &[
    "add",
    "clean",
    "convert",
    "create",
    "delete",
    "document",
    "explain",
    "extract",
    "fix",
    "generate",
    "implement",
    "improve",
    "make",
    "merge",
    "migrate",
    "move",
    "optimise",
    "optimize",
    "port",
    "refactor",
    "remove",
    "rename",
    "replace",
    "rewrite",
    "simplify",
    "split",
    "transform",
    "translate",
    "turn",
    "update",
    "write",
];

/// Finds an instruction carried in `text`: the first non-blank line when it is a
/// comment such as `# INSTRUCTION: ...`, `# TODO: ...` or `// refactor ...`, or
/// else the last non-blank line when it reads as a command (`Refactor this to use
/// async/await`). Returns the instruction and the byte range of its whole line,
/// line end included, so the caller can cut it out of the code.
pub fn extract_instruction(text: &str) -> Option<(String, Range<usize>)> {
    let lines = || {
        text.split_inclusive('\n').scan(0, |offset, line| {
            let start = *offset;
            *offset += line.len();
            Some((start..*offset, line))
        })
    };
    let mut non_blank = lines().filter(|(_, line)| !line.trim().is_empty());
    let (first_range, first) = non_blank.next()?;
    if let Some(rest) = strip_comment(first.trim()) {
        if let Some(instruction) = tagged(rest).or_else(|| command(rest)) {
            return Some((instruction, first_range));
        }
    }
    let (last_range, last) = lines().filter(|(_, line)| !line.trim().is_empty()).last()?;
    let last = last.trim();
    let line = strip_comment(last).unwrap_or(last);
    command(line).map(|instruction| (instruction, last_range))
}

/// The text after a line comment's marker: any parsed language's, or `--` (SQL,
/// Lua, Haskell), since the text's language is not known here.
fn strip_comment(line: &str) -> Option<&str> {
    let markers = Language::PARSED
        .iter()
        .filter_map(|language| language.spec())
        .map(|spec| spec.line_comment)
        .chain(["--"]);
    markers
        .into_iter()
        .find_map(|marker| line.strip_prefix(marker))
        .map(|rest| rest.trim_start_matches(['/', '#', '!']).trim())
}

/// `INSTRUCTION: text` or `TODO: text`, any case.
fn tagged(rest: &str) -> Option<String> {
    let (tag, instruction) = rest.split_once(':')?;
    let tag = tag.trim();
    let is_tag = tag.eq_ignore_ascii_case("instruction") || tag.eq_ignore_ascii_case("todo");
    let instruction = instruction.trim();
    (is_tag && !instruction.is_empty()).then(|| instruction.to_owned())
}

/// A line that starts with a command verb and does not look like code.
fn command(line: &str) -> Option<String> {
    let line = line.trim();
    let body = strip_prefix_ignore_case(line, "please ").unwrap_or(line);
    let (verb, rest) = body.split_once(char::is_whitespace)?;
    let is_verb = COMMAND_VERBS.iter().any(|v| v.eq_ignore_ascii_case(verb));
    let looks_like_code = line.ends_with([':', ';', '{', '}', ',', '(', '[', '\\', '='])
        || [" = ", "==", "->", "=>", "::"]
            .iter()
            .any(|op| line.contains(op));
    (is_verb && !rest.trim().is_empty() && !looks_like_code).then(|| line.to_owned())
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The body of the first fenced code block in a model's answer, or the whole
/// answer when it has none. Blank lines around the code are dropped; the
/// indentation of its first line is kept.
pub fn extract_code_block(answer: &str) -> String {
    let mut body = None;
    let mut lines = answer.split_inclusive('\n');
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("```") {
            let mut code = String::new();
            for line in lines.by_ref() {
                if line.trim_start().starts_with("```") {
                    break;
                }
                code.push_str(line);
            }
            body = Some(code);
            break;
        }
    }
    let code = body.as_deref().unwrap_or(answer);
    let first_line = code
        .split_inclusive('\n')
        .take_while(|line| line.trim().is_empty())
        .map(str::len)
        .sum::<usize>();
    code[first_line..].trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(text: &str, expect: Expect) {
        let actual = match extract_instruction(text) {
            Some((instruction, range)) => format!("{instruction:?} from {:?}", &text[range]),
            None => "none".to_owned(),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn leading_tagged_comment() {
        check(
            "# INSTRUCTION: Refactor to use async/await\nimport requests\n",
            expect![[
                r##""Refactor to use async/await" from "# INSTRUCTION: Refactor to use async/await\n""##
            ]],
        );
        check(
            "\n\n// TODO: make this generic over the reader\r\nfn read() {}\n",
            expect![[
                r##""make this generic over the reader" from "// TODO: make this generic over the reader\r\n""##
            ]],
        );
        check(
            "  # instruction:   add type hints  \ndef f(x): pass",
            expect![[r##""add type hints" from "  # instruction:   add type hints  \n""##]],
        );
    }

    #[test]
    fn leading_command_comment() {
        check(
            "// refactor this into an iterator\nfn main() {}\n",
            expect![[
                r##""refactor this into an iterator" from "// refactor this into an iterator\n""##
            ]],
        );
        check(
            "/// Rewrite with fewer allocations\nfn f() {}",
            expect![[
                r##""Rewrite with fewer allocations" from "/// Rewrite with fewer allocations\n""##
            ]],
        );
    }

    #[test]
    fn trailing_free_text_command() {
        check(
            "def get(url):\n    return requests.get(url)\n\nPlease convert this to async/await.\n",
            expect![[
                r##""Please convert this to async/await." from "Please convert this to async/await.\n""##
            ]],
        );
        check(
            "def f():\n    pass\n# simplify f",
            expect![[r##""simplify f" from "# simplify f""##]],
        );
    }

    #[test]
    fn code_is_not_an_instruction() {
        check("import os\nprint(os.getcwd())\n", expect!["none"]);
        check("fn main() {\n    make(x);\n}\n", expect!["none"]);
        check(
            "# A module comment\nx = 1\nupdate = compute(x)\n",
            expect!["none"],
        );
        check("fix = 1\nadd x", expect![[r##""add x" from "add x""##]]);
        check("use std::io;\n", expect!["none"]);
        check("# TODO:\nx = 1\n", expect!["none"]);
        check("", expect!["none"]);
    }

    #[test]
    fn code_block_from_answer() {
        let answer = "Here you go:\n\n```python\n\nasync def f():\n    await g()\n```\nDone.";
        assert_eq!(extract_code_block(answer), "async def f():\n    await g()");
        assert_eq!(extract_code_block("  x = 1\n\n"), "  x = 1");
        assert_eq!(extract_code_block("```\nunterminated\n"), "unterminated");
        assert_eq!(extract_code_block("a\n```rust\n```\nb"), "");
    }
}
