//! Duplicate detection by a fingerprint of the whole, whitespace-normalised chunk.
//!
//! The old system hashed only the first 100 characters and so merged distinct
//! chunks that began alike (two functions with the same signature and docstring).
//! Hashing everything, with whitespace runs collapsed, merges only chunks that
//! differ in layout alone, such as the same function at two indentations.

/// A 64-bit FNV-1a hash of `text` with every run of ASCII whitespace read as one
/// space and leading and trailing whitespace ignored. Stable across runs and platforms.
pub fn fingerprint(text: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    };
    let mut pending_space = false;
    let mut started = false;
    // Only ASCII whitespace is collapsed: it is what indentation and line ends
    // are made of, and working on bytes keeps this cheap. Every other byte,
    // UTF-8 continuation bytes included, is hashed as it is.
    for &byte in text.as_bytes() {
        if byte.is_ascii_whitespace() {
            pending_space = started;
            continue;
        }
        if pending_space {
            feed(b' ');
            pending_space = false;
        }
        started = true;
        feed(byte);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_does_not_matter() {
        assert_eq!(
            fingerprint("def f(x):\n    return x\n"),
            fingerprint("  def f(x):\r\n\t\treturn   x"),
        );
    }

    /// Regression: the old system fingerprinted only the first 100 characters and
    /// merged these two.
    #[test]
    fn chunks_sharing_their_first_100_chars_stay_distinct() {
        let head = format!(
            "def handler(request):\n    \"\"\"{}\"\"\"\n",
            "x".repeat(120)
        );
        let a = format!("{head}    return save(request)\n");
        let b = format!("{head}    return delete(request)\n");
        assert_eq!(a[..100], b[..100]);
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn whitespace_is_not_removed_only_collapsed() {
        assert_ne!(fingerprint("a b"), fingerprint("ab"));
    }
}
