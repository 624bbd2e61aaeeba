//! Our LSP framing in front of tower-lsp-server's: every byte an editor sends passes a
//! decoder with limits before the server sees it.
//!
//! tower-lsp-server's own decoder buffers a header until it ends and a body until
//! `Content-Length` bytes arrived, with no limit, and ends the whole session at the
//! first message it cannot parse. This layer caps the header and the message size
//! (answering an error and closing at once past them, since the stream cannot be
//! resynchronised without reading what the peer claims to send), and answers a
//! malformed body whose framing is intact (bad UTF-8, invalid JSON, JSON that is no
//! JSON-RPC message) with a JSON-RPC error while the session goes on. The server only
//! ever receives well-formed frames, re-framed with a plain `Content-Length` header.
//!
//! The server's output passes back through [`write_frames`], which interleaves our own
//! error answers between whole frames.

use bytes::{Buf, Bytes, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tower_lsp_server::jsonrpc;

use crate::config::LimitsConfig;

/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;

/// Caps on what one message may take before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// The whole header block, up to and including its blank line.
    pub max_header_bytes: usize,
    /// One message body.
    pub max_message_bytes: usize,
    /// The first message's body: it is `initialize`, a few kilobytes, and it comes
    /// before the session token is checked, so an anonymous peer gets little memory.
    pub max_first_message_bytes: usize,
}

impl FrameLimits {
    /// No limits: for decoding our own server's output.
    pub const UNLIMITED: FrameLimits = FrameLimits {
        max_header_bytes: usize::MAX,
        max_message_bytes: usize::MAX,
        max_first_message_bytes: usize::MAX,
    };

    /// The limits the configuration sets. The first message (`initialize`, read
    /// before the session token is checked) gets at most 1 MiB.
    pub fn from_config(limits: &LimitsConfig) -> FrameLimits {
        FrameLimits {
            max_header_bytes: limits.max_header_bytes,
            max_message_bytes: limits.max_message_bytes,
            max_first_message_bytes: limits.max_message_bytes.min(1024 * 1024),
        }
    }
}

/// A message whose framing was intact but whose body is unusable; the session goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the message is empty")]
    Empty,
    #[error("the message is not valid UTF-8 (at byte {valid_up_to})")]
    Utf8 { valid_up_to: usize },
    #[error("the message is not valid JSON: {0}")]
    Json(String),
    #[error("the message is JSON but no JSON-RPC request, notification or response (expected an object with \"jsonrpc\": \"2.0\" and a \"method\", or an \"id\" with a \"result\" or \"error\")")]
    NotJsonRpc { id: Option<Value> },
}

impl BodyError {
    /// The JSON-RPC error answered for it.
    pub fn response(&self) -> Value {
        let (code, id) = match self {
            BodyError::NotJsonRpc { id } => (INVALID_REQUEST, id.clone().unwrap_or(Value::Null)),
            _ => (PARSE_ERROR, Value::Null),
        };
        json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": code, "message": format!("lsp-edge: {self}; the session goes on")},
        })
    }
}

/// A stream that cannot go on: the error is answered, then the connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the message header is longer than the limit of {limit} bytes (starts with {start})")]
    HeaderTooLong { limit: usize, start: String },
    #[error("the message header is malformed: {reason} (starts with {start})")]
    BadHeader { reason: String, start: String },
    #[error("the message announces {length} bytes, more than the limit of {limit} bytes")]
    MessageTooLarge { length: u64, limit: usize },
}

impl FrameError {
    /// The JSON-RPC error answered before closing.
    pub fn response(&self) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {
                "code": PARSE_ERROR,
                "message": format!("lsp-edge: {self}; closing the connection"),
            },
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A well-formed JSON-RPC message body.
    Message(Bytes),
    /// A frame whose body is unusable.
    Malformed(BodyError),
}

/// An incremental decoder of `Content-Length` framed messages, with limits.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    /// The body length of the frame being read, once its header is complete.
    body_length: Option<usize>,
    messages: u64,
    validate: bool,
}

