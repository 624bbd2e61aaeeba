//! The token layout of a request: context chunks first, then the code before the
//! cursor, then (fill-in-the-middle) the code after it.
//!
//! The order is chosen for the KV cache: what changes least comes first, so a keystroke
//! at the cursor leaves every token before it in place and only the tail is evaluated
//! again. Text from the client is tokenized with special-token parsing off, so a file
//! that contains `<|endoftext|>` cannot forge control tokens.

use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::vocab::LlamaVocab;

use super::EngineError;

/// A context chunk placed before the prompt.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Extra {
    pub label: String,
    pub text: String,
}

/// The parts of a prompt, as the client sent them.
#[derive(Debug, Clone, Default)]
pub struct PromptParts {
    pub prompt: String,
    /// Set for a fill-in-the-middle request.
    pub suffix: Option<String>,
    pub extra: Vec<Extra>,
    /// Wrap the prompt in the model's chat template as the user's turn, with this
    /// system message (if any), and let the model answer as the assistant.
    pub chat: Option<ChatRequest>,
    /// Where the suffix goes in a fill-in-the-middle prompt.
    pub fim_order: FimOrder,
}

/// The order of a fill-in-the-middle prompt's parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FimOrder {
    /// `<PRE>prefix<SUF>suffix<MID>`: the order most FIM models were trained on.
    #[default]
    Psm,
    /// `<SUF>suffix<PRE>prefix<MID>`: the text before the cursor comes last, so typing
    /// there (an Enter included) changes only the end of the prompt, and the KV cache
    /// keeps everything before it (llama.cpp's `--spm-infill`).
    Spm,
}

#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub system: Option<String>,
}

/// A model's chat template rendered around placeholders: the template's own text
/// (with its special tokens) and the places where the system and user text go.
#[derive(Debug, Clone)]
pub struct ChatFrame {
    /// Template text before the system message (or before the user message if none).
    pub head: String,
    /// Template text between the system and the user message (empty without system).
    pub middle: String,
    /// Template text after the user message, ending with the assistant's opening.
    pub tail: String,
}

pub const SYSTEM_PLACEHOLDER: &str = "\u{1}CEREBRUM_SYSTEM\u{1}";
pub const USER_PLACEHOLDER: &str = "\u{1}CEREBRUM_USER\u{1}";

impl ChatFrame {
    /// Splits a template rendered with the placeholders.
    pub fn from_rendered(rendered: &str, with_system: bool) -> Option<ChatFrame> {
        let (head, rest) = if with_system {
            let (head, rest) = rendered.split_once(SYSTEM_PLACEHOLDER)?;
            (head, rest)
        } else {
            ("", rendered)
        };
        let (before_user, tail) = rest.split_once(USER_PLACEHOLDER)?;
        Some(if with_system {
            ChatFrame {
                head: head.into(),
                middle: before_user.into(),
                tail: tail.into(),
            }
        } else {
            ChatFrame {
                head: before_user.into(),
                middle: String::new(),
                tail: tail.into(),
            }
        })
    }
}

/// The special tokens of a model's fill-in-the-middle format, if it has one.
#[derive(Debug, Clone, Copy)]
pub struct FimTokens {
    pub prefix: LlamaToken,
    pub suffix: LlamaToken,
    pub middle: LlamaToken,
    /// Separates files in the repository-level format (`<|file_sep|>`), if present.
    pub file_sep: Option<LlamaToken>,
}

const NULL_TOKEN: LlamaToken = LlamaToken(-1);

impl FimTokens {
    pub fn of(vocab: &LlamaVocab<'_>) -> Option<FimTokens> {
        let (prefix, suffix, middle) = (vocab.fim_pre(), vocab.fim_suf(), vocab.fim_mid());
        if [prefix, suffix, middle].contains(&NULL_TOKEN) {
            return None;
        }
        let sep = vocab.fim_sep();
        Some(FimTokens {
            prefix,
            suffix,
            middle,
            file_sep: (sep != NULL_TOKEN).then_some(sep),
        })
    }
}

/// Something that turns text into tokens (the model's vocabulary; a stub in tests).
pub trait Tokenize {
    /// Client text: special-token syntax stays plain text.
    fn tokenize(&self, text: &str) -> Vec<LlamaToken>;
    /// Template text: `<|im_start|>` and friends become their special tokens.
    fn tokenize_special(&self, text: &str) -> Vec<LlamaToken>;
    fn bos(&self) -> Option<LlamaToken>;
}

