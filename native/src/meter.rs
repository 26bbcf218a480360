//! decode → meter → ledger rows for one ExportTraceServiceRequest body. Pure Rust, no Python objects:
//! runs with the GIL released. Mirrors `collector/processors/usage.py::meter_request` rule for rule;
//! every meter-specific fact comes from the `Table`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};

use crate::otlp::{self, key_value, status, Val};
use crate::table::{BaseOp, MetaOp, Pred, Quantity, Table};
use crate::wire::{expect, Fallback, Reader, R, WT_I32, WT_I64, WT_LEN, WT_VARINT};

/// Bounds on what one body may hold natively (beyond them Python decides).
pub const MAX_SPANS: usize = 1 << 20;
pub const MAX_SCOPE_SPANS_PER_RESOURCE: usize = 1 << 16;
/// Meters per table (the validated counts live in a fixed array).
pub const MAX_METERS: usize = 64;

/// Attribute key → index, bucketed by length (a couple of candidates per length at most).
pub struct KeyIndex {
    by_len: Vec<Vec<(Box<[u8]>, usize)>>,
}

impl KeyIndex {
    pub fn new(keys: &[String]) -> Self {
        let max = keys.iter().map(|k| k.len()).max().unwrap_or(0);
        let mut by_len: Vec<Vec<(Box<[u8]>, usize)>> = vec![Vec::new(); max + 1];
        for (i, k) in keys.iter().enumerate() {
            by_len[k.len()].push((k.as_bytes().into(), i));
        }
        KeyIndex { by_len }
    }

    #[inline]
    pub fn get(&self, key: &str) -> Option<usize> {
        let bucket = self.by_len.get(key.len())?;
        bucket.iter().find(|(k, _)| **k == *key.as_bytes()).map(|(_, i)| *i)
    }
}

pub struct Producer {
    pub services: Option<HashSet<String>>,
    pub meters: Option<HashSet<String>>,
    pub message: String,
    /// None: any account; else exact ids and prefixes (`collector.auth.Producer.accounts`)
    pub accounts: Option<(HashSet<String>, Vec<String>)>,
    pub account_message: String,
}

impl Producer {
    /// `collector.auth.Producer.allows`
    fn allows<'s>(&self, service: Option<&str>, codes: impl IntoIterator<Item = &'s str>) -> bool {
        if let Some(services) = &self.services {
            match service {
                Some(s) if services.contains(s) => {}
                _ => return false,
            }
        }
        match &self.meters {
            None => true,
            Some(m) => codes.into_iter().all(|c| m.contains(c)),
        }
    }

    /// `collector.auth.Producer.allows_account`
    fn allows_account(&self, account: Option<&str>) -> bool {
        match (&self.accounts, account) {
            (None, _) | (_, None) => true,
            (Some((exact, prefixes)), Some(a)) => exact.contains(a) || prefixes.iter().any(|p| a.starts_with(p.as_str())),
        }
    }
}

#[allow(dead_code)] // now_unix_nano: kept for diagnostics; the bounds below are derived from it by the caller
pub struct Params {
    pub now_unix_nano: i128,
    pub max_duration_ns: i128,
    pub oldest_end_ns: i128,
    pub newest_end_ns: i128,
    pub producer: Option<Producer>,
}

/// Shared text: one allocation per value, however many rows carry it.
pub type Text = Arc<str>;

#[derive(Debug, Clone, PartialEq)]
pub enum MetaVal {
    Str(Text),
    Int(i64),
}

#[derive(Debug, Clone, Copy)]
pub enum Qty {
    /// `Decimal(v).scaleb(-1)`
    Tenths(u128),
    /// `Decimal(v)`
    Int(u128),
}

impl Qty {
    pub fn text(&self) -> String {
        match *self {
            Qty::Tenths(v) => tenths_text(v),
            Qty::Int(v) => v.to_string(),
        }
    }
}