impl FrameDecoder {
    /// A decoder that checks each body is a JSON-RPC message.
    pub fn new(limits: FrameLimits) -> FrameDecoder {
        FrameDecoder {
            limits,
            body_length: None,
            messages: 0,
            validate: true,
        }
    }

    /// A decoder that only splits frames (for trusted output).
    pub fn splitting() -> FrameDecoder {
        FrameDecoder {
            validate: false,
            ..FrameDecoder::new(FrameLimits::UNLIMITED)
        }
    }

    fn body_limit(&self) -> usize {
        if self.messages == 0 {
            self.limits
                .max_first_message_bytes
                .min(self.limits.max_message_bytes)
        } else {
            self.limits.max_message_bytes
        }
    }

    /// Takes the next frame out of `buffer`: `Ok(None)` until one is complete. Never
    /// needs more than the header limit plus the message limit in `buffer`.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        let length = match self.body_length {
            Some(length) => length,
            None => {
                let Some((header_len, length)) = self.parse_header(buffer)? else {
                    return Ok(None);
                };
                buffer.advance(header_len);
                self.body_length = Some(length);
                length
            }
        };
        if buffer.len() < length {
            // Room for exactly this body, so a slow peer never makes us grow twice.
            buffer.reserve(length - buffer.len());
            return Ok(None);
        }
        let body = buffer.split_to(length).freeze();
        self.body_length = None;
        self.messages += 1;
        if !self.validate {
            return Ok(Some(Decoded::Message(body)));
        }
        Ok(Some(match validate(&body) {
            Ok(()) => Decoded::Message(body),
            Err(err) => Decoded::Malformed(err),
        }))
    }

    /// Parses a complete header block at the start of `buffer`: its length and the
    /// body length it announces.
    fn parse_header(&self, buffer: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
        let mut start = 0;
        let mut length = None;
        loop {
            let Some(newline) = buffer[start..].iter().position(|&b| b == b'\n') else {
                if buffer.len() > self.limits.max_header_bytes {
                    return Err(FrameError::HeaderTooLong {
                        limit: self.limits.max_header_bytes,
                        start: shorten_bytes(buffer, 64),
                    });
                }
                return Ok(None);
            };
            let end = start + newline + 1;
            if end > self.limits.max_header_bytes {
                return Err(FrameError::HeaderTooLong {
                    limit: self.limits.max_header_bytes,
                    start: shorten_bytes(buffer, 64),
                });
            }
            let line = &buffer[start..start + newline];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            start = end;
            if line.is_empty() {
                let Some(length) = length else {
                    return Err(bad_header("no Content-Length", buffer));
                };
                return Ok(Some((end, length)));
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(bad_header("a header line without a colon", buffer));
            };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if !name.eq_ignore_ascii_case(b"content-length") {
                // Content-Type and anything else: LSP has only one charset, UTF-8.
                continue;
            }
            let value = std::str::from_utf8(value)
                .ok()
                .map(str::trim)
                .and_then(|value| value.parse::<u64>().ok())
                .ok_or_else(|| bad_header("Content-Length is no number", buffer))?;
            let limit = self.body_limit();
            if value > limit as u64 {
                return Err(FrameError::MessageTooLarge {
                    length: value,
                    limit,
                });
            }
            length = Some(value as usize);
        }
    }
}

fn bad_header(reason: &str, buffer: &[u8]) -> FrameError {
    FrameError::BadHeader {
        reason: reason.into(),
        start: shorten_bytes(buffer, 64),
    }
}

/// Checks that a body is one JSON-RPC message tower-lsp-server will accept.
fn validate(body: &[u8]) -> Result<(), BodyError> {
    if body.is_empty() {
        return Err(BodyError::Empty);
    }
    let text = std::str::from_utf8(body).map_err(|err| BodyError::Utf8 {
        valid_up_to: err.valid_up_to(),
    })?;
    if serde_json::from_str::<jsonrpc::Request>(text).is_ok()
        || serde_json::from_str::<jsonrpc::Response>(text).is_ok()
    {
        return Ok(());
    }
    match serde_json::from_str::<Value>(text) {
        Err(err) => Err(BodyError::Json(err.to_string())),
        Ok(value) => {
            // Answer with the request's id when it has a usable one.
            let id = value
                .get("id")
                .filter(|id| id.is_number() || id.is_string())
                .cloned();
            Err(BodyError::NotJsonRpc { id })
        }
    }
}

