//! spanmeter_native: the Python binding of the native metering core.
//!
//! `Meter(table)` compiles the table built by `spanmeter_native_table.build_table()`; `Meter.meter(body,
//! now_unix_nano, max_duration_ns, oldest_end_ns, newest_end_ns, producer)` meters one serialized
//! ExportTraceServiceRequest with the GIL released and returns a `MeterResult`, or `None` when Python must
//! decide (see `wire.rs`: invalid UTF-8, malformed or unusual wire data, limits). A panic inside the core
//! is caught and raised as `NativePanic` (a RuntimeError), never an abort.

#![forbid(unsafe_code)]

mod meter;
mod otlp;
mod table;
mod wire;

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use meter::{ascii, Core, MetaVal, MeterOut, Params, Producer, RowOut, MAX_METERS};
use table::{BaseOp, CountRule, Key, MetaOp, MeterDef, Pred, Quantity, Rejects, Requests, Table};

create_exception!(spanmeter_native, NativePanic, PyRuntimeError);

// ---------------------------------------------------------------------------------------------------
// Table parsing (strict: a malformed table is a ValueError at start-up, never a silent difference)

struct Keys<'t> {
    index: HashMap<&'t str, Key>,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> PyResult<Key> {
        self.index
            .get(key)
            .copied()
            .ok_or_else(|| PyValueError::new_err(format!("table: rule key {key:?} is not in span_keys")))
    }
}

fn item<'py>(d: &Bound<'py, PyDict>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(name)?.ok_or_else(|| PyValueError::new_err(format!("table: missing {name:?}")))
}

fn pair(v: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
    v.extract::<(String, String)>()
}

fn parse_pred(v: &Bound<'_, PyAny>, keys: &Keys<'_>) -> PyResult<Pred> {
    let t = v.downcast::<PyTuple>()?;
    let op: String = t.get_item(0)?.extract()?;
    Ok(match op.as_str() {
        "eq" => Pred::Eq(keys.get(&t.get_item(1)?.extract::<String>()?)?, t.get_item(2)?.extract()?),
        "true" => Pred::True(keys.get(&t.get_item(1)?.extract::<String>()?)?),
        "present" => Pred::Present(keys.get(&t.get_item(1)?.extract::<String>()?)?),
        "kind" => Pred::Kind(t.get_item(1)?.extract()?),
        "absent_or_in" => {
            let mut set: Vec<String> = t.get_item(2)?.extract()?;
            set.sort();
            Pred::AbsentOrIn(keys.get(&t.get_item(1)?.extract::<String>()?)?, set)
        }
        "all" | "any" => {
            let list = t.get_item(1)?;
            let mut ps = Vec::new();
            for p in list.try_iter()? {
                ps.push(parse_pred(&p?, keys)?);
            }
            if op == "all" {
                Pred::All(ps)
            } else {
                Pred::Any(ps)
            }
        }
        other => return Err(PyValueError::new_err(format!("table: unknown predicate {other:?}"))),
    })
}

