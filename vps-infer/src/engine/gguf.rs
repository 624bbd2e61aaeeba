//! A structural check of a GGUF model file, without llama.cpp: magic, version, every
//! metadata entry and tensor description readable, and every tensor's data inside
//! the file. It runs at start so that a corrupt or truncated file shows in `/health`
//! and in each refusal with its reason, instead of only in the log of a failed load.
//!
//! It reads untrusted bytes: every length is checked against what is left of the
//! file before anything is allocated, and nothing panics on any input.

use std::io::{BufReader, Read};
use std::path::Path;

/// Versions llama.cpp reads.
const VERSIONS: [u32; 2] = [2, 3];
const DEFAULT_ALIGNMENT: u64 = 32;

/// What is wrong with a model file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("{path} is not a GGUF model file (it starts with {start:?}, not \"GGUF\")")]
    NotGguf { path: String, start: String },
    #[error("{path} has GGUF version {version}, which llama.cpp does not read (2 or 3)")]
    Version { path: String, version: u32 },
    #[error("{path} is corrupt or truncated: {reason}")]
    Corrupt { path: String, reason: String },
}

/// A summary of a file that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufSummary {
    pub version: u32,
    pub tensors: u64,
    pub metadata: u64,
}

/// Checks the file at `path`.
pub fn check(path: &Path) -> Result<GgufSummary, GgufError> {
    let shown = path.display().to_string();
    let io = |err: std::io::Error| GgufError::Io {
        path: shown.clone(),
        message: err.to_string(),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    check_reader(BufReader::new(file), len).map_err(|err| err.at(&shown))
}

/// Checks `len` bytes read from `reader` (the whole file).
pub fn check_reader(reader: impl Read, len: u64) -> Result<GgufSummary, Problem> {
    let mut r = Reader {
        inner: reader,
        pos: 0,
        len,
    };
    let mut magic = [0u8; 4];
    r.bytes(&mut magic, "the magic number")?;
    if &magic != b"GGUF" {
        return Err(Problem::NotGguf(
            magic.iter().map(|&b| char::from(b)).collect(),
        ));
    }
    let version = r.u32("the version")?;
    if !VERSIONS.contains(&version) {
        return Err(Problem::Version(version));
    }
    let tensors = r.u64("the tensor count")?;
    let metadata = r.u64("the metadata count")?;
    let mut alignment = DEFAULT_ALIGNMENT;
    for index in 0..metadata {
        let key = r.string(&format!("metadata key {index}"))?;
        let kind = r.u32("a metadata type")?;
        let what = format!("metadata {key:?}");
        if key == "general.alignment" && kind == 4 {
            alignment = u64::from(r.u32(&what)?);
            if alignment == 0 || !alignment.is_power_of_two() {
                return Err(r.corrupt(format!("general.alignment is {alignment}")));
            }
        } else {
            r.value(kind, &what, 0)?;
        }
    }
    let mut extents = Vec::new();
    for index in 0..tensors {
        let name = r.string(&format!("tensor {index}'s name"))?;
        let what = format!("tensor {name:?}");
        let dims = r.u32(&what)?;
        if dims > 8 {
            return Err(r.corrupt(format!("{what} has {dims} dimensions")));
        }
        let mut elements: u64 = 1;
        for _ in 0..dims {
            elements = elements.saturating_mul(r.u64(&what)?);
        }
        let kind = r.u32(&what)?;
        let offset = r.u64(&what)?;
        extents.push((what, offset, tensor_bytes(kind, elements)));
    }
    let data_start = r.pos.div_ceil(alignment).saturating_mul(alignment);
    let data_len = len.saturating_sub(data_start);
    for (what, offset, bytes) in extents {
        let end = offset.saturating_add(bytes.unwrap_or(1));
        if end > data_len {
            return Err(r.corrupt(format!(
                "{what}'s data ends at byte {} of a {len}-byte file",
                data_start.saturating_add(end)
            )));
        }
    }
    Ok(GgufSummary {
        version,
        tensors,
        metadata,
    })
}

/// Bytes of `elements` values of ggml type `kind`, for the types whose block size is
/// known here; `None` for others (only their start is checked then).
fn tensor_bytes(kind: u32, elements: u64) -> Option<u64> {
    let (block_bytes, block_elements) = match kind {
        0 => (4, 1),      // F32
        1 | 30 => (2, 1), // F16, BF16
        2 => (18, 32),    // Q4_0
        3 => (20, 32),    // Q4_1
        6 => (22, 32),    // Q5_0
        7 => (24, 32),    // Q5_1
        8 => (34, 32),    // Q8_0
        10 => (84, 256),  // Q2_K
        11 => (110, 256), // Q3_K
        12 => (144, 256), // Q4_K
        13 => (176, 256), // Q5_K
        14 => (210, 256), // Q6_K
        15 => (292, 256), // Q8_K
        _ => return None,
    };
    Some(
        elements
            .div_ceil(block_elements)
            .saturating_mul(block_bytes),
    )
}

/// What is wrong, before the path is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Io(String),
    NotGguf(String),
    Version(u32),
    Corrupt(String),
}

impl Problem {
    fn at(self, path: &str) -> GgufError {
        let path = path.to_owned();
        match self {
            Problem::Io(message) => GgufError::Io { path, message },
            Problem::NotGguf(start) => GgufError::NotGguf { path, start },
            Problem::Version(version) => GgufError::Version { path, version },
            Problem::Corrupt(reason) => GgufError::Corrupt { path, reason },
        }
    }
}

struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn corrupt(&self, reason: String) -> Problem {
        Problem::Corrupt(reason)
    }

    /// Fails unless `n` more bytes are in the file.
    fn need(&self, n: u64, what: &str) -> Result<(), Problem> {
        if self.len.saturating_sub(self.pos) < n {
            return Err(Problem::Corrupt(format!(
                "{what} at byte {} needs {n} bytes, but the file ends at byte {}",
                self.pos, self.len
            )));
        }
        Ok(())
    }

    fn bytes(&mut self, out: &mut [u8], what: &str) -> Result<(), Problem> {
        self.need(out.len() as u64, what)?;
        self.inner.read_exact(out).map_err(|err| {
            if err.kind() == std::io::ErrorKind::UnexpectedEof {
                Problem::Corrupt(format!("the file ends inside {what}"))
            } else {
                Problem::Io(err.to_string())
            }
        })?;
        self.pos += out.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), Problem> {
        self.need(n, what)?;
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|err| Problem::Io(err.to_string()))?;
        if copied != n {
            return Err(Problem::Corrupt(format!("the file ends inside {what}")));
        }
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, Problem> {
        let mut b = [0u8; 4];
        self.bytes(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Problem> {
        let mut b = [0u8; 8];
        self.bytes(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self, what: &str) -> Result<String, Problem> {
        let len = self.u64(what)?;
        // Keys and names are short; a huge length is corruption, not a string.
        if len > 64 * 1024 {
            return Err(self.corrupt(format!("{what} claims {len} bytes")));
        }
        let mut bytes = vec![0u8; len as usize];
        self.bytes(&mut bytes, what)?;
        Ok(String::from_utf8_lossy(&bytes).chars().take(80).collect())
    }

    /// Skips one value of GGUF type `kind`.
    fn value(&mut self, kind: u32, what: &str, depth: u32) -> Result<(), Problem> {
        let fixed = match kind {
            0 | 1 | 7 => 1, // u8, i8, bool
            2 | 3 => 2,     // u16, i16
            4..=6 => 4,     // u32, i32, f32
            10..=12 => 8,   // u64, i64, f64
            8 => {
                let len = self.u64(what)?;
                return self.skip(len, what);
            }
            9 => {
                if depth > 2 {
                    return Err(self.corrupt(format!("{what} nests arrays too deeply")));
                }
                let element = self.u32(what)?;
                let count = self.u64(what)?;
                // Every element takes at least one byte.
                self.need(count.min(self.len), what)?;
                if count > self.len {
                    return Err(self.corrupt(format!("{what} claims {count} elements")));
                }
                for _ in 0..count {
                    self.value(element, what, depth + 1)?;
                }
                return Ok(());
            }
            other => return Err(self.corrupt(format!("{what} has the unknown type {other}"))),
        };
        self.skip(fixed, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The cases per property: a bounded default for CI, `PROPTEST_CASES` for a longer run.
    fn cases(default: u32) -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(default)
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: cases(512),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// A valid file with random bytes overwritten, cut or appended: an answer,
        /// never a panic or a huge allocation.
        #[test]
        fn damaged_files_never_panic(
            changes in prop::collection::vec((0usize..200, any::<u8>()), 0..16),
            cut in prop::option::of(0usize..200),
            tail in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = gguf(4, 16);
            for (at, byte) in changes {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.min(bytes.len()));
            }
            bytes.extend(tail);
            let _ = check_bytes(&bytes);
        }
    }

    /// A minimal GGUF v3 file: one string entry, one F32 tensor of `elements` values,
    /// and `data` bytes of tensor data.
    fn gguf(elements: u64, data: usize) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        let key = b"general.name";
        out.extend((key.len() as u64).to_le_bytes());
        out.extend(key);
        out.extend(8u32.to_le_bytes());
        out.extend(4u64.to_le_bytes());
        out.extend(b"test");
        let name = b"w";
        out.extend((name.len() as u64).to_le_bytes());
        out.extend(name);
        out.extend(1u32.to_le_bytes());
        out.extend(elements.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend(vec![0u8; data]);
        out
    }

    fn check_bytes(bytes: &[u8]) -> Result<GgufSummary, Problem> {
        check_reader(bytes, bytes.len() as u64)
    }

    #[test]
    fn a_whole_file_passes() {
        let summary = check_bytes(&gguf(4, 16)).unwrap();
        assert_eq!(
            (summary.version, summary.tensors, summary.metadata),
            (3, 1, 1)
        );
    }

    #[test]
    fn truncated_tensor_data_is_found() {
        let err = check_bytes(&gguf(4, 15)).unwrap_err();
        assert!(
            matches!(&err, Problem::Corrupt(reason) if reason.contains("\"w\"'s data ends")),
            "{err:?}"
        );
    }

    #[test]
    fn every_cut_of_the_header_is_an_error_not_a_panic() {
        let whole = gguf(4, 16);
        for cut in 0..whole.len() - 16 {
            assert!(check_bytes(&whole[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn junk_and_other_versions_are_named() {
        assert_eq!(
            check_bytes(b"not a model at all"),
            Err(Problem::NotGguf("not ".into()))
        );
        let mut v9 = gguf(4, 16);
        v9[4] = 9;
        assert_eq!(check_bytes(&v9), Err(Problem::Version(9)));
        let err = Problem::NotGguf("not ".into()).at("/m.gguf").to_string();
        assert!(err.contains("/m.gguf is not a GGUF model file"), "{err}");
    }

    #[test]
    fn huge_counts_are_refused_without_allocating() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        bytes.extend(u64::MAX.to_le_bytes());
        assert!(matches!(check_bytes(&bytes), Err(Problem::Corrupt(_))));
    }
}
