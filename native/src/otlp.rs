//! The OTLP trace schema (opentelemetry-proto 1.x, as the installed Python package declares it), walked
//! with `wire::Reader`. Messages metering reads are decoded into borrowed views; the others (events,
//! links, scope, entity refs, nested attribute values) are only *validated*: every string field checked
//! as UTF-8 and every known field checked for its wire type, exactly because upb would refuse (and Python
//! repair) a body with invalid UTF-8 anywhere, even in a field metering never reads.
//!
//! `SCHEMA` lists every field this walker knows; the differential tests compare it with the Python
//! descriptors so a newer opentelemetry-proto with a new string field cannot slip through as "unknown".

use crate::wire::{expect, Fallback, Reader, R, WT_I32, WT_I64, WT_LEN, WT_VARINT};

/// Maximum nesting of AnyValues inside an attribute's value (array / kvlist levels) accepted natively;
/// deeper falls back. 16 levels are at most 6 + 3 x 17 = 57 message levels, well inside upb's limit of 100
/// (so native never accepts what upb refuses for depth) and bound the walker's recursion.
pub const MAX_VALUE_DEPTH: u32 = 16;

/// (message full name, [(field number, protobuf type name)]) for every message the walker knows.
pub const SCHEMA: &[(&str, &[(u32, &str)])] = &[
    ("opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest", &[(1, "message")]),
    ("opentelemetry.proto.trace.v1.ResourceSpans", &[(1, "message"), (2, "message"), (3, "string")]),
    ("opentelemetry.proto.resource.v1.Resource", &[(1, "message"), (2, "uint32"), (3, "message")]),
    ("opentelemetry.proto.common.v1.KeyValue", &[(1, "string"), (2, "message"), (3, "int32")]),
    (
        "opentelemetry.proto.common.v1.AnyValue",
        &[
            (1, "string"),
            (2, "bool"),
            (3, "int64"),
            (4, "double"),
            (5, "message"),
            (6, "message"),
            (7, "bytes"),
            (8, "int32"),
        ],
    ),
    ("opentelemetry.proto.common.v1.ArrayValue", &[(1, "message")]),
    ("opentelemetry.proto.common.v1.KeyValueList", &[(1, "message")]),
    (
        "opentelemetry.proto.common.v1.EntityRef",
        &[(1, "string"), (2, "string"), (3, "string"), (4, "string")],
    ),
    ("opentelemetry.proto.trace.v1.ScopeSpans", &[(1, "message"), (2, "message"), (3, "string")]),
    (
        "opentelemetry.proto.common.v1.InstrumentationScope",
        &[(1, "string"), (2, "string"), (3, "message"), (4, "uint32")],
    ),
    (
        "opentelemetry.proto.trace.v1.Span",
        &[
            (1, "bytes"),
            (2, "bytes"),
            (3, "string"),
            (4, "bytes"),
            (5, "string"),
            (6, "enum"),
            (7, "fixed64"),
            (8, "fixed64"),
            (9, "message"),
            (10, "uint32"),
            (11, "message"),
            (12, "uint32"),
            (13, "message"),
            (14, "uint32"),
            (15, "message"),
            (16, "fixed32"),
        ],
    ),
    (
        "opentelemetry.proto.trace.v1.Span.Event",
        &[(1, "fixed64"), (2, "string"), (3, "message"), (4, "uint32")],
    ),
    (
        "opentelemetry.proto.trace.v1.Span.Link",
        &[(1, "bytes"), (2, "bytes"), (3, "string"), (4, "message"), (5, "uint32"), (6, "fixed32")],
    ),
    ("opentelemetry.proto.trace.v1.Status", &[(2, "string"), (3, "enum")]),
];

/// An attribute value as metering sees it (`AnyValue.WhichOneof("value")`).
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    /// The KeyValue has a value message with no member of the oneof set (or no value at all).
    Empty,
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// array, kvlist, bytes or string_value_strindex: never a string, count or bool for metering.
    Other,
}