fn parse_table(d: &Bound<'_, PyDict>) -> PyResult<Table> {
    let format: i64 = item(d, "format")?.extract()?;
    if format != 1 {
        return Err(PyValueError::new_err(format!("table: unsupported format {format}")));
    }
    let span_keys: Vec<String> = item(d, "span_keys")?.extract()?;
    let resource_keys: Vec<String> = item(d, "resource_keys")?.extract()?;
    let owned_span_keys = span_keys.clone();
    let keys = Keys { index: owned_span_keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect() };
    let rkeys: HashMap<&str, usize> = resource_keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let rget = |name: &str| -> PyResult<usize> {
        let key: String = item(d, name)?.extract()?;
        rkeys.get(key.as_str()).copied().ok_or_else(|| PyValueError::new_err(format!("table: {name} {key:?} not in resource_keys")))
    };
    let sget = |name: &str| -> PyResult<Key> { keys.get(&item(d, name)?.extract::<String>()?) };

    let mut metadata_keys: Vec<String> = Vec::new();
    let mut meta_index = |k: String| -> usize {
        if let Some(i) = metadata_keys.iter().position(|x| *x == k) {
            i
        } else {
            metadata_keys.push(k);
            metadata_keys.len() - 1
        }
    };

    let mut base_metadata = Vec::new();
    for op in item(d, "base_metadata")?.try_iter()? {
        let op = op?;
        let t = op.downcast::<PyTuple>()?;
        let kind: String = t.get_item(0)?.extract()?;
        let out = meta_index(t.get_item(1)?.extract()?);
        base_metadata.push(match kind.as_str() {
            "span_name" => BaseOp::SpanName { out },
            "service_name" => BaseOp::ServiceName { out },
            "status_is" => BaseOp::StatusIs { out, code: t.get_item(2)?.extract()?, text: t.get_item(3)?.extract()? },
            other => return Err(PyValueError::new_err(format!("table: unknown base metadata {other:?}"))),
        });
    }

    let mut meters = Vec::new();
    let mut codes = HashSet::new();
    for m in item(d, "meters")?.try_iter()? {
        let m = m?;
        let m = m.downcast::<PyDict>()?;
        let code: String = item(m, "code")?.extract()?;
        if !codes.insert(code.clone()) {
            return Err(PyValueError::new_err(format!("table: meter {code:?} twice")));
        }
        let count = {
            let c = item(m, "count")?;
            if c.is_none() {
                None
            } else {
                let c = c.downcast::<PyDict>()?;
                let mut ks = Vec::new();
                for k in item(c, "keys")?.extract::<Vec<String>>()? {
                    ks.push(keys.get(&k)?);
                }
                let (reason, message) = pair(&item(c, "reject")?)?;
                Some(CountRule { keys: ks, min: item(c, "min")?.extract()?, max: item(c, "max")?.extract()?, reason, message })
            }
        };
        let q = item(m, "quantity")?;
        let q = q.downcast::<PyTuple>()?;
        let qkind: String = q.get_item(0)?.extract()?;
        let quantity = match qkind.as_str() {
            "duration_tenths" => Quantity::DurationTenths,
            "duration_tenths_x_count" => Quantity::DurationTenthsTimesCount,
            "count" => Quantity::Count,
            "const" => {
                let n: i64 = q.get_item(1)?.extract()?;
                if n < 0 {
                    return Err(PyValueError::new_err("table: negative constant quantity"));
                }
                Quantity::Const(n)
            }
            other => return Err(PyValueError::new_err(format!("table: unknown quantity {other:?}"))),
        };
        if matches!(quantity, Quantity::Count | Quantity::DurationTenthsTimesCount) && count.is_none() {
            return Err(PyValueError::new_err(format!("table: meter {code:?} has a count quantity but no count rule")));
        }
        let mut metadata = Vec::new();
        for op in item(m, "metadata")?.try_iter()? {
            let op = op?;
            let t = op.downcast::<PyTuple>()?;
            let kind: String = t.get_item(0)?.extract()?;
            let out = meta_index(t.get_item(1)?.extract()?);
            metadata.push(match kind.as_str() {
                "string" => {
                    let mut ks = Vec::new();
                    for k in t.get_item(2)?.extract::<Vec<String>>()? {
                        ks.push(keys.get(&k)?);
                    }
                    MetaOp::Str { out, keys: ks }
                }
                "meter_count" => MetaOp::MeterCount { out },
                "opt_count" => MetaOp::OptCount {
                    out,
                    key: keys.get(&t.get_item(2)?.extract::<String>()?)?,
                    max: t.get_item(3)?.extract()?,
                },
                other => return Err(PyValueError::new_err(format!("table: unknown metadata op {other:?}"))),
            });
        }
        let version: i64 = item(m, "version")?.extract()?;
        meters.push(MeterDef {
            code,
            version,
            version_text: version.to_string(),
            unit: item(m, "unit")?.extract()?,
            reject_unattributed: item(m, "reject_unattributed")?.extract()?,
            matches: parse_pred(&item(m, "match")?, &keys)?,
            count,
            quantity,
            metadata,
        });
    }

    if meters.len() > MAX_METERS {
        return Err(PyValueError::new_err(format!("table: more than {MAX_METERS} meters")));
    }
    let rj = item(d, "rejects")?;
    let rj = rj.downcast::<PyDict>()?;
    let rejects = Rejects {
        unauthorized_producer: item(rj, "unauthorized_producer")?.extract()?,
        invalid_id: pair(&item(rj, "invalid_id")?)?,
        negative_duration: pair(&item(rj, "negative_duration")?)?,
        duration_too_long: pair(&item(rj, "duration_too_long")?)?,
        future_timestamp: pair(&item(rj, "future_timestamp")?)?,
        stale_timestamp: pair(&item(rj, "stale_timestamp")?)?,
        unattributed: pair(&item(rj, "unattributed")?)?,
    };
    let rq = item(d, "requests")?;
    let rq = rq.downcast::<PyDict>()?;
    let mut method_keys = Vec::new();
    for k in item(rq, "method_keys")?.extract::<Vec<String>>()? {
        method_keys.push(keys.get(&k)?);
    }
    let requests = Requests {
        entry_kinds: item(rq, "entry_kinds")?.extract()?,
        unknown_service: item(rq, "unknown_service")?.extract()?,
        max_operation_length: item(rq, "max_operation_length")?.extract()?,
        route_key: keys.get(&item(rq, "route_key")?.extract::<String>()?)?,
        method_keys,
        task_key: keys.get(&item(rq, "task_key")?.extract::<String>()?)?,
        unnamed: item(rq, "unnamed")?.extract()?,
        outcome_ok: item(rq, "outcome_ok")?.extract()?,
        outcome_error: item(rq, "outcome_error")?.extract()?,
        status_error: item(rq, "status_error")?.extract()?,
    };
    let label_key = {
        let v = item(d, "label_metadata_key")?;
        if v.is_none() {
            None
        } else {
            let k: String = v.extract()?;
            Some(meta_index(k))
        }
    };
    let table = Table {
        res_account: rget("resource_account_key")?,
        res_job: rget("resource_job_key")?,
        res_plan: rget("resource_plan_key")?,
        res_service: rget("resource_service_key")?,
        res_synthetic: rget("resource_synthetic_key")?,
        span_account: sget("span_account_key")?,
        span_job: sget("span_job_key")?,
        span_plan: sget("span_plan_key")?,
        span_synthetic: sget("span_synthetic_key")?,
        attribution_max_length: item(d, "attribution_max_length")?.extract()?,
        text_limit: item(d, "text_limit")?.extract()?,
        base_metadata,
        metadata_keys,
        label_key,
        meters,
        rejects,
        requests,
        span_keys,
        resource_keys,
    };
    Ok(table)
}

