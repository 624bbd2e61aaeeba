//! Conversion between LSP positions and offsets into a rope, in the negotiated
//! encoding.
//!
//! The specification (3.17, "Position"): "A position inside a document ... expressed
//! as a zero-based line and character offset. ... The meaning of this offset is
//! determined by the negotiated `PositionEncodingKind`", UTF-16 code units unless the
//! client and server agree on another. "If the character value is greater than the
//! line length it defaults back to the line length." Lines end at `\n`, `\r\n` or
//! `\r` (ropey is built with `cr_lines` only, to match).
//!
//! Everything here clamps: a line past the end means the end of the document, a
//! character past the line's end means the line's end, and an offset inside a
//! character (half a surrogate pair, or inside a UTF-8 sequence) means that
//! character's start. No input panics.

use ropey::Rope;
use tower_lsp_server::lsp_types::{Position, PositionEncodingKind};

/// The unit of `Position::character`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Utf16,
}

impl Encoding {
    /// UTF-8 when the client offers it (it saves conversions), else the mandatory
    /// UTF-16.
    pub fn negotiate(offered: Option<&[PositionEncodingKind]>) -> Encoding {
        match offered {
            Some(kinds) if kinds.contains(&PositionEncodingKind::UTF8) => Encoding::Utf8,
            _ => Encoding::Utf16,
        }
    }

    pub fn kind(self) -> PositionEncodingKind {
        match self {
            Encoding::Utf8 => PositionEncodingKind::UTF8,
            Encoding::Utf16 => PositionEncodingKind::UTF16,
        }
    }
}

/// Chars in `line` (which must exist) before its line break.
fn line_end_char(rope: &Rope, line: usize) -> usize {
    let start = rope.line_to_char(line);
    let slice = rope.line(line);
    let mut len = slice.len_chars();
    if len > 0 && matches!(slice.char(len - 1), '\n' | '\r') {
        len -= 1;
        if slice.char(len) == '\n' && len > 0 && slice.char(len - 1) == '\r' {
            len -= 1;
        }
    }
    start + len
}

/// The char index of `position`, clamped to the document.
pub fn to_char(rope: &Rope, position: Position, encoding: Encoding) -> usize {
    let line = position.line as usize;
    if line >= rope.len_lines() {
        return rope.len_chars();
    }
    let start = rope.line_to_char(line);
    let end = line_end_char(rope, line);
    let character = position.character as usize;
    match encoding {
        Encoding::Utf16 => {
            let start_cu = rope.char_to_utf16_cu(start);
            let end_cu = rope.char_to_utf16_cu(end);
            let target = start_cu.saturating_add(character).min(end_cu);
            // Inside a surrogate pair, ropey answers the pair's char: its start.
            rope.utf16_cu_to_char(target)
        }
        Encoding::Utf8 => {
            let start_byte = rope.char_to_byte(start);
            let end_byte = rope.char_to_byte(end);
            let target = start_byte.saturating_add(character).min(end_byte);
            // Inside a UTF-8 sequence, ropey answers the char that holds the byte.
            rope.byte_to_char(target)
        }
    }
}

/// The byte offset of `position`, clamped, on a char boundary.
pub fn to_byte(rope: &Rope, position: Position, encoding: Encoding) -> usize {
    rope.char_to_byte(to_char(rope, position, encoding))
}

/// The position of a char index (clamped to the document).
pub fn from_char(rope: &Rope, char_index: usize, encoding: Encoding) -> Position {
    let char_index = char_index.min(rope.len_chars());
    let line = rope.char_to_line(char_index);
    let start = rope.line_to_char(line);
    let character = match encoding {
        Encoding::Utf16 => rope.char_to_utf16_cu(char_index) - rope.char_to_utf16_cu(start),
        Encoding::Utf8 => rope.char_to_byte(char_index) - rope.char_to_byte(start),
    };
    Position::new(
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(character).unwrap_or(u32::MAX),
    )
}