/// A ledger row. Rows always have valid ids (16 / 8 bytes), so the hex forms are fixed-size arrays.
pub struct RowOut {
    pub meter: usize,
    pub idempotency_key: [u8; 32],
    pub account_id: Text,
    pub job_id: Option<Text>,
    pub plan_code: Option<Text>,
    pub quantity: Qty,
    pub end_ns: u64,
    pub trace_hex: [u8; 32],
    pub span_hex: [u8; 16],
    /// range of `MeterOut::metadata`
    pub metadata: (usize, usize),
}

/// ASCII hex held in an array, as &str.
pub fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("")
}

pub struct RejectionOut {
    pub reason: String,
    pub message: String,
    pub trace_hex: String,
    pub span_hex: String,
    pub meters: Vec<usize>,
    pub account_id: Option<String>,
    pub service_name: Option<String>,
    pub end_ns: u64,
    pub resource_index: usize,
    pub scope_index: usize,
    pub span_index: usize,
}

pub struct ServiceRequestOut {
    pub service: Text,
    pub operation: String,
    pub error: bool,
    pub duration_seconds: f64,
}

#[derive(Default)]
pub struct MeterOut {
    pub spans_received: usize,
    pub rows: Vec<RowOut>,
    pub synthetic_rows: Vec<RowOut>,
    pub rejections: Vec<RejectionOut>,
    /// (meter index, count), first-seen order
    pub unattributed: Vec<(usize, u64)>,
    pub service_requests: Vec<ServiceRequestOut>,
    pub copy_text: Vec<u8>,
    /// every row's metadata entries, in row order (rows hold ranges)
    pub metadata: Vec<(usize, MetaVal)>,
    /// reused for each row's metadata JSON
    scratch: String,
}

// ---------------------------------------------------------------------------------------------------
// The value rules of usage.py

/// `_text`: NUL → U+FFFD, then the first `limit` code points.
fn py_text(value: &str, limit: usize) -> Cow<'_, str> {
    let mut v: Cow<'_, str> = if value.contains('\0') { Cow::Owned(value.replace('\0', "\u{FFFD}")) } else { Cow::Borrowed(value) };
    if v.len() > limit {
        // byte length > limit is necessary (not sufficient) for more than `limit` code points
        if let Some((idx, _)) = v.char_indices().nth(limit) {
            match &mut v {
                Cow::Borrowed(s) => *s = &s[..idx],
                Cow::Owned(s) => s.truncate(idx),
            }
        }
    }
    v
}

fn truncate_chars(value: &str, limit: usize) -> &str {
    if value.len() <= limit {
        return value;
    }
    match value.char_indices().nth(limit) {
        Some((idx, _)) => &value[..idx],
        None => value,
    }
}

/// `_attribution`: a non-empty string or an int in decimal, at most `max_len` code points, then `_text`.
fn attribution(v: Option<Val<'_>>, max_len: usize, limit: usize) -> Option<Text> {
    let text: Cow<'_, str> = match v? {
        Val::Str(s) => Cow::Borrowed(s),
        Val::Int(i) => Cow::Owned(i.to_string()),
        _ => return None,
    };
    if text.is_empty() || (text.len() > max_len && text.chars().count() > max_len) {
        return None;
    }
    Some(Text::from(&*py_text(&text, limit)))
}

/// `_string`
fn string<'a>(v: Option<Val<'a>>, limit: usize) -> Option<Cow<'a, str>> {
    match v? {
        Val::Str(s) => Some(py_text(s, limit)),
        _ => None,
    }
}