// ---------------------------------------------------------------------------------------------------
// Python classes

#[pyclass(frozen, module = "spanmeter_native")]
struct Meter {
    core: Arc<Core>,
}

#[pyclass(frozen, module = "spanmeter_native")]
struct MeterResult {
    core: Arc<Core>,
    out: MeterOut,
}

/// (services, meters, message, exact accounts, account prefixes, account message): `producer_argument`
type ProducerArg = Option<(
    Option<HashSet<String>>,
    Option<HashSet<String>>,
    String,
    Option<HashSet<String>>,
    Option<Vec<String>>,
    String,
)>;

impl Meter {
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        body: &[u8],
        now_unix_nano: i128,
        max_duration_ns: i128,
        oldest_end_ns: i128,
        newest_end_ns: i128,
        producer: ProducerArg,
    ) -> PyResult<Result<MeterOut, &'static str>> {
        let params = Params {
            now_unix_nano,
            max_duration_ns,
            oldest_end_ns,
            newest_end_ns,
            producer: producer.map(|(services, meters, message, exact, prefixes, account_message)| Producer {
                services,
                meters,
                message,
                accounts: exact.map(|e| (e, prefixes.unwrap_or_default())),
                account_message,
            }),
        };
        let core = &self.core;
        let outcome = py.allow_threads(|| catch_unwind(AssertUnwindSafe(|| core.meter(body, &params))));
        match outcome {
            Ok(Ok(out)) => Ok(Ok(out)),
            Ok(Err(fallback)) => Ok(Err(fallback.0)),
            Err(_) => Err(NativePanic::new_err("panic in the native metering core")),
        }
    }
}