impl<'a> Val<'a> {
    /// `AnyValue.string_value`: the string, or "" when another member (or none) is set.
    #[inline]
    pub fn string_value(&self) -> &'a str {
        match self {
            Val::Str(s) => s,
            _ => "",
        }
    }
}

/// Decode one AnyValue. Several oneof members on the wire fall back (upb: last one wins).
pub fn any_value<'a>(buf: &'a [u8], depth: u32) -> R<Val<'a>> {
    if depth > MAX_VALUE_DEPTH {
        return Err(Fallback("attribute values nested too deep"));
    }
    let mut r = Reader::new(buf);
    let mut val = Val::Empty;
    let mut members = 0u32;
    while !r.done() {
        let (field, wt) = r.tag()?;
        match field {
            1 => {
                expect(wt, WT_LEN)?;
                val = Val::Str(r.string()?);
            }
            2 => {
                expect(wt, WT_VARINT)?;
                val = Val::Bool(r.varint()? != 0);
            }
            3 => {
                expect(wt, WT_VARINT)?;
                val = Val::Int(r.varint()? as i64);
            }
            4 => {
                expect(wt, WT_I64)?;
                val = Val::Double(f64::from_bits(r.fixed64()?));
            }
            5 => {
                expect(wt, WT_LEN)?;
                let b = r.bytes()?;
                array_value(b, depth)?;
                val = Val::Other;
            }
            6 => {
                expect(wt, WT_LEN)?;
                let b = r.bytes()?;
                kvlist_value(b, depth)?;
                val = Val::Other;
            }
            7 => {
                expect(wt, WT_LEN)?;
                r.bytes()?;
                val = Val::Other;
            }
            8 => {
                expect(wt, WT_VARINT)?;
                r.varint()?;
                val = Val::Other;
            }
            _ => {
                r.skip(wt)?;
                continue;
            }
        }
        members += 1;
        if members > 1 {
            return Err(Fallback("several oneof members in one AnyValue"));
        }
    }
    Ok(val)
}

/// `depth`: how many AnyValues enclose this array (its values are one level deeper).
fn array_value(buf: &[u8], depth: u32) -> R<()> {
    let mut r = Reader::new(buf);
    while !r.done() {
        let (field, wt) = r.tag()?;
        if field == 1 {
            expect(wt, WT_LEN)?;
            any_value(r.bytes()?, depth + 1)?;
        } else {
            r.skip(wt)?;
        }
    }
    Ok(())
}

fn kvlist_value(buf: &[u8], depth: u32) -> R<()> {
    let mut r = Reader::new(buf);
    while !r.done() {
        let (field, wt) = r.tag()?;
        if field == 1 {
            expect(wt, WT_LEN)?;
            key_value(r.bytes()?, depth + 1)?;
        } else {
            r.skip(wt)?;
        }
    }
    Ok(())
}

/// Decode one KeyValue: (key, value). A KeyValue without a value field reads as `Val::Empty`
/// (Python: `kv.value` is a default AnyValue, which is still "present" in the attribute dict).
pub fn key_value<'a>(buf: &'a [u8], depth: u32) -> R<(&'a str, Val<'a>)> {
    let mut r = Reader::new(buf);
    let mut key = "";
    let mut val = Val::Empty;
    let mut seen_value = false;
    while !r.done() {
        let (field, wt) = r.tag()?;
        match field {
            1 => {
                expect(wt, WT_LEN)?;
                key = r.string()?;
            }
            2 => {
                expect(wt, WT_LEN)?;
                if seen_value {
                    return Err(Fallback("KeyValue.value twice (upb merges)"));
                }
                seen_value = true;
                val = any_value(r.bytes()?, depth)?;
            }
            3 => {
                expect(wt, WT_VARINT)?;
                r.varint()?;
            }
            _ => r.skip(wt)?,
        }
    }
    Ok((key, val))
}

