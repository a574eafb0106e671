//! Reads `config.pbtxt`: protobuf text format parsed by prost-reflect against our copy of Triton's
//! `ModelConfig` schema, then checked for what this server needs. Triton's own documentation writes
//! lists of messages without the optional colon (`input [ { ... } ]`), which the text format allows
//! but prost-reflect's parser rejects; `normalize_list_colons` inserts exactly those colons, with a
//! scan that knows strings and comments, so every valid Triton configuration parses.

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::inference::ModelConfig;

/// The file name Triton gives a model's configuration.
pub const CONFIG_FILE: &str = "config.pbtxt";

/// The model file name used when the configuration names none.
pub const DEFAULT_MODEL_FILENAME: &str = "model.onnx";

static MODEL_CONFIG: LazyLock<MessageDescriptor> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .unwrap_or_else(|e| panic!("embedded descriptor set is invalid: {e}"));
    pool.get_message_by_name("inference.ModelConfig")
        .unwrap_or_else(|| panic!("embedded descriptor set lacks inference.ModelConfig"))
});

/// The descriptor of `inference.ModelConfig`, for other encodings of the same message.
pub fn model_config_descriptor() -> MessageDescriptor {
    MODEL_CONFIG.clone()
}

/// Parses the text of a `config.pbtxt`. The error is a reason fit for RepositoryIndex.
pub fn parse(text: &str) -> Result<ModelConfig, String> {
    let normalized = normalize_list_colons(text);
    let message = DynamicMessage::parse_text_format(MODEL_CONFIG.clone(), &normalized)
        .map_err(|e| format!("{CONFIG_FILE}: {e}"))?;
    message
        .transcode_to::<ModelConfig>()
        .map_err(|e| format!("{CONFIG_FILE}: {e}"))
}

/// Renders a configuration in protobuf text format (for logs and `repo check`).
pub fn to_text(config: &ModelConfig) -> String {
    let mut message = DynamicMessage::new(MODEL_CONFIG.clone());
    match message.transcode_from(config) {
        Ok(()) => message.to_text_format(),
        Err(e) => format!("<unprintable configuration: {e}>"),
    }
}

/// Inserts the optional `:` between a field name and a `[` list, leaving strings, comments and
/// value positions untouched.
pub fn normalize_list_colons(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    // `[` lists we are inside of: identifiers there are values (enum names), not field names.
    let mut list_depth = 0usize;
    // The last significant character outside strings and comments.
    let mut previous = b'\n';
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' | b'\'' => {
                let end = string_end(bytes, i);
                out.push_str(&text[i..end]);
                previous = c;
                i = end;
            }
            b'#' => {
                let end = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                out.push_str(&text[i..end]);
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let end = i + text[i..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '.'))
                    .unwrap_or(text.len() - i);
                out.push_str(&text[i..end]);
                let is_field_name = list_depth == 0 && previous != b':';
                if is_field_name && next_significant(bytes, end) == Some(b'[') {
                    out.push(':');
                }
                previous = b'a';
                i = end;
            }
            _ => {
                match c {
                    b'[' => list_depth += 1,
                    b']' => list_depth = list_depth.saturating_sub(1),
                    // A message inside a list starts a fresh field scope.
                    b'{' | b'<' => {
                        out.push_str(&normalize_scope(text, &mut i));
                        previous = b'}';
                        continue;
                    }
                    _ => {}
                }
                out.push(c as char);
                if !c.is_ascii_whitespace() {
                    previous = c;
                }
                i += 1;
            }
        }
    }
    out
}

/// Normalizes one `{ ... }` (or `< ... >`) message body starting at `*i`, advancing past its end.
fn normalize_scope(text: &str, i: &mut usize) -> String {
    let bytes = text.as_bytes();
    let close = if bytes[*i] == b'{' { b'}' } else { b'>' };
    let start = *i + 1;
    let end = matching_close(bytes, start, bytes[*i], close);
    let inner = normalize_list_colons(&text[start..end]);
    let mut body = String::with_capacity(inner.len() + 2);
    body.push(bytes[*i] as char);
    body.push_str(&inner);
    if end < bytes.len() {
        body.push(close as char);
    }
    *i = (end + 1).min(bytes.len());
    body
}

/// Index of the bracket closing the scope opened just before `from`, skipping strings and comments.
fn matching_close(bytes: &[u8], from: usize, open: u8, close: u8) -> usize {
    let mut depth = 1usize;
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => {
                i = string_end(bytes, i);
                continue;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// Index just past the string literal that starts at `start` (honouring backslash escapes).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            b'\n' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The next character that is not whitespace or inside a comment.
fn next_significant(bytes: &[u8], mut i: usize) -> Option<u8> {
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_whitespace() => i += 1,
            c => return Some(c),
        }
    }
    None
}

#[cfg(test)]
mod tests;