/// Untrusted bytes for a log line: at most `max` characters, escaped, with the total
/// length when cut.
pub fn shorten_bytes(bytes: &[u8], max: usize) -> String {
    shorten(
        &String::from_utf8_lossy(&bytes[..bytes.len().min(max * 4)]),
        max,
    ) + &if bytes.len() > max {
        format!(" ({} bytes)", bytes.len())
    } else {
        String::new()
    }
}

/// Untrusted text for a log line or an error message: at most `max` characters,
/// control characters escaped, so one line stays one short line.
pub fn shorten(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(max) {
        out.extend(c.escape_debug());
    }
    if chars.next().is_some() {
        out.push('…');
    }
    format!("\"{out}\"")
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out
}

/// What the reader hands the writer besides the server's own output.
#[derive(Debug)]
pub enum Outgoing {
    /// An error answer; the session goes on.
    Answer(Value),
    /// An error answer, then the connection closes.
    AnswerAndClose(Value),
}

/// Why [`read_frames`] stopped.
#[derive(Debug)]
pub enum ReadEnd {
    /// The peer closed the connection, or it broke.
    Disconnected(Option<std::io::Error>),
    /// The server stopped reading.
    ServerGone,
    /// A frame was refused for good; the answer has been sent.
    Refused,
}

/// How long a refused connection is read (and the bytes dropped) before it closes.
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads frames from `input`, passes well-formed ones to `server`, and answers the
/// others through `answers`. Returns when the peer disconnects; after refusing a
/// frame for good it hands the writer its answer and waits (the writer closes).
pub async fn read_frames<R, W>(
    mut input: R,
    mut server: W,
    limits: FrameLimits,
    answers: mpsc::Sender<Outgoing>,
) -> ReadEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = FrameDecoder::new(limits);
    let mut buffer = BytesMut::with_capacity(16 * 1024);
    loop {
        loop {
            match decoder.decode(&mut buffer) {
                Ok(None) => break,
                Ok(Some(Decoded::Message(body))) => {
                    if server.write_all(&frame(&body)).await.is_err() {
                        return ReadEnd::ServerGone;
                    }
                }
                Ok(Some(Decoded::Malformed(err))) => {
                    tracing::warn!("answered a malformed LSP message: {err}");
                    if answers
                        .send(Outgoing::Answer(err.response()))
                        .await
                        .is_err()
                    {
                        return ReadEnd::ServerGone;
                    }
                }
                Err(err) => {
                    tracing::warn!("refused an LSP frame, closing the session: {err}");
                    let _ = answers.send(Outgoing::AnswerAndClose(err.response())).await;
                    // Closing with unread bytes would reset the connection, and the
                    // peer could lose the answer: read and drop for a moment first.
                    let mut sink = vec![0u8; 64 * 1024];
                    let discard =
                        async { while matches!(input.read(&mut sink).await, Ok(n) if n > 0) {} };
                    let _ = tokio::time::timeout(REFUSAL_LINGER, discard).await;
                    return ReadEnd::Refused;
                }
            }
        }
        // Read at most what the decoder may still accept, in steps.
        if buffer.capacity() - buffer.len() < 8 * 1024 {
            buffer.reserve(16 * 1024);
        }
        match input.read_buf(&mut buffer).await {
            Ok(0) => return ReadEnd::Disconnected(None),
            Ok(_) => {}
            Err(err) => return ReadEnd::Disconnected(Some(err)),
        }
    }
}