impl Tokenize for LlamaVocab<'_> {
    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        if text.is_empty() {
            return Vec::new();
        }
        LlamaVocab::tokenize(self, text.as_bytes(), false, false)
    }

    fn tokenize_special(&self, text: &str) -> Vec<LlamaToken> {
        if text.is_empty() {
            return Vec::new();
        }
        LlamaVocab::tokenize(self, text.as_bytes(), false, true)
    }

    fn bos(&self) -> Option<LlamaToken> {
        self.should_add_bos().then(|| LlamaVocab::bos(self))
    }
}

/// Builds the token sequence for `parts`. A suffix needs FIM tokens: a model without
/// them cannot do fill-in-the-middle, and the client is told so.
pub fn layout(
    vocab: &impl Tokenize,
    fim: Option<FimTokens>,
    chat: Option<&ChatFrame>,
    model_name: &str,
    parts: &PromptParts,
) -> Result<Vec<LlamaToken>, EngineError> {
    let mut tokens = Vec::with_capacity(parts.prompt.len() / 3 + 16);
    if let Some(request) = &parts.chat {
        let Some(frame) = chat else {
            return Err(EngineError::Invalid(format!(
                "chat: model {model_name:?} has no chat template"
            )));
        };
        if parts.suffix.is_some() {
            return Err(EngineError::Invalid(
                "chat: cannot be combined with `suffix` (fill-in-the-middle)".into(),
            ));
        }
        // Context chunks go into the user's turn, before the request itself.
        let mut user = String::new();
        for chunk in &parts.extra {
            user.push_str(&format!("{}:\n```\n{}\n```\n\n", chunk.label, chunk.text));
        }
        user.push_str(&parts.prompt);
        tokens.extend(vocab.bos());
        tokens.extend(vocab.tokenize_special(&frame.head));
        if let Some(system) = &request.system {
            tokens.extend(vocab.tokenize(system));
        }
        tokens.extend(vocab.tokenize_special(&frame.middle));
        tokens.extend(vocab.tokenize(&user));
        tokens.extend(vocab.tokenize_special(&frame.tail));
        return Ok(tokens);
    }
    tokens.extend(vocab.bos());
    let file_sep = fim.and_then(|f| f.file_sep);
    for chunk in &parts.extra {
        match file_sep {
            Some(sep) => {
                tokens.push(sep);
                tokens.extend(vocab.tokenize(&format!("{}\n{}\n", chunk.label, chunk.text)));
            }
            None => tokens.extend(vocab.tokenize(&format!("{}\n\n", chunk.text))),
        }
    }
    match &parts.suffix {
        None => {
            if let (Some(sep), false) = (file_sep, parts.extra.is_empty()) {
                // Close the last context file before the text to continue.
                tokens.push(sep);
            }
            tokens.extend(vocab.tokenize(&parts.prompt));
        }
        Some(suffix) => {
            let Some(fim) = fim else {
                return Err(EngineError::Invalid(format!(
                    "model {model_name:?} has no fill-in-the-middle tokens, so `suffix` cannot be used with it; send the prompt alone or use a model with FIM (e.g. Qwen2.5-Coder)"
                )));
            };
            if let (Some(sep), false) = (fim.file_sep, parts.extra.is_empty()) {
                tokens.push(sep);
            }
            let prefix = vocab.tokenize(&parts.prompt);
            let suffix = vocab.tokenize(suffix);
            match parts.fim_order {
                FimOrder::Psm => {
                    tokens.push(fim.prefix);
                    tokens.extend(prefix);
                    tokens.push(fim.suffix);
                    tokens.extend(suffix);
                }
                FimOrder::Spm => {
                    tokens.push(fim.suffix);
                    tokens.extend(suffix);
                    tokens.push(fim.prefix);
                    tokens.extend(prefix);
                }
            }
            tokens.push(fim.middle);
        }
    }
    if tokens.is_empty() {
        return Err(EngineError::Invalid("prompt: must not be empty".into()));
    }
    Ok(tokens)
}