/// The position of a byte offset (clamped; inside a character means its start).
pub fn from_byte(rope: &Rope, byte: usize, encoding: Encoding) -> Position {
    let byte = byte.min(rope.len_bytes());
    from_char(rope, rope.byte_to_char(byte), encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u32, character: u32) -> Position {
        Position::new(line, character)
    }

    /// `(line, character)` → byte, in both encodings, for a text with every kind
    /// of width: ASCII, 2-byte é, 3-byte 語 (one UTF-16 unit), 4-byte 😀 (two units).
    #[test]
    fn converts_exactly_in_both_encodings() {
        let rope = Rope::from_str("aé語😀b\nx");
        // byte offsets: a=0 é=1..3 語=3..6 😀=6..10 b=10 \n=11 x=12
        let cases16 = [
            (0, 0, 0),
            (0, 1, 1),
            (0, 2, 3),
            (0, 3, 6),
            (0, 5, 10),
            (0, 6, 11),
        ];
        for (line, character, byte) in cases16 {
            assert_eq!(
                to_byte(&rope, pos(line, character), Encoding::Utf16),
                byte,
                "utf-16 {line}:{character}"
            );
            assert_eq!(
                from_byte(&rope, byte, Encoding::Utf16),
                pos(line, character)
            );
        }
        let cases8 = [
            (0, 0, 0),
            (0, 1, 1),
            (0, 3, 3),
            (0, 6, 6),
            (0, 10, 10),
            (1, 1, 13),
        ];
        for (line, character, byte) in cases8 {
            assert_eq!(
                to_byte(&rope, pos(line, character), Encoding::Utf8),
                byte,
                "utf-8 {line}:{character}"
            );
            assert_eq!(from_byte(&rope, byte, Encoding::Utf8), pos(line, character));
        }
    }

    #[test]
    fn offsets_inside_a_character_mean_its_start() {
        let rope = Rope::from_str("😀é");
        // UTF-16 unit 1 is the low half of the surrogate pair.
        assert_eq!(to_byte(&rope, pos(0, 1), Encoding::Utf16), 0);
        // UTF-8 bytes 1..4 are inside 😀; byte 5 is inside é.
        assert_eq!(to_byte(&rope, pos(0, 2), Encoding::Utf8), 0);
        assert_eq!(to_byte(&rope, pos(0, 5), Encoding::Utf8), 4);
        assert_eq!(from_byte(&rope, 5, Encoding::Utf16), pos(0, 2));
    }

    #[test]
    fn positions_past_the_end_clamp() {
        let rope = Rope::from_str("ab\r\ncd\n");
        // Past a line's end: the end of that line, before its CRLF.
        assert_eq!(to_byte(&rope, pos(0, 99), Encoding::Utf16), 2);
        assert_eq!(to_byte(&rope, pos(0, 99), Encoding::Utf8), 2);
        // The empty last line after the final newline exists.
        assert_eq!(to_byte(&rope, pos(2, 0), Encoding::Utf16), 7);
        // Past the last line: the end of the document.
        assert_eq!(to_byte(&rope, pos(9, 9), Encoding::Utf16), 7);
        assert_eq!(to_byte(&rope, pos(u32::MAX, u32::MAX), Encoding::Utf8), 7);
        assert_eq!(from_byte(&rope, 1_000, Encoding::Utf16), pos(2, 0));
        let empty = Rope::new();
        assert_eq!(to_byte(&empty, pos(3, 3), Encoding::Utf16), 0);
        assert_eq!(from_byte(&empty, 3, Encoding::Utf16), pos(0, 0));
    }

    #[test]
    fn lines_end_at_lf_crlf_and_cr_only() {
        // A form feed (common in Python files) and U+2028 are not line breaks in LSP.
        let rope = Rope::from_str("a\u{c}b\u{2028}c\rd\r\ne");
        assert_eq!(
            to_byte(&rope, pos(1, 0), Encoding::Utf8),
            "a\u{c}b\u{2028}c\r".len()
        );
        assert_eq!(
            to_byte(&rope, pos(2, 0), Encoding::Utf8),
            "a\u{c}b\u{2028}c\rd\r\n".len()
        );
        assert_eq!(
            to_byte(&rope, pos(0, 99), Encoding::Utf8),
            "a\u{c}b\u{2028}c".len()
        );
    }

    #[test]
    fn negotiation_prefers_utf8_when_offered() {
        assert_eq!(Encoding::negotiate(None), Encoding::Utf16);
        assert_eq!(
            Encoding::negotiate(Some(&[PositionEncodingKind::UTF16])),
            Encoding::Utf16
        );
        assert_eq!(
            Encoding::negotiate(Some(&[
                PositionEncodingKind::UTF16,
                PositionEncodingKind::UTF8
            ])),
            Encoding::Utf8
        );
    }
}