#[pymethods]
impl Meter {
    #[new]
    fn new(table: &Bound<'_, PyDict>) -> PyResult<Self> {
        Ok(Meter { core: Arc::new(Core::new(parse_table(table)?)) })
    }

    /// Meter one body; `None`: let Python decide (fall back).
    #[pyo3(signature = (body, now_unix_nano, max_duration_ns, oldest_end_ns, newest_end_ns, producer=None))]
    #[allow(clippy::too_many_arguments)]
    fn meter(
        &self,
        py: Python<'_>,
        body: &[u8],
        now_unix_nano: i128,
        max_duration_ns: i128,
        oldest_end_ns: i128,
        newest_end_ns: i128,
        producer: ProducerArg,
    ) -> PyResult<Option<MeterResult>> {
        Ok(self
            .run(py, body, now_unix_nano, max_duration_ns, oldest_end_ns, newest_end_ns, producer)?
            .ok()
            .map(|out| MeterResult { core: self.core.clone(), out }))
    }

    /// Like `meter`, but a fallback returns its reason (a str) instead of None: for tests and diagnostics.
    #[pyo3(signature = (body, now_unix_nano, max_duration_ns, oldest_end_ns, newest_end_ns, producer=None))]
    #[allow(clippy::too_many_arguments)]
    fn meter_or_reason(
        &self,
        py: Python<'_>,
        body: &[u8],
        now_unix_nano: i128,
        max_duration_ns: i128,
        oldest_end_ns: i128,
        newest_end_ns: i128,
        producer: ProducerArg,
    ) -> PyResult<PyObject> {
        Ok(match self.run(py, body, now_unix_nano, max_duration_ns, oldest_end_ns, newest_end_ns, producer)? {
            Ok(out) => Py::new(py, MeterResult { core: self.core.clone(), out })?.into_any(),
            Err(reason) => reason.into_pyobject(py)?.into_any().unbind(),
        })
    }

    #[getter]
    fn codes(&self) -> Vec<String> {
        self.core.table.meters.iter().map(|m| m.code.clone()).collect()
    }

    /// The fields the wire walker knows: {message full name: {field number: type name}}.
    #[staticmethod]
    fn schema() -> HashMap<String, HashMap<u32, String>> {
        otlp::SCHEMA
            .iter()
            .map(|(name, fields)| (name.to_string(), fields.iter().map(|(n, t)| (*n, t.to_string())).collect()))
            .collect()
    }

    #[staticmethod]
    fn max_value_depth() -> u32 {
        otlp::MAX_VALUE_DEPTH
    }
}

impl MeterResult {
    fn metadata(&self, row: &RowOut) -> &[(usize, MetaVal)] {
        &self.out.metadata[row.metadata.0..row.metadata.1]
    }

    fn label(&self, row: &RowOut) -> Option<String> {
        let key = self.core.table.label_key?;
        self.metadata(row).iter().find(|(k, _)| *k == key).map(|(_, v)| match v {
            MetaVal::Str(s) => s.to_string(),
            MetaVal::Int(n) => n.to_string(),
        })
    }

    fn compact<'py>(&self, py: Python<'py>, rows: &[RowOut]) -> PyResult<Bound<'py, PyList>> {
        let items: Vec<Bound<'py, PyTuple>> = rows
            .iter()
            .map(|r| {
                let m = &self.core.table.meters[r.meter];
                (m.code.as_str(), m.version, ascii(&r.idempotency_key), r.plan_code.as_deref(), self.label(r), r.quantity.text(), r.end_ns)
                    .into_pyobject(py)
            })
            .collect::<PyResult<_>>()?;
        PyList::new(py, items)
    }

    fn full<'py>(&self, py: Python<'py>, rows: &[RowOut]) -> PyResult<Bound<'py, PyList>> {
        let t = &self.core.table;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let md = PyList::empty(py);
            for (k, v) in self.metadata(r) {
                let key = t.metadata_keys[*k].as_str();
                match v {
                    MetaVal::Str(s) => md.append((key, &**s))?,
                    MetaVal::Int(n) => md.append((key, *n))?,
                }
            }
            let m = &t.meters[r.meter];
            let tuple = PyTuple::new(
                py,
                [
                    m.code.as_str().into_pyobject(py)?.into_any(),
                    m.version.into_pyobject(py)?.into_any(),
                    ascii(&r.idempotency_key).into_pyobject(py)?.into_any(),
                    (&*r.account_id).into_pyobject(py)?.into_any(),
                    r.job_id.as_deref().into_pyobject(py)?.into_any(),
                    r.plan_code.as_deref().into_pyobject(py)?.into_any(),
                    r.quantity.text().into_pyobject(py)?.into_any(),
                    r.end_ns.into_pyobject(py)?.into_any(),
                    ascii(&r.trace_hex).into_pyobject(py)?.into_any(),
                    ascii(&r.span_hex).into_pyobject(py)?.into_any(),
                    md.into_any(),
                ],
            )?;
            items.push(tuple);
        }
        PyList::new(py, items)
    }
}

