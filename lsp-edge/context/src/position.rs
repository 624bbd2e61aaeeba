//! Line and column positions to byte offsets and back, for callers that count in
//! lines and characters (the command line).
//!
//! Lines end at `\n`, `\r\n` or a lone `\r`, as in the LSP specification; columns
//! count Unicode scalar values (characters), so an emoji or a CJK character is one
//! column. LSP's UTF-16 columns are converted in the LSP layer, not here.

/// The byte offset of 0-based `line` and `column` (in characters). A column past
/// the line's end means the end of the line (before its line break); a line past
/// the last means the end of the text.
pub fn byte_offset_at(text: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 0..line {
        match next_line_start(text, start) {
            Some(next) => start = next,
            None => return text.len(),
        }
    }
    let line_text = &text[start..];
    let content_end = line_text.find(['\n', '\r']).unwrap_or(line_text.len());
    line_text[..content_end]
        .char_indices()
        .nth(column)
        .map_or(start + content_end, |(i, _)| start + i)
}

/// The 0-based line and character column of byte `offset` (an offset inside a
/// character counts as that character's start).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = crate::document::floor_char_boundary(text, offset);
    let mut line = 0;
    let mut start = 0;
    // An offset between `\r` and `\n` stays on the line they end.
    while let Some(next) = next_line_start(text, start).filter(|&next| next <= offset) {
        line += 1;
        start = next;
    }
    (line, text[start..offset].chars().count())
}

fn next_line_start(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let at = from + text[from..].find(['\n', '\r'])?;
    if bytes[at] == b'\r' && bytes.get(at + 1) == Some(&b'\n') {
        Some(at + 2)
    } else {
        Some(at + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii() {
        let text = "ab\ncd\n";
        assert_eq!(byte_offset_at(text, 0, 0), 0);
        assert_eq!(byte_offset_at(text, 1, 1), 4);
        assert_eq!(byte_offset_at(text, 1, 99), 5);
        assert_eq!(byte_offset_at(text, 2, 0), 6);
        assert_eq!(byte_offset_at(text, 7, 0), 6);
        assert_eq!(line_column(text, 4), (1, 1));
        assert_eq!(line_column(text, 6), (2, 0));
    }

    #[test]
    fn emoji_and_cjk_are_one_column() {
        // 😀 is 4 bytes (2 UTF-16 units), 漢 is 3 bytes.
        let text = "x😀漢y\n漢字\n";
        assert_eq!(byte_offset_at(text, 0, 1), 1);
        assert_eq!(byte_offset_at(text, 0, 2), 5);
        assert_eq!(byte_offset_at(text, 0, 3), 8);
        assert_eq!(byte_offset_at(text, 1, 1), 13);
        assert_eq!(line_column(text, 8), (0, 3));
        assert_eq!(line_column(text, 13), (1, 1));
        // Inside the emoji: its start.
        assert_eq!(line_column(text, 3), (0, 1));
    }

    #[test]
    fn crlf_and_lone_cr_end_lines() {
        let text = "a\r\nbc\rd";
        assert_eq!(byte_offset_at(text, 0, 5), 1);
        assert_eq!(byte_offset_at(text, 1, 0), 3);
        assert_eq!(byte_offset_at(text, 1, 2), 5);
        assert_eq!(byte_offset_at(text, 2, 0), 6);
        assert_eq!(line_column(text, 3), (1, 0));
        assert_eq!(line_column(text, 6), (2, 0));
    }

    #[test]
    fn round_trip() {
        let text = "fn main() {\r\n    let s = \"héllo 😀\";\n}\r\n// 終わり";
        for (offset, c) in text.char_indices() {
            if c == '\n' && text[..offset].ends_with('\r') {
                // Between `\r` and `\n`: no column of its own.
                continue;
            }
            let (line, column) = line_column(text, offset);
            assert_eq!(byte_offset_at(text, line, column), offset, "{offset}");
        }
    }
}