/// Length of the common prefix of the cached tokens and the new prompt.
pub fn common_prefix(cached: &[LlamaToken], prompt: &[LlamaToken]) -> usize {
    cached
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per byte, offset so that they never collide with the special ones.
    struct Bytes;
    impl Tokenize for Bytes {
        fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
            text.bytes().map(|b| LlamaToken(1000 + b as i32)).collect()
        }
        fn tokenize_special(&self, text: &str) -> Vec<LlamaToken> {
            // Template text renders in capitals so tests can tell it apart.
            self.tokenize(&text.to_uppercase())
        }
        fn bos(&self) -> Option<LlamaToken> {
            None
        }
    }

    const FIM: FimTokens = FimTokens {
        prefix: LlamaToken(1),
        suffix: LlamaToken(2),
        middle: LlamaToken(3),
        file_sep: Some(LlamaToken(4)),
    };

    fn render(tokens: &[LlamaToken]) -> String {
        tokens
            .iter()
            .map(|t| match t.0 {
                1 => "<PRE>".to_string(),
                2 => "<SUF>".to_string(),
                3 => "<MID>".to_string(),
                4 => "<SEP>".to_string(),
                n => ((n - 1000) as u8 as char).to_string(),
            })
            .collect()
    }

    fn parts(prompt: &str, suffix: Option<&str>) -> PromptParts {
        PromptParts {
            prompt: prompt.into(),
            suffix: suffix.map(Into::into),
            extra: vec![Extra {
                label: "a.py::f".into(),
                text: "def f(): pass".into(),
            }],
            chat: None,
            fim_order: FimOrder::Psm,
        }
    }

    #[test]
    fn fim_layout_puts_context_first_then_prefix_suffix_middle() {
        let t = layout(&Bytes, Some(FIM), None, "m", &parts("x = ", Some("\ny"))).unwrap();
        assert_eq!(
            render(&t),
            "<SEP>a.py::f\ndef f(): pass\n<SEP><PRE>x = <SUF>\ny<MID>"
        );
    }

    #[test]
    fn spm_puts_the_suffix_before_the_prefix_so_an_enter_keeps_it_cached() {
        let spm = |prompt: &str, suffix: &str| {
            let parts = PromptParts {
                fim_order: FimOrder::Spm,
                ..parts(prompt, Some(suffix))
            };
            layout(&Bytes, Some(FIM), None, "m", &parts).unwrap()
        };
        let before = spm("x = 1", "\ny");
        assert_eq!(
            render(&before),
            "<SEP>a.py::f\ndef f(): pass\n<SEP><SUF>\ny<PRE>x = 1<MID>"
        );
        // Enter at the cursor: the suffix (counted from the cursor) is unchanged, so
        // only the prefix's end and <MID> differ.
        let after = spm("x = 1\n", "\ny");
        let shared = common_prefix(&before, &after);
        assert_eq!(
            render(&before[..shared]),
            "<SEP>a.py::f\ndef f(): pass\n<SEP><SUF>\ny<PRE>x = 1"
        );
    }

    #[test]
    fn a_keystroke_at_the_cursor_keeps_everything_before_it() {
        let a = layout(&Bytes, Some(FIM), None, "m", &parts("def g(x", Some(")\n"))).unwrap();
        let b = layout(
            &Bytes,
            Some(FIM),
            None,
            "m",
            &parts("def g(xs", Some(")\n")),
        )
        .unwrap();
        let shared = common_prefix(&a, &b);
        assert_eq!(
            render(&a[..shared]),
            "<SEP>a.py::f\ndef f(): pass\n<SEP><PRE>def g(x"
        );
    }

    #[test]
    fn suffix_without_fim_tokens_is_a_clear_error() {
        let err = layout(&Bytes, None, None, "smol", &parts("x", Some("y"))).unwrap_err();
        assert_eq!(
            crate::error::ApiError::from(err.clone()).kind(),
            "invalid_request_error"
        );
        assert!(err.to_string().contains("fill-in-the-middle"), "{err}");
    }

    #[test]
    fn plain_prompt_without_fim_keeps_context_as_text() {
        let t = layout(&Bytes, None, None, "m", &parts("print(", None)).unwrap();
        assert_eq!(render(&t), "def f(): pass\n\nprint(");
    }

    #[test]
    fn chat_wraps_context_and_prompt_in_the_template() {
        let rendered =
            format!("<s>sys:{SYSTEM_PLACEHOLDER}<e><s>user:{USER_PLACEHOLDER}<e><s>assistant:");
        let frame = ChatFrame::from_rendered(&rendered, true).unwrap();
        let mut p = parts("make it async", None);
        p.chat = Some(ChatRequest {
            system: Some("be brief".into()),
        });
        let t = layout(&Bytes, None, Some(&frame), "m", &p).unwrap();
        assert_eq!(
            render(&t),
            "<S>SYS:be brief<E><S>USER:a.py::f:\n```\ndef f(): pass\n```\n\nmake it async<E><S>ASSISTANT:"
        );
        assert!(layout(&Bytes, None, None, "m", &p)
            .unwrap_err()
            .to_string()
            .contains("chat template"));
        p.suffix = Some("x".into());
        assert!(layout(&Bytes, None, Some(&frame), "m", &p).is_err());
    }

    #[test]
    fn empty_prompt_is_refused() {
        let p = PromptParts::default();
        assert!(layout(&Bytes, None, None, "m", &p).is_err());
    }
}
