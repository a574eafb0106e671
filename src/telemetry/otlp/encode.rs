//! OTLP's protobuf wire format for finished spans, written straight from the SDK's `SpanData`
//! (field numbers from `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`).
//! Each span is encoded once, into bytes that an export request carries as they are; no
//! intermediate message structs are built. Nested messages are written in place and their
//! length prefix inserted once their size is known (spans are a few hundred bytes, so the
//! shift is a short copy).

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the span context's remote flag is known (always, here), and is set.
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

pub(crate) fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

pub(crate) fn varint_len(value: u64) -> usize {
    // 1 byte per 7 significant bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

/// The size of a length-delimited field `field` holding `len` bytes.
pub(crate) fn field_len(field: u32, len: usize) -> usize {
    varint_len(u64::from(field << 3 | LEN)) + varint_len(len as u64) + len
}

/// Writes the key and length of a length-delimited field `field` holding `len` bytes.
pub(crate) fn field_header(buf: &mut Vec<u8>, field: u32, len: usize) {
    key(buf, field, LEN);
    varint(buf, len as u64);
}

fn bytes(buf: &mut Vec<u8>, field: u32, value: &[u8]) {
    field_header(buf, field, value.len());
    buf.extend_from_slice(value);
}

/// A string field, left out when empty (proto3's default).
fn string(buf: &mut Vec<u8>, field: u32, value: &str) {
    if !value.is_empty() {
        bytes(buf, field, value.as_bytes());
    }
}

/// A varint field, left out when zero (proto3's default).
fn uint(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(buf, field, VARINT);
        varint(buf, value);
    }
}

fn fixed64(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(buf: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

/// A message field: `body` writes its contents after the key, and the length goes in between.
/// One byte is kept for the length, which is all that a body under 128 bytes needs (most are:
/// attributes, events, links, statuses); a longer body is moved to make room for the rest.
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = (buf.len() - at - 1) as u64;
    if len < 0x80 {
        buf[at] = len as u8;
        return;
    }
    let mut prefix = Vec::with_capacity(10);
    varint(&mut prefix, len);
    buf[at] = prefix[0];
    buf.splice(at + 1..at + 1, prefix[1..].iter().copied());
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

/// `AnyValue`'s fields: a oneof, so a value is written even when it is the default.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            key(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => {
            key(buf, 4, FIXED64);
            buf.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::String(s) => bytes(buf, 1, s.as_str().as_bytes()),
        Value::Array(array) => message(buf, 5, |buf| array_values(buf, array)),
        other => bytes(buf, 1, other.as_str().as_bytes()),
    }
}

/// `ArrayValue.values` (field 1), one `AnyValue` per element.
fn array_values(buf: &mut Vec<u8>, array: &Array) {
    fn each<T>(buf: &mut Vec<u8>, items: &[T], value: impl Fn(&T) -> Value) {
        for item in items {
            message(buf, 1, |buf| any_value(buf, &value(item)));
        }
    }
    match array {
        Array::Bool(v) => each(buf, v, |b| Value::Bool(*b)),
        Array::I64(v) => each(buf, v, |i| Value::I64(*i)),
        Array::F64(v) => each(buf, v, |f| Value::F64(*f)),
        Array::String(v) => each(buf, v, |s| Value::String(s.clone())),
        other => message(buf, 1, |buf| {
            bytes(buf, 1, other.to_string().as_bytes());
        }),
    }
}

fn key_value(buf: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(buf, field, |buf| {
        string(buf, 1, key);
        message(buf, 2, |buf| any_value(buf, value));
    });
}

fn attributes(buf: &mut Vec<u8>, field: u32, attributes: &[KeyValue]) {
    for kv in attributes {
        key_value(buf, field, kv.key.as_str(), &kv.value);
    }
}

fn flags(context: &SpanContext, remote: bool) -> u32 {
    let mut flags = u32::from(context.trace_flags().to_u8()) | FLAGS_HAS_IS_REMOTE;
    if remote {
        flags |= FLAGS_IS_REMOTE;
    }
    flags
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// Appends the fields of an OTLP `Span` message (without its own key and length).
pub(crate) fn span(buf: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(buf, 1, &context.trace_id().to_bytes());
    bytes(buf, 2, &context.span_id().to_bytes());
    string(buf, 3, &context.trace_state().header());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes(buf, 4, &span.parent_span_id.to_bytes());
    }
    string(buf, 5, &span.name);
    uint(buf, 6, kind(&span.span_kind));
    fixed64(buf, 7, nanos(span.start_time));
    fixed64(buf, 8, nanos(span.end_time));
    attributes(buf, 9, &span.attributes);
    uint(buf, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        message(buf, 11, |buf| {
            fixed64(buf, 1, nanos(event.timestamp));
            string(buf, 2, &event.name);
            attributes(buf, 3, &event.attributes);
            uint(buf, 4, u64::from(event.dropped_attributes_count));
        });
    }
    uint(buf, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        let linked = &link.span_context;
        message(buf, 13, |buf| {
            bytes(buf, 1, &linked.trace_id().to_bytes());
            bytes(buf, 2, &linked.span_id().to_bytes());
            string(buf, 3, &linked.trace_state().header());
            attributes(buf, 4, &link.attributes);
            uint(buf, 5, u64::from(link.dropped_attributes_count));
            fixed32(buf, 6, flags(linked, linked.is_remote()));
        });
    }
    uint(buf, 14, u64::from(span.links.dropped_count));
    message(buf, 15, |buf| match &span.status {
        Status::Unset => {}
        Status::Ok => uint(buf, 3, 1),
        Status::Error { description } => {
            string(buf, 2, description);
            uint(buf, 3, 2);
        }
    });
    fixed32(buf, 16, flags(context, span.parent_span_is_remote));
}

