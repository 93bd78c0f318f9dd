//! Triton's `config.pbtxt`: the protobuf text format of `model_config.proto`, read into Kiln's
//! [`ModelConfig`].
//!
//! The text is parsed against the descriptors of `proto/model_config.proto` (which declares every
//! field of Triton's `ModelConfig` with Triton's numbers) and then converted field by field:
//!
//! - honoured: `name`, `platform` / `backend` (`onnxruntime_onnx`, `onnxruntime`, `openvino`; `ensemble`
//!   becomes a pipeline with one `[[step]]` per ensemble step), `max_batch_size`, `input` /
//!   `output`, `version_policy`, `dynamic_batching`, `instance_group` (CPU), `model_warmup`,
//!   `parameters`, `response_cache`, `default_model_filename`, `ensemble_scheduling`;
//! - refused, naming the field: whatever Kiln does not implement (`sequence_batching`, a
//!   decoupled `model_transaction_policy`, `optimization` accelerators, other platforms,
//!   `KIND_GPU` instance groups, reshaped or optional inputs, ...). Nothing is silently ignored.
//!
//! Every error starts with the file as the caller names it; a text that does not parse also
//! names the line and column, and the field when the parser stopped at one.

mod convert;
mod scheduling;
#[cfg(test)]
mod tests;

use crate::inference as pb;
use kiln_core::{Error, ModelConfig, Result};
use miette::Diagnostic;
use prost_reflect::{DescriptorPool, DynamicMessage};
use std::sync::LazyLock;

pub use convert::to_kiln;

/// The descriptors of `model_config.proto`, written by the build script.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(include_bytes!(concat!(env!("OUT_DIR"), "/model_config.fds")).as_ref())
        .expect("the build script writes a valid descriptor set")
});

/// Reads the text of a `config.pbtxt` (named `file` in errors) for the model whose directory is
/// `model_name`: [`parse_text`] then [`to_kiln`].
pub fn read(text: &str, file: &str, model_name: &str) -> Result<ModelConfig> {
    let message = parse_text(text, file)?;
    to_kiln(&message, file, model_name)
}

/// Parses protobuf text format into Triton's `ModelConfig`. A malformed text is an error naming
/// `file`, the line and column, and the field where the parser stopped.
pub fn parse_text(text: &str, file: &str) -> Result<pb::ModelConfig> {
    let descriptor = POOL
        .get_message_by_name("inference.ModelConfig")
        .expect("model_config.proto declares inference.ModelConfig");
    let (listed, inserted) = colon_before_lists(text);
    let dynamic = DynamicMessage::parse_text_format(descriptor, &listed)
        .map_err(|e| Error::invalid(format!("{file}:{}", located(text, &inserted, &e))))?;
    dynamic
        .transcode_to::<pb::ModelConfig>()
        .map_err(|e| Error::invalid(format!("{file}: {e}")))
}

/// Protobuf text format lets a list of messages follow its field name without a colon
/// (`input [ { ... } ]`, as Triton's configurations write it); the parser wants the colon.
/// Returns the text with `:` written where a list follows a field name (over the whitespace
/// before the `[` where there is some, else inserted) and the offsets of the inserted ones.
fn colon_before_lists(text: &str) -> (String, Vec<usize>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Word,
        Colon,
        Other,
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut inserted = Vec::new();
    // the last two tokens outside strings and comments: a `[` after a word that does not
    // follow a `:` (a field name, not a value) starts a list written without its colon
    let (mut last, mut before) = (Token::Other, Token::Other);
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+') {
            out.push(c);
            if !in_word {
                (before, last, in_word) = (last, Token::Word, true);
            }
            continue;
        }
        in_word = false;
        match c {
            '#' => {
                out.push(c);
                while let Some(n) = chars.next_if(|&n| n != '\n') {
                    out.push(n);
                }
            }
            '"' | '\'' => {
                out.push(c);
                while let Some(n) = chars.next() {
                    out.push(n);
                    if n == '\\' {
                        if let Some(escaped) = chars.next() {
                            out.push(escaped);
                        }
                    } else if n == c || n == '\n' {
                        break;
                    }
                }
                (before, last) = (last, Token::Other);
            }
            c if c.is_whitespace() => out.push(c),
            '[' if last == Token::Word && before != Token::Colon => {
                let trimmed = out.trim_end_matches([' ', '\t']).len();
                if trimmed < out.len() {
                    out.replace_range(trimmed..trimmed + 1, ":");
                } else {
                    inserted.push(out.len());
                    out.push(':');
                }
                out.push('[');
                (before, last) = (Token::Colon, Token::Other);
            }
            c => {
                out.push(c);
                let token = if c == ':' { Token::Colon } else { Token::Other };
                (before, last) = (last, token);
            }
        }
    }
    (out, inserted)
}

/// `<line>:<column>: <what went wrong>[ (field '<f>')]`, from the error's position (the end
/// of the text when the input ended early) in the original text.
fn located(text: &str, inserted: &[usize], e: &prost_reflect::text_format::ParseError) -> String {
    let offset = e
        .labels()
        .and_then(|mut l| l.next())
        .map_or(usize::MAX, |l| l.offset());
    let offset = offset
        .saturating_sub(inserted.iter().filter(|&&i| i < offset).count())
        .min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let mut out = format!("{line}:{column}: {e}");
    if let Some(field) = field_before(&before[line_start..]) {
        if !out.contains(&format!("'{field}'")) {
            out.push_str(&format!(" (field '{field}')"));
        }
    }
    out
}

/// The field whose value starts the rest of a line: the last `name:` (or `name {`, `name [`)
/// in `line` before the error.
fn field_before(line: &str) -> Option<&str> {
    let cut = line.rfind([':', '{', '['])?;
    let head = line[..cut].trim_end_matches(|c: char| c == ':' || c.is_whitespace());
    let start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = &head[start..];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name)
}