/// `_is_true`: bool true, or a string whose `str.lower()` is "true". Only ASCII letters lower-case to
/// ASCII t/r/u/e (U+212A KELVIN SIGN lowers to "k", U+0130 to two code points), so this is an ASCII
/// case-insensitive comparison of exactly 4 bytes.
fn is_true(v: Option<Val<'_>>) -> bool {
    match v {
        Some(Val::Bool(b)) => b,
        Some(Val::Str(s)) => s.len() == 4 && s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

enum Count {
    Absent,
    Invalid,
    Valid(i64),
}

/// `_count`: int, or integral finite double, in 0..upper.
fn count(v: Option<Val<'_>>, upper: i64) -> Count {
    let n = match v {
        None => return Count::Absent,
        Some(Val::Int(i)) => i,
        Some(Val::Double(d)) => {
            if !d.is_finite() || d != d.trunc() {
                return Count::Invalid;
            }
            if d < 0.0 {
                return Count::Invalid;
            }
            if d >= 9.223_372_036_854_775_808e18 {
                return Count::Invalid; // > any i64 upper bound
            }
            d as i64 // exact: integral and in range
        }
        Some(_) => return Count::Invalid,
    };
    if n < 0 || n > upper {
        Count::Invalid
    } else {
        Count::Valid(n)
    }
}

// ---------------------------------------------------------------------------------------------------
// Output formatting

/// `json.dumps(str)` with ensure_ascii=True.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", u);
                }
            }
        }
    }
    out.push('"');
}

/// `LedgerWriter._text` (COPY text): `\N` for None, else `\\ \t \n \r` escaped.
fn copy_text(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.extend_from_slice(b"\\N"),
        Some(s) => {
            let bytes = s.as_bytes();
            let mut from = 0;
            for (i, &b) in bytes.iter().enumerate() {
                let escaped: &[u8] = match b {
                    b'\\' => b"\\\\",
                    b'\t' => b"\\t",
                    b'\n' => b"\\n",
                    b'\r' => b"\\r",
                    _ => continue,
                };
                out.extend_from_slice(&bytes[from..i]);
                out.extend_from_slice(escaped);
                from = i + 1;
            }
            out.extend_from_slice(&bytes[from..]);
        }
    }
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
}