/// The fields of an OTLP `Resource` message.
pub(crate) fn resource(buf: &mut Vec<u8>, resource: &Resource) {
    for (k, v) in resource.iter() {
        key_value(buf, 1, k.as_str(), v);
    }
}

/// The fields of an OTLP `InstrumentationScope` message.
pub(crate) fn scope(buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    string(buf, 1, scope.name());
    string(buf, 2, scope.version().unwrap_or(""));
    for kv in scope.attributes() {
        key_value(buf, 3, kv.key.as_str(), &kv.value);
    }
}

/// An `ExportTraceServiceRequest` with one `ResourceSpans` holding one `ScopeSpans`, whose spans
/// are `spans`: already framed span fields (field 2 of `ScopeSpans`, see [`span_field`]).
pub(crate) fn export_request(
    resource: &[u8],
    resource_schema: &str,
    scope: &[u8],
    scope_schema: &str,
    spans: &[u8],
) -> Vec<u8> {
    let schema_len = |s: &str| {
        if s.is_empty() {
            0
        } else {
            field_len(3, s.len())
        }
    };
    let scope_spans = field_len(1, scope.len()) + spans.len() + schema_len(scope_schema);
    let resource_spans =
        field_len(1, resource.len()) + field_len(2, scope_spans) + schema_len(resource_schema);
    let mut buf = Vec::with_capacity(field_len(1, resource_spans));
    field_header(&mut buf, 1, resource_spans);
    bytes(&mut buf, 1, resource);
    field_header(&mut buf, 2, scope_spans);
    bytes(&mut buf, 1, scope);
    buf.extend_from_slice(spans);
    string(&mut buf, 3, scope_schema);
    string(&mut buf, 3, resource_schema);
    buf
}

/// Appends `span` (the fields of one `Span`) to `batch` as field 2 of `ScopeSpans`.
pub(crate) fn span_field(batch: &mut Vec<u8>, span: &[u8]) {
    bytes(batch, 2, span);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_take_one_byte_per_seven_bits() {
        for (value, len) in [
            (0u64, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
        ] {
            let mut buf = Vec::new();
            varint(&mut buf, value);
            assert_eq!(buf.len(), len, "{value}");
            assert_eq!(varint_len(value), len, "{value}");
        }
        assert_eq!(varint_len(u64::MAX), 10);
        let mut buf = Vec::new();
        varint(&mut buf, 300);
        assert_eq!(buf, [0xAC, 0x02]);
    }

    #[test]
    fn a_nested_message_gets_its_length_in_front() {
        let mut buf = Vec::new();
        message(&mut buf, 15, |buf| bytes(buf, 2, &[7; 200]));
        // key 15/LEN, length 203 (two bytes), then the inner field: key 2/LEN, 200 (two bytes).
        assert_eq!(&buf[..5], &[0x7A, 0xCB, 0x01, 0x12, 0xC8]);
        assert_eq!(buf.len(), 1 + 2 + 1 + 2 + 200);
    }

    #[test]
    fn a_length_takes_a_second_byte_from_128_bytes_on() {
        for (body, prefix) in [
            (0usize, vec![0x00]),
            (127, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xAC, 0x02]),
            (16_384, vec![0x80, 0x80, 0x01]),
        ] {
            let mut buf = vec![0xEE];
            message(&mut buf, 1, |buf| buf.extend((0..body).map(|i| i as u8)));
            assert_eq!(buf[0], 0xEE);
            assert_eq!(buf[1], 0x0A, "key 1/LEN");
            assert_eq!(buf[2..2 + prefix.len()], prefix[..], "{body}");
            let rest = &buf[2 + prefix.len()..];
            assert_eq!(rest.len(), body);
            assert!(
                rest.iter().enumerate().all(|(i, &b)| b == i as u8),
                "{body}"
            );
        }
    }
}