#[pymethods]
impl MeterResult {
    #[getter]
    fn spans_received(&self) -> usize {
        self.out.spans_received
    }

    /// All ledger rows (not the synthetic ones) in COPY text, UTF-8.
    #[getter]
    fn copy_text<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.out.copy_text)
    }

    /// (meter code, version, idempotency_key, plan_code, label (gpu model) or None, quantity text, end_ns)
    #[getter]
    fn rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.compact(py, &self.out.rows)
    }

    #[getter]
    fn synthetic_rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.compact(py, &self.out.synthetic_rows)
    }

    /// (code, version, idempotency_key, account_id, job_id, plan_code, quantity text, end_ns, trace hex,
    /// span hex, [(metadata key, str | int)]) per row, for building `UsageRow`s.
    fn full_rows<'py>(&self, py: Python<'py>, synthetic: bool) -> PyResult<Bound<'py, PyList>> {
        self.full(py, if synthetic { &self.out.synthetic_rows } else { &self.out.rows })
    }

    /// (reason, message, trace hex, span hex, meter codes, account_id, service_name, end_ns,
    /// (resource index, scope index, span index))
    #[getter]
    fn rejections<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let t = &self.core.table;
        let items: Vec<Bound<'py, PyTuple>> = self
            .out
            .rejections
            .iter()
            .map(|r| {
                let codes = PyTuple::new(py, r.meters.iter().map(|&m| t.meters[m].code.as_str()))?;
                (
                    r.reason.as_str(),
                    r.message.as_str(),
                    r.trace_hex.as_str(),
                    r.span_hex.as_str(),
                    codes,
                    r.account_id.as_deref(),
                    r.service_name.as_deref(),
                    r.end_ns,
                    (r.resource_index, r.scope_index, r.span_index),
                )
                    .into_pyobject(py)
            })
            .collect::<PyResult<_>>()?;
        PyList::new(py, items)
    }

    /// [(meter code, count)] in first-seen order
    #[getter]
    fn unattributed(&self) -> Vec<(String, u64)> {
        self.out.unattributed.iter().map(|(m, n)| (self.core.table.meters[*m].code.clone(), *n)).collect()
    }

    /// [(service, operation, outcome, duration_seconds)]
    #[getter]
    fn service_requests(&self) -> Vec<(String, String, String, f64)> {
        let rq = &self.core.table.requests;
        self.out
            .service_requests
            .iter()
            .map(|s| {
                let outcome = if s.error { &rq.outcome_error } else { &rq.outcome_ok };
                (s.service.to_string(), s.operation.clone(), outcome.clone(), s.duration_seconds)
            })
            .collect()
    }
}

/// How many spans an Export request holds, from its framing alone (`None`: not well formed; decode to
/// find out). Releases the GIL; microseconds even for a request of a million spans.
#[pyfunction]
fn count_spans(py: Python<'_>, body: &[u8]) -> Option<u64> {
    py.allow_threads(|| otlp::count_spans(body))
}

#[pymodule]
fn spanmeter_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(count_spans, m)?)?;
    m.add_class::<Meter>()?;
    m.add_class::<MeterResult>()?;
    m.add("NativePanic", m.py().get_type::<NativePanic>())?;
    Ok(())
}