fn push_tenths(out: &mut Vec<u8>, v: u128) {
    // same digits as tenths_text, without an allocation for the common (u64) case
    if let Ok(small) = u64::try_from(v) {
        push_u64(out, small / 10);
        out.push(b'.');
        out.push(b'0' + (small % 10) as u8);
    } else {
        out.extend_from_slice(tenths_text(v).as_bytes());
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// `str(Decimal(v).scaleb(-1))` for v >= 0 below 10**27 (always plain notation, one decimal).
fn tenths_text(v: u128) -> String {
    let digits = v.to_string();
    if digits.len() == 1 {
        format!("0.{digits}")
    } else {
        let (int, frac) = digits.split_at(digits.len() - 1);
        format!("{int}.{frac}")
    }
}

// ---------------------------------------------------------------------------------------------------
// The walk

pub struct Core {
    pub table: Table,
    span_index: KeyIndex,
    resource_index: KeyIndex,
    /// `"key":` JSON per metadata key
    json_keys: Vec<String>,
    unknown_service: Text,
}

struct ResourceCtx {
    account_id: Option<Text>,
    job_id: Option<Text>,
    plan_code: Option<Text>,
    service_name: Option<Text>,
    synthetic: bool,
}

struct SpanView<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    status_code: i32,
}

impl Core {
    pub fn new(table: Table) -> Self {
        let span_index = KeyIndex::new(&table.span_keys);
        let resource_index = KeyIndex::new(&table.resource_keys);
        let json_keys = table
            .metadata_keys
            .iter()
            .map(|k| {
                let mut s = String::new();
                json_string(&mut s, k);
                s.push(':');
                s
            })
            .collect();
        let unknown_service = Text::from(table.requests.unknown_service.as_str());
        Core { table, span_index, resource_index, json_keys, unknown_service }
    }

    pub fn meter(&self, body: &[u8], params: &Params) -> R<MeterOut> {
        let mut out = MeterOut::default();
        let mut attrs: Vec<Option<Val<'_>>> = vec![None; self.table.span_keys.len()];
        let mut matched: Vec<usize> = Vec::with_capacity(self.table.meters.len());
        let mut r = Reader::new(body);
        let mut resource_index = 0usize;
        while !r.done() {
            let (field, wt) = r.tag()?;
            if field == 1 {
                expect(wt, WT_LEN)?;
                let rs = r.bytes()?;
                self.resource_spans(rs, resource_index, params, &mut out, &mut attrs, &mut matched)?;
                resource_index += 1;
            } else {
                r.skip(wt)?;
            }
        }
        Ok(out)
    }

    fn resource_spans<'a>(
        &self,
        buf: &'a [u8],
        resource_index: usize,
        params: &Params,
        out: &mut MeterOut,
        attrs: &mut Vec<Option<Val<'a>>>,
        matched: &mut Vec<usize>,
    ) -> R<()> {
        // The resource may come after its scope_spans on the wire: collect first.
        let mut r = Reader::new(buf);
        let mut resource: Option<&[u8]> = None;
        let mut scopes: Vec<&'a [u8]> = Vec::new();
        while !r.done() {
            let (field, wt) = r.tag()?;
            match field {
                1 => {
                    expect(wt, WT_LEN)?;
                    if resource.is_some() {
                        return Err(Fallback("ResourceSpans.resource twice (upb merges)"));
                    }
                    resource = Some(r.bytes()?);
                }
                2 => {
                    expect(wt, WT_LEN)?;
                    if scopes.len() >= MAX_SCOPE_SPANS_PER_RESOURCE {
                        return Err(Fallback("too many scope_spans"));
                    }
                    scopes.push(r.bytes()?);
                }
                3 => {
                    expect(wt, WT_LEN)?;
                    r.string()?;
                }
                _ => r.skip(wt)?,
            }
        }
        let ctx = self.resource_ctx(resource.unwrap_or(&[]))?;
        for (scope_index, ss) in scopes.into_iter().enumerate() {
            let mut r = Reader::new(ss);
            let mut seen_scope = false;
            let mut span_index = 0usize;
            while !r.done() {
                let (field, wt) = r.tag()?;
                match field {
                    1 => {
                        expect(wt, WT_LEN)?;
                        if seen_scope {
                            return Err(Fallback("ScopeSpans.scope twice (upb merges)"));
                        }
                        seen_scope = true;
                        otlp::validate(r.bytes()?, &otlp::SCOPE)?;
                    }
                    2 => {
                        expect(wt, WT_LEN)?;
                        let span = r.bytes()?;
                        if out.spans_received >= MAX_SPANS {
                            return Err(Fallback("too many spans"));
                        }
                        out.spans_received += 1;
                        self.span(span, &ctx, (resource_index, scope_index, span_index), params, out, attrs, matched)?;
                        span_index += 1;
                    }
                    3 => {
                        expect(wt, WT_LEN)?;
                        r.string()?;
                    }
                    _ => r.skip(wt)?,
                }
            }
        }
        Ok(())
    }

    fn resource_ctx(&self, buf: &[u8]) -> R<ResourceCtx> {
        let t = &self.table;
        let mut found: Vec<Option<Val<'_>>> = vec![None; t.resource_keys.len()];
        let mut r = Reader::new(buf);
        while !r.done() {
            let (field, wt) = r.tag()?;
            match field {
                1 => {
                    expect(wt, WT_LEN)?;
                    let (key, val) = key_value(r.bytes()?, 0)?;
                    if let Some(i) = self.resource_index.get(key) {
                        found[i] = Some(val); // a later duplicate wins, as in the dict
                    }
                }
                2 => {
                    expect(wt, WT_VARINT)?;
                    r.varint()?;
                }
                3 => {
                    expect(wt, WT_LEN)?;
                    otlp::validate_entity_ref(r.bytes()?)?;
                }
                _ => r.skip(wt)?,
            }
        }
        let (max, limit) = (t.attribution_max_length, t.text_limit);
        Ok(ResourceCtx {
            account_id: attribution(found[t.res_account], max, limit),
            job_id: attribution(found[t.res_job], max, limit),
            plan_code: attribution(found[t.res_plan], max, limit),
            service_name: string(found[t.res_service], limit).map(|v| Text::from(&*v)),
            synthetic: is_true(found[t.res_synthetic]),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn span<'a>(
        &self,
        buf: &'a [u8],
        ctx: &ResourceCtx,
        index: (usize, usize, usize),
        params: &Params,
        out: &mut MeterOut,
        attrs: &mut Vec<Option<Val<'a>>>,
        matched: &mut Vec<usize>,
    ) -> R<()> {
        attrs.iter_mut().for_each(|a| *a = None);
        let mut s = SpanView { trace_id: &[], span_id: &[], name: "", kind: 0, start: 0, end: 0, status_code: 0 };
        let mut seen_status = false;
        let mut r = Reader::new(buf);
        while !r.done() {
            let (field, wt) = r.tag()?;
            match field {
                1 => {
                    expect(wt, WT_LEN)?;
                    s.trace_id = r.bytes()?;
                }
                2 => {
                    expect(wt, WT_LEN)?;
                    s.span_id = r.bytes()?;
                }
                3 => {
                    expect(wt, WT_LEN)?;
                    r.string()?;
                }
                4 => {
                    expect(wt, WT_LEN)?;
                    r.bytes()?;
                }
                5 => {
                    expect(wt, WT_LEN)?;
                    s.name = r.string()?;
                }
                6 => {
                    expect(wt, WT_VARINT)?;
                    s.kind = r.varint()? as u32 as i32;
                }
                7 => {
                    expect(wt, WT_I64)?;
                    s.start = r.fixed64()?;
                }
                8 => {
                    expect(wt, WT_I64)?;
                    s.end = r.fixed64()?;
                }
                9 => {
                    expect(wt, WT_LEN)?;
                    let (key, val) = key_value(r.bytes()?, 0)?;
                    if let Some(i) = self.span_index.get(key) {
                        attrs[i] = Some(val); // a later duplicate key wins: attrs[key] = kv.value
                    }
                }
                10 | 12 | 14 => {
                    expect(wt, WT_VARINT)?;
                    r.varint()?;
                }
                11 => {
                    expect(wt, WT_LEN)?;
                    otlp::validate(r.bytes()?, &otlp::EVENT)?;
                }
                13 => {
                    expect(wt, WT_LEN)?;
                    otlp::validate(r.bytes()?, &otlp::LINK)?;
                }
                15 => {
                    expect(wt, WT_LEN)?;
                    if seen_status {
                        return Err(Fallback("Span.status twice (upb merges)"));
                    }
                    seen_status = true;
                    s.status_code = status(r.bytes()?)?;
                }
                16 => {
                    expect(wt, WT_I32)?;
                    r.fixed32()?;
                }
                _ => r.skip(wt)?,
            }
        }

        let t = &self.table;
        let rq = &t.requests;
        if rq.entry_kinds.contains(&s.kind) {
            let allowed = match &params.producer {
                None => true,
                Some(p) => p.allows(ctx.service_name.as_deref(), std::iter::empty()),
            };
            if allowed {
                out.service_requests.push(self.service_request(&s, attrs, ctx));
            }
        }

        matched.clear();
        for (i, m) in t.meters.iter().enumerate() {
            if eval(&m.matches, &s, attrs) {
                matched.push(i);
            }
        }
        if matched.is_empty() {
            return Ok(());
        }
        self.meter_span(&s, attrs, ctx, matched, index, params, out)
    }

    fn service_request(&self, s: &SpanView<'_>, attrs: &[Option<Val<'_>>], ctx: &ResourceCtx) -> ServiceRequestOut {
        let rq = &self.table.requests;
        let service = match &ctx.service_name {
            Some(name) if !name.is_empty() => name.clone(),
            _ => self.unknown_service.clone(),
        };
        let route = attrs[rq.route_key];
        let operation: Cow<'_, str> = match route {
            Some(rv) if !rv.string_value().is_empty() => {
                // `attrs.get(a) or attrs.get(b)`: an AnyValue message is always truthy
                let method = rq.method_keys.iter().find_map(|&k| attrs[k]);
                match method {
                    Some(m) => Cow::Owned(format!("{} {}", m.string_value(), rv.string_value())),
                    None => Cow::Borrowed(rv.string_value()),
                }
            }
            _ => match attrs[rq.task_key] {
                Some(task) if !task.string_value().is_empty() => Cow::Borrowed(task.string_value()),
                _ => {
                    if s.name.is_empty() {
                        Cow::Borrowed(rq.unnamed.as_str())
                    } else {
                        Cow::Borrowed(s.name)
                    }
                }
            },
        };
        let duration = s.end.saturating_sub(s.start); // max(end - start, 0)
        ServiceRequestOut {
            service,
            operation: truncate_chars(&operation, rq.max_operation_length).to_owned(),
            error: s.status_code == rq.status_error,
            duration_seconds: duration as f64 / 1e9,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn meter_span(
        &self,
        s: &SpanView<'_>,
        attrs: &[Option<Val<'_>>],
        ctx: &ResourceCtx,
        matched: &[usize],
        index: (usize, usize, usize),
        params: &Params,
        out: &mut MeterOut,
    ) -> R<()> {
        let t = &self.table;
        let rj = &t.rejects;
        let (max_attr, limit) = (t.attribution_max_length, t.text_limit);
        let account_id = attribution(attrs[t.span_account], max_attr, limit).or_else(|| ctx.account_id.clone());
        let service_name = ctx.service_name.as_deref();
        let end = i128::from(s.end);
        let start = i128::from(s.start);
        // the validated count of each matched meter (same slot as in `matched`)
        let mut counts = [0i64; MAX_METERS];

        let reject: Option<(String, String)> = 'check: {
            if let Some(p) = &params.producer {
                if !p.allows(service_name, matched.iter().map(|&m| t.meters[m].code.as_str())) {
                    break 'check Some((rj.unauthorized_producer.clone(), p.message.clone()));
                }
                if !p.allows_account(account_id.as_deref()) {
                    break 'check Some((rj.unauthorized_producer.clone(), p.account_message.clone()));
                }
            }
            if s.trace_id.len() != 16 || s.trace_id.iter().all(|&b| b == 0) || s.span_id.len() != 8 || s.span_id.iter().all(|&b| b == 0) {
                break 'check Some(rj.invalid_id.clone());
            }
            if end < start {
                break 'check Some(rj.negative_duration.clone());
            }
            if end - start > params.max_duration_ns {
                let secs = params.max_duration_ns.div_euclid(1_000_000_000);
                let msg = rj.duration_too_long.1.replace("{max_duration_s}", &secs.to_string());
                break 'check Some((rj.duration_too_long.0.clone(), msg));
            }
            if end > params.newest_end_ns {
                break 'check Some(rj.future_timestamp.clone());
            }
            if end < params.oldest_end_ns {
                break 'check Some(rj.stale_timestamp.clone());
            }
            for (slot, &mi) in matched.iter().enumerate() {
                let Some(rule) = &t.meters[mi].count else { continue };
                // the first key present is read (`value if value is not None else attrs.get(legacy)`)
                let value = rule.keys.iter().find_map(|&k| attrs[k]);
                match count(value, rule.max) {
                    Count::Valid(n) if n >= rule.min => counts[slot] = n,
                    _ => break 'check Some((rule.reason.clone(), rule.message.clone())),
                }
            }
            if account_id.is_none() {
                let must: Vec<&str> = matched
                    .iter()
                    .filter(|&&m| t.meters[m].reject_unattributed)
                    .map(|&m| t.meters[m].code.as_str())
                    .collect();
                if !must.is_empty() {
                    let msg = rj.unattributed.1.replace("{codes}", &must.join(", "));
                    break 'check Some((rj.unattributed.0.clone(), msg));
                }
            }
            None
        };

        if let Some((reason, message)) = reject {
            out.rejections.push(RejectionOut {
                reason,
                message,
                trace_hex: hex(s.trace_id),
                span_hex: hex(s.span_id),
                meters: matched.to_vec(),
                account_id: account_id.map(|a| a.to_string()),
                service_name: service_name.map(str::to_owned),
                end_ns: s.end,
                resource_index: index.0,
                scope_index: index.1,
                span_index: index.2,
            });
            return Ok(());
        }

        let Some(account_id) = account_id else {
            for &m in matched {
                match out.unattributed.iter_mut().find(|(code, _)| *code == m) {
                    Some(entry) => entry.1 += 1,
                    None => out.unattributed.push((m, 1)),
                }
            }
            return Ok(());
        };

        let mut trace_hex = [0u8; 32];
        let mut span_hex = [0u8; 16];
        hex_into(s.trace_id, &mut trace_hex);
        hex_into(s.span_id, &mut span_hex);
        let job_id = attribution(attrs[t.span_job], max_attr, limit).or_else(|| ctx.job_id.clone());
        let plan_code = attribution(attrs[t.span_plan], max_attr, limit).or_else(|| ctx.plan_code.clone());
        let synthetic = ctx.synthetic || is_true(attrs[t.span_synthetic]);
        let mut span_name: Option<Text> = None;
        let tenths = u128::from((s.end - s.start).div_ceil(100_000_000));
        let us = s.end / 1000;

        for (slot, &mi) in matched.iter().enumerate() {
            let m = &t.meters[mi];
            let quantity = match m.quantity {
                Quantity::DurationTenths => Qty::Tenths(tenths),
                Quantity::DurationTenthsTimesCount => Qty::Tenths(tenths * counts[slot] as u128),
                Quantity::Count => Qty::Int(counts[slot] as u128),
                Quantity::Const(n) => Qty::Int(n as u128),
            };
            let (Qty::Tenths(v) | Qty::Int(v)) = quantity;
            if v >= 10u128.pow(27) {
                return Err(Fallback("quantity beyond the Decimal context precision"));
            }
            let md_start = out.metadata.len();
            for op in &t.base_metadata {
                match op {
                    BaseOp::SpanName { out: key } => {
                        let name = span_name.get_or_insert_with(|| Text::from(&*py_text(s.name, limit))).clone();
                        out.metadata.push((*key, MetaVal::Str(name)));
                    }
                    BaseOp::ServiceName { out: key } => {
                        if let Some(name) = &ctx.service_name {
                            out.metadata.push((*key, MetaVal::Str(name.clone())));
                        }
                    }
                    BaseOp::StatusIs { out: key, code, text } => {
                        if s.status_code == *code {
                            out.metadata.push((*key, MetaVal::Str(Text::from(text.as_str()))));
                        }
                    }
                }
            }
            for op in &m.metadata {
                let md = &mut out.metadata[md_start..];
                let entry = match op {
                    MetaOp::Str { out: key, keys } => {
                        let mut value = None;
                        for &k in keys {
                            value = string(attrs[k], limit);
                            if matches!(&value, Some(v) if !v.is_empty()) {
                                break;
                            }
                        }
                        value.map(|v| (*key, MetaVal::Str(Text::from(&*v))))
                    }
                    MetaOp::MeterCount { out: key } => Some((*key, MetaVal::Int(counts[slot]))),
                    MetaOp::OptCount { out: key, key: attr, max } => match count(attrs[*attr], *max) {
                        Count::Valid(n) => Some((*key, MetaVal::Int(n))),
                        _ => None,
                    },
                };
                if let Some((key, value)) = entry {
                    // `metadata[key] = value`: a key already present keeps its position, as in a dict
                    match md.iter_mut().find(|(k, _)| *k == key) {
                        Some(e) => e.1 = value,
                        None => out.metadata.push((key, value)),
                    }
                }
            }
            let mut hasher = Blake2b::<U16>::new();
            hasher.update(s.trace_id);
            hasher.update(s.span_id);
            hasher.update(m.code.as_bytes());
            let mut key = [0u8; 32];
            hex_into(&hasher.finalize(), &mut key);
            let row = RowOut {
                meter: mi,
                idempotency_key: key,
                account_id: account_id.clone(),
                job_id: job_id.clone(),
                plan_code: plan_code.clone(),
                quantity,
                end_ns: s.end,
                trace_hex,
                span_hex,
                metadata: (md_start, out.metadata.len()),
            };
            if synthetic {
                out.synthetic_rows.push(row);
            } else {
                let MeterOut { copy_text, scratch, metadata, .. } = out;
                self.copy_line(copy_text, scratch, &metadata[md_start..], &row, us);
                out.rows.push(row);
            }
        }
        Ok(())
    }

    /// `f"{us}\t{key}\t{text(account)}\t{text(job)}\t{text(plan)}\t{meter}\t{version}\t{quantity}\t{unit}\t{trace}\t{span}\t{text(metadata)}\n"`
    fn copy_line(&self, buf: &mut Vec<u8>, scratch: &mut String, metadata: &[(usize, MetaVal)], row: &RowOut, us: u64) {
        let m = &self.table.meters[row.meter];
        push_u64(buf, us);
        buf.push(b'\t');
        buf.extend_from_slice(&row.idempotency_key);
        buf.push(b'\t');
        copy_text(buf, Some(&row.account_id));
        buf.push(b'\t');
        copy_text(buf, row.job_id.as_deref());
        buf.push(b'\t');
        copy_text(buf, row.plan_code.as_deref());
        // code, version, unit: unescaped, as the reference's f-string writes them
        buf.push(b'\t');
        buf.extend_from_slice(m.code.as_bytes());
        buf.push(b'\t');
        buf.extend_from_slice(m.version_text.as_bytes());
        buf.push(b'\t');
        match row.quantity {
            Qty::Tenths(v) => push_tenths(buf, v),
            Qty::Int(v) => match u64::try_from(v) {
                Ok(small) => push_u64(buf, small),
                Err(_) => buf.extend_from_slice(v.to_string().as_bytes()),
            },
        }
        buf.push(b'\t');
        buf.extend_from_slice(m.unit.as_bytes());
        buf.push(b'\t');
        buf.extend_from_slice(&row.trace_hex);
        buf.push(b'\t');
        buf.extend_from_slice(&row.span_hex);
        buf.push(b'\t');
        scratch.clear();
        self.write_metadata_json(scratch, metadata);
        copy_text(buf, Some(scratch));
        buf.push(b'\n');
    }

    /// `json.dumps(metadata, separators=(",", ":"))`
    pub fn write_metadata_json(&self, s: &mut String, metadata: &[(usize, MetaVal)]) {
        s.push('{');
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&self.json_keys[*k]);
            match v {
                MetaVal::Str(text) => json_string(s, text),
                MetaVal::Int(n) => {
                    let _ = write!(s, "{n}");
                }
            }
        }
        s.push('}');
    }
}

fn eval(p: &Pred, s: &SpanView<'_>, attrs: &[Option<Val<'_>>]) -> bool {
    match p {
        Pred::Eq(k, text) => matches!(attrs[*k], Some(v) if v.string_value() == text),
        Pred::True(k) => is_true(attrs[*k]),
        Pred::Present(k) => attrs[*k].is_some(),
        Pred::Kind(kind) => s.kind == *kind,
        Pred::AbsentOrIn(k, set) => match attrs[*k] {
            None => true,
            Some(v) => set.iter().any(|x| x == v.string_value()),
        },
        Pred::All(ps) => ps.iter().all(|q| eval(q, s, attrs)),
        Pred::Any(ps) => ps.iter().any(|q| eval(q, s, attrs)),
    }
}