/// Validate a message that only holds `repeated KeyValue attributes = attr_field` plus scalar fields
/// declared in `varints` / `strings` / `fixed64s` / `fixed32s` / `bytes_fields`.
pub struct Shape {
    pub attrs: u32,
    pub strings: &'static [u32],
    pub varints: &'static [u32],
    pub fixed64s: &'static [u32],
    pub fixed32s: &'static [u32],
    pub bytes_fields: &'static [u32],
}

pub const EVENT: Shape = Shape { attrs: 3, strings: &[2], varints: &[4], fixed64s: &[1], fixed32s: &[], bytes_fields: &[] };
pub const LINK: Shape = Shape { attrs: 4, strings: &[3], varints: &[5], fixed64s: &[], fixed32s: &[6], bytes_fields: &[1, 2] };
pub const SCOPE: Shape = Shape { attrs: 3, strings: &[1, 2], varints: &[4], fixed64s: &[], fixed32s: &[], bytes_fields: &[] };

pub fn validate(buf: &[u8], shape: &Shape) -> R<()> {
    let mut r = Reader::new(buf);
    while !r.done() {
        let (field, wt) = r.tag()?;
        if field == shape.attrs {
            expect(wt, WT_LEN)?;
            key_value(r.bytes()?, 0)?;
        } else if shape.strings.contains(&field) {
            expect(wt, WT_LEN)?;
            r.string()?;
        } else if shape.varints.contains(&field) {
            expect(wt, WT_VARINT)?;
            r.varint()?;
        } else if shape.fixed64s.contains(&field) {
            expect(wt, WT_I64)?;
            r.fixed64()?;
        } else if shape.fixed32s.contains(&field) {
            expect(wt, WT_I32)?;
            r.fixed32()?;
        } else if shape.bytes_fields.contains(&field) {
            expect(wt, WT_LEN)?;
            r.bytes()?;
        } else {
            r.skip(wt)?;
        }
    }
    Ok(())
}

pub fn validate_entity_ref(buf: &[u8]) -> R<()> {
    let mut r = Reader::new(buf);
    while !r.done() {
        let (field, wt) = r.tag()?;
        if (1..=4).contains(&field) {
            expect(wt, WT_LEN)?;
            r.string()?;
        } else {
            r.skip(wt)?;
        }
    }
    Ok(())
}

/// Status: (code as int32). `message` validated.
pub fn status(buf: &[u8]) -> R<i32> {
    let mut r = Reader::new(buf);
    let mut code = 0i32;
    while !r.done() {
        let (field, wt) = r.tag()?;
        match field {
            2 => {
                expect(wt, WT_LEN)?;
                r.string()?;
            }
            3 => {
                expect(wt, WT_VARINT)?;
                code = r.varint()? as u32 as i32; // int32/enum: upb keeps the low 32 bits
            }
            _ => r.skip(wt)?,
        }
    }
    Ok(code)
}

/// The number of spans in an `ExportTraceServiceRequest`, read from the framing only (lengths and tags
/// of the three outer levels; nothing inside a span is looked at), so a receiver can refuse a request
/// over its span bound before decoding it. `None` when the framing itself is not well formed: the full
/// decode then decides.
pub fn count_spans(body: &[u8]) -> Option<u64> {
    fn count_in(buf: &[u8], field: u32, inner: &dyn Fn(&[u8]) -> Option<u64>) -> Option<u64> {
        let mut r = Reader::new(buf);
        let mut total: u64 = 0;
        while !r.done() {
            let (number, wt) = r.tag().ok()?;
            if number == field && wt == WT_LEN {
                total += inner(r.bytes().ok()?)?;
            } else {
                r.skip(wt).ok()?;
            }
        }
        Some(total)
    }
    let spans = |scope_spans: &[u8]| count_in(scope_spans, 2, &|_| Some(1));
    let scopes = |resource_spans: &[u8]| count_in(resource_spans, 2, &spans);
    count_in(body, 1, &scopes)
}
