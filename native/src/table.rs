//! The metering table: everything meter-specific, built by Python (`spanmeter_native_table.py`) from the
//! meter definitions and handed to `Meter(table)` once. Rust knows the *shape* of the algorithm (match →
//! validate → quantities → metadata → rows) and a small rule vocabulary; it names no meter and no key.

/// Index of an attribute key in `Table::span_keys`.
pub type Key = usize;

#[derive(Debug, Clone)]
pub enum Pred {
    /// key present and its `string_value` ("" for non-strings) equals the text
    Eq(Key, String),
    /// key's value is bool true or a string equal to "true" ignoring case
    True(Key),
    /// key present (any value, even an empty AnyValue)
    Present(Key),
    /// span.kind equals
    Kind(i32),
    /// key absent, or its `string_value` is one of the texts
    AbsentOrIn(Key, Vec<String>),
    All(Vec<Pred>),
    Any(Vec<Pred>),
}

#[derive(Debug, Clone)]
pub struct CountRule {
    /// the first of these keys present is read (current name, then legacy)
    pub keys: Vec<Key>,
    pub min: i64,
    pub max: i64,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub enum Quantity {
    /// ceil(duration / 100 ms) tenths of a second, `Decimal(tenths).scaleb(-1)`
    DurationTenths,
    /// the same times the meter's validated count, `Decimal(tenths * count).scaleb(-1)`
    DurationTenthsTimesCount,
    /// the meter's validated count, `Decimal(count)`
    Count,
    /// a constant integer, `Decimal(n)`
    Const(i64),
}

#[derive(Debug, Clone)]
pub enum MetaOp {
    /// `_string(a) or _string(b) or ...` (the last one tried is kept even when ""), written when not None
    Str { out: usize, keys: Vec<Key> },
    /// the meter's validated count, as a JSON int
    MeterCount { out: usize },
    /// `_count(key, max)` written when valid (a whole number in 0..max)
    OptCount { out: usize, key: Key, max: i64 },
}

#[derive(Debug, Clone)]
pub enum BaseOp {
    /// `_text(span.name)`
    SpanName { out: usize },
    /// the resource's `service.name` (`_string`) when not None
    ServiceName { out: usize },
    /// a constant text when span.status.code equals `code`
    StatusIs { out: usize, code: i32, text: String },
}

#[derive(Debug, Clone)]
pub struct MeterDef {
    pub code: String,
    pub version: i64,
    /// `str(version)`
    pub version_text: String,
    pub unit: String,
    pub reject_unattributed: bool,
    pub matches: Pred,
    pub count: Option<CountRule>,
    pub quantity: Quantity,
    pub metadata: Vec<MetaOp>,
}

#[derive(Debug, Clone)]
pub struct Rejects {
    pub unauthorized_producer: String,
    pub invalid_id: (String, String),
    pub negative_duration: (String, String),
    /// message template: `{max_duration_s}` is replaced by `max_duration_ns // 10**9`
    pub duration_too_long: (String, String),
    pub future_timestamp: (String, String),
    pub stale_timestamp: (String, String),
    /// message template: `{codes}` is replaced by the codes of the matched meters that must be attributed
    pub unattributed: (String, String),
}

#[derive(Debug, Clone)]
pub struct Requests {
    pub entry_kinds: Vec<i32>,
    pub unknown_service: String,
    pub max_operation_length: usize,
    pub route_key: Key,
    pub method_keys: Vec<Key>,
    pub task_key: Key,
    pub unnamed: String,
    pub outcome_ok: String,
    pub outcome_error: String,
    pub status_error: i32,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub span_keys: Vec<String>,
    pub resource_keys: Vec<String>,
    /// indexes into `resource_keys`
    pub res_account: usize,
    pub res_job: usize,
    pub res_plan: usize,
    pub res_service: usize,
    pub res_synthetic: usize,
    /// indexes into `span_keys`
    pub span_account: Key,
    pub span_job: Key,
    pub span_plan: Key,
    pub span_synthetic: Key,
    pub attribution_max_length: usize,
    pub text_limit: usize,
    pub base_metadata: Vec<BaseOp>,
    /// metadata keys, in the order they were named; `metadata_json_keys[i]` is `"key":` pre-rendered
    pub metadata_keys: Vec<String>,
    pub label_key: Option<usize>,
    pub meters: Vec<MeterDef>,
    pub rejects: Rejects,
    pub requests: Requests,
}