/// Forwards the server's output frames to `output`, with our answers between whole
/// frames. Returns when the server's output ends or `output` breaks; after a closing
/// answer it shuts `output` down and waits for the session to end.
pub async fn write_frames<R, W>(mut server: R, mut output: W, mut answers: mpsc::Receiver<Outgoing>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = FrameDecoder::splitting();
    let mut buffer = BytesMut::with_capacity(16 * 1024);
    let mut answers_open = true;
    loop {
        while let Ok(Some(Decoded::Message(body))) = decoder.decode(&mut buffer) {
            if output.write_all(&frame(&body)).await.is_err() {
                return;
            }
        }
        if output.flush().await.is_err() {
            return;
        }
        if buffer.capacity() - buffer.len() < 8 * 1024 {
            buffer.reserve(16 * 1024);
        }
        tokio::select! {
            read = server.read_buf(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            answer = answers.recv(), if answers_open => match answer {
                None => answers_open = false,
                Some(Outgoing::Answer(value)) => {
                    if output.write_all(&frame(value.to_string().as_bytes())).await.is_err() {
                        return;
                    }
                }
                Some(Outgoing::AnswerAndClose(value)) => {
                    let _ = output.write_all(&frame(value.to_string().as_bytes())).await;
                    let _ = output.flush().await;
                    let _ = output.shutdown().await;
                    // The reader ends the session once it has drained the input.
                    return std::future::pending().await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_header_bytes: 256,
        max_message_bytes: 1024,
        max_first_message_bytes: 512,
    };

    fn decode_all(input: &[u8]) -> (Vec<Decoded>, Option<FrameError>) {
        let mut decoder = FrameDecoder::new(LIMITS);
        let mut buffer = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(decoded)) => out.push(decoded),
                Ok(None) => return (out, None),
                Err(err) => return (out, Some(err)),
            }
        }
    }

    #[test]
    fn well_formed_frames_pass_and_malformed_bodies_are_answered() {
        let ok = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        let mut input = frame(ok);
        input.extend(frame(b"{not json"));
        input.extend(frame(b"\xff\xfe"));
        input.extend(frame(br#"{"id":7}"#));
        input.extend(b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n");
        input.extend(frame(ok));
        let (decoded, err) = decode_all(&input);
        assert_eq!(err, None);
        assert_eq!(decoded.len(), 5, "{decoded:?}");
        assert_eq!(decoded[0], Decoded::Message(Bytes::from_static(ok)));
        assert!(matches!(
            &decoded[1],
            Decoded::Malformed(BodyError::Json(_))
        ));
        assert!(matches!(
            &decoded[2],
            Decoded::Malformed(BodyError::Utf8 { .. })
        ));
        let Decoded::Malformed(not_rpc) = &decoded[3] else {
            panic!("{decoded:?}")
        };
        assert_eq!(not_rpc.response()["id"], 7);
        assert_eq!(not_rpc.response()["error"]["code"], INVALID_REQUEST);
        assert_eq!(decoded[4], Decoded::Message(Bytes::from_static(ok)));
    }

    #[test]
    fn a_header_without_end_is_refused_at_the_limit() {
        let (_, err) = decode_all(&[b'a'; 300]);
        assert!(
            matches!(err, Some(FrameError::HeaderTooLong { limit: 256, .. })),
            "{err:?}"
        );
        // Below the limit it waits for more.
        let (decoded, err) = decode_all(&[b'a'; 200]);
        assert!(decoded.is_empty() && err.is_none());
    }

    #[test]
    fn a_huge_content_length_is_refused_before_reading_the_body() {
        let (_, err) = decode_all(b"Content-Length: 1000000000000\r\n\r\n{");
        assert!(
            matches!(
                err,
                Some(FrameError::MessageTooLarge {
                    length: 1_000_000_000_000,
                    limit: 512
                })
            ),
            "{err:?}"
        );
        let message = err
            .map(|err| err.response().to_string())
            .unwrap_or_default();
        assert!(message.contains("limit of 512 bytes"), "{message}");
    }

    #[test]
    fn the_first_message_has_a_smaller_limit() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","method":"x","params":"{}"}}"#,
            "a".repeat(600)
        );
        let (_, err) = decode_all(&frame(body.as_bytes()));
        assert!(matches!(
            err,
            Some(FrameError::MessageTooLarge { limit: 512, .. })
        ));
        let small = br#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#;
        let mut input = frame(small);
        input.extend(frame(body.as_bytes()));
        let (decoded, err) = decode_all(&input);
        assert_eq!(err, None);
        assert_eq!(decoded.len(), 2);
    }

    #[test]
    fn bad_headers_are_refused_with_a_short_quote() {
        let (_, err) = decode_all(b"Content-Length: lots\r\n\r\n");
        assert!(matches!(err, Some(FrameError::BadHeader { .. })), "{err:?}");
        let (_, err) = decode_all(b"\r\n\r\n");
        assert!(matches!(err, Some(FrameError::BadHeader { .. })), "{err:?}");
        let junk = [b'x'; 1000];
        let (_, err) = decode_all(&junk);
        let message = err.map(|err| err.to_string()).unwrap_or_default();
        assert!(message.len() < 200, "{message}");
    }

    fn json_message() -> impl Strategy<Value = Vec<u8>> {
        ("[a-zA-Z/$]{0,24}", any::<i32>(), "\\PC{0,40}").prop_map(|(method, id, text)| {
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {"text": text}})
                .to_string()
                .into_bytes()
        })
    }

    /// Feeds `input` to a decoder in pieces of the given sizes (cycled), collecting
    /// every frame until the end or the first fatal error.
    fn feed(input: &[u8], sizes: &[usize]) -> (Vec<Decoded>, Option<FrameError>, usize) {
        let mut decoder = FrameDecoder::new(LIMITS);
        let mut buffer = BytesMut::new();
        let mut out = Vec::new();
        let mut most_buffered = 0;
        let mut rest = input;
        let mut size = sizes.iter().cycle();
        while !rest.is_empty() {
            let take = (*size.next().unwrap_or(&1)).clamp(1, rest.len());
            buffer.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            loop {
                match decoder.decode(&mut buffer) {
                    Ok(Some(decoded)) => out.push(decoded),
                    Ok(None) => break,
                    Err(err) => return (out, Some(err), most_buffered),
                }
            }
            most_buffered = most_buffered.max(buffer.len());
        }
        (out, None, most_buffered)
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(256))]

        #[test]
        fn random_bytes_never_panic_and_never_pile_up(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
            sizes in prop::collection::vec(1usize..300, 1..8),
        ) {
            let (_, _, most_buffered) = feed(&bytes, &sizes);
            // Never more than a header and the largest body waiting, plus one read.
            prop_assert!(most_buffered <= LIMITS.max_header_bytes + LIMITS.max_message_bytes + 300);
        }

        #[test]
        fn messages_split_anywhere_decode_to_themselves(
            messages in prop::collection::vec(json_message(), 1..8),
            sizes in prop::collection::vec(1usize..200, 1..8),
        ) {
            let mut input = Vec::new();
            for message in &messages {
                input.extend(frame(message));
            }
            let (decoded, err, _) = feed(&input, &sizes);
            prop_assert_eq!(err, None);
            let expected: Vec<Decoded> = messages
                .into_iter()
                .map(|m| Decoded::Message(Bytes::from(m)))
                .collect();
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn a_bad_body_is_answered_and_the_next_message_still_arrives(
            body in prop::collection::vec(any::<u8>(), 1..400),
            sizes in prop::collection::vec(1usize..200, 1..8),
        ) {
            let good = br#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#;
            let mut input = frame(good);
            input.extend(frame(&body));
            input.extend(frame(good));
            let (decoded, err, _) = feed(&input, &sizes);
            prop_assert_eq!(err, None);
            prop_assert_eq!(decoded.len(), 3);
            prop_assert_eq!(&decoded[2], &Decoded::Message(Bytes::from_static(good)));
            if let Decoded::Malformed(err) = &decoded[1] {
                // Every answer is valid JSON-RPC and short.
                let answer = err.response().to_string();
                prop_assert!(answer.len() < 600, "{}", answer);
            }
        }
    }

    #[test]
    fn shorten_cuts_and_escapes() {
        assert_eq!(shorten("a\nb", 10), "\"a\\nb\"");
        assert_eq!(shorten("abcdef", 3), "\"abc…\"");
        assert_eq!(shorten_bytes(&[b'x'; 100], 4), "\"xxxx…\" (100 bytes)");
    }
}
