//! Bulk enrollment from CSV or newline-delimited JSON (the shape a factory
//! line produces).
//!
//! Columns / fields:
//!
//! | name | required | content |
//! |---|---|---|
//! | `id` | no | 16 hex digits; default `PeripheralId::derive(public_key)` |
//! | `public_key` | yes | 64 hex digits or SubjectPublicKeyInfo PEM |
//! | `group` | no | group name |
//! | `attributes` | no | CSV: `name=value;name=value`; NDJSON: an object of strings |
//! | `status` | no | `active` (default) or `pending` |
//!
//! CSV has a header row; any further column named `attr.NAME` adds the
//! attribute `NAME`. Blank lines are skipped.
//!
//! Semantics: each row is independent. The same row again is `unchanged` (a
//! no-op), so an interrupted import is completed by running it again; a row
//! that conflicts with the registry (same id with other data, same key under
//! another id) is a per-row error and the others go on. Rows are committed in
//! batches, each batch in one transaction; a row is reported (and so
//! acknowledged) only after its batch committed. `dry_run` checks every row
//! against the registry and writes nothing.

use std::collections::BTreeMap;
use std::io::{BufRead, Read};

use serde::{Deserialize, Serialize};
use vouch_proto::keys::PeripheralId;
use vouch_proto::wire::backend::ErrorCode;

use crate::model::{parse_public_key, valid_name, valid_value, Status};
use crate::store::{Conflict, EnrollOutcome, NewPeripheral, Store, StoreError};

/// Input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

impl Format {
    /// Guesses from a file name: `.csv` → CSV, anything else → NDJSON.
    pub fn from_path(p: &std::path::Path) -> Self {
        match p.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Ndjson,
        }
    }
}

/// One peripheral to enroll, as written: a bulk import's row, or the admin
/// API's body for one (`registry::EnrollPeripheral`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRow {
    /// 16 hex digits; default derived from the key.
    #[serde(default)]
    pub id: Option<String>,
    /// 64 hex digits or SPKI PEM.
    pub public_key: String,
    /// Group.
    #[serde(default)]
    pub group: Option<String>,
    /// Attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// `active` (default) or `pending`.
    #[serde(default)]
    pub status: Option<String>,
}

/// A row error: stable code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct RowError {
    /// Stable code (`invalid_public_key`, `peripheral_exists`, …).
    #[serde(serialize_with = "crate::error::serialize_code")]
    #[schemars(with = "String")]
    pub code: ErrorCode,
    /// Human-readable.
    pub message: String,
}

impl RowError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Validates a raw row into an enrollment (parse, don't validate).
pub fn parse_row(raw: &RawRow) -> Result<NewPeripheral, RowError> {
    let public_key = parse_public_key(&raw.public_key)
        .map_err(|e| RowError::new(ErrorCode::InvalidPublicKey, e.to_string()))?;
    let id = match raw.id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => PeripheralId::from_hex(s)
            .ok_or_else(|| RowError::new(ErrorCode::InvalidId, "id must be 16 hex digits"))?,
        None => PeripheralId::derive(&public_key),
    };
    let group = match raw
        .group
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(g) if valid_name(g) => Some(g.to_owned()),
        Some(_) => {
            return Err(RowError::new(
                ErrorCode::InvalidGroup,
                "group must be 1-128 printable characters",
            ))
        }
        None => None,
    };
    for (k, v) in &raw.attributes {
        if !valid_name(k) || !valid_value(v) {
            return Err(RowError::new(
                ErrorCode::InvalidAttribute,
                "attribute names are 1-128 and values at most 1024 printable characters",
            ));
        }
    }
    if raw.attributes.len() > 64 {
        return Err(RowError::new(
            ErrorCode::InvalidAttribute,
            "at most 64 attributes",
        ));
    }
    let status = match raw.status.as_deref().map(str::trim) {
        None | Some("") | Some("active") => Status::Active,
        Some("pending") => Status::Pending,
        Some(_) => {
            return Err(RowError::new(
                ErrorCode::InvalidStatus,
                "status must be active or pending",
            ))
        }
    };
    Ok(NewPeripheral {
        id,
        public_key,
        group,
        attributes: raw.attributes.clone(),
        status,
    })
}

/// Input rows with their line numbers; rows that did not parse are errors in place.
pub type Rows = Vec<(usize, Result<RawRow, RowError>)>;

/// Reads every row of `input`. Rows that do not even parse are returned as
/// errors in place, so the report keeps their line numbers; that includes a
/// line that is not UTF-8 (`invalid_utf8`), which costs only its own row.
/// The only error is one reading `input` itself.
pub fn read_rows(input: impl Read, format: Format) -> Result<Rows, std::io::Error> {
    match format {
        Format::Ndjson => {
            let mut out = Vec::new();
            let mut reader = std::io::BufReader::new(input);
            let mut buf = Vec::new();
            let mut number = 0;
            loop {
                buf.clear();
                if reader.read_until(b'\n', &mut buf)? == 0 {
                    break;
                }
                number += 1;
                let bytes = buf.strip_suffix(b"\n").unwrap_or(&buf);
                let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
                let line = match std::str::from_utf8(bytes) {
                    Ok(l) => l,
                    Err(e) => {
                        let at = e.valid_up_to();
                        out.push((number, Err(invalid_utf8(format!("at byte {}", at + 1)))));
                        continue;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                let row = serde_json::from_str::<RawRow>(line).map_err(|e| {
                    RowError::new(
                        ErrorCode::InvalidRow,
                        format!("not a valid row object: {e}"),
                    )
                });
                out.push((number, row));
            }
            Ok(out)
        }
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .flexible(false)
                .trim(csv::Trim::All)
                .from_reader(input);
            let headers = match rdr.headers() {
                Ok(h) => h.clone(),
                Err(e) => {
                    return Ok(vec![(
                        1,
                        Err(RowError::new(
                            ErrorCode::InvalidCsv,
                            format!("bad header row: {e}"),
                        )),
                    )])
                }
            };
            let mut out = Vec::new();
            let mut record = csv::ByteRecord::new();
            let mut next_line = 2;
            loop {
                let more = match rdr.read_byte_record(&mut record) {
                    Ok(more) => more,
                    Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                        return Err(std::io::Error::other(e.to_string()));
                    }
                    Err(e) => {
                        let line = e.position().map_or(next_line, |p| p.line() as usize);
                        next_line = line + 1;
                        out.push((
                            line,
                            Err(RowError::new(ErrorCode::InvalidCsv, e.to_string())),
                        ));
                        continue;
                    }
                };
                if !more {
                    break;
                }
                let line = record.position().map_or(next_line, |p| p.line() as usize);
                next_line = line + 1;
                let row = match csv::StringRecord::from_byte_record(record.clone()) {
                    Ok(rec) => csv_row(&headers, &rec),
                    Err(e) => Err(invalid_utf8(format!(
                        "in column {}, at byte {}",
                        e.utf8_error().field() + 1,
                        e.utf8_error().valid_up_to() + 1
                    ))),
                };
                out.push((line, row));
            }
            Ok(out)
        }
    }
}

fn invalid_utf8(where_: String) -> RowError {
    RowError::new(
        ErrorCode::InvalidUtf8,
        format!("the row is not valid UTF-8 ({where_}); the other rows are read on"),
    )
}

fn csv_row(headers: &csv::StringRecord, rec: &csv::StringRecord) -> Result<RawRow, RowError> {
    let mut raw = RawRow::default();
    let mut have_key = false;
    for (h, v) in headers.iter().zip(rec.iter()) {
        match h {
            "id" => raw.id = Some(v.to_owned()),
            "public_key" => {
                raw.public_key = v.to_owned();
                have_key = true;
            }
            "group" => raw.group = Some(v.to_owned()),
            "status" => raw.status = Some(v.to_owned()),
            "attributes" => {
                for pair in v.split(';').filter(|p| !p.trim().is_empty()) {
                    let (k, val) = pair.split_once('=').ok_or_else(|| {
                        RowError::new(
                            ErrorCode::InvalidAttribute,
                            "attributes must be name=value;name=value",
                        )
                    })?;
                    raw.attributes
                        .insert(k.trim().to_owned(), val.trim().to_owned());
                }
            }
            other => match other.strip_prefix("attr.") {
                Some(name) if !v.is_empty() => {
                    raw.attributes.insert(name.to_owned(), v.to_owned());
                }
                Some(_) => {}
                None => {
                    return Err(RowError::new(
                        ErrorCode::InvalidCsv,
                        format!("unknown column {other:?}"),
                    ))
                }
            },
        }
    }
    if !have_key {
        return Err(RowError::new(
            ErrorCode::InvalidCsv,
            "missing public_key column",
        ));
    }
    Ok(raw)
}

/// The result of one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct RowReport {
    /// Line number in the input (1-based; CSV counts the header).
    pub line: usize,
    /// The peripheral id, when the row parsed.
    pub id: Option<String>,
    /// `created`, `unchanged`, `would_create` (dry run) or `error`.
    pub result: &'static str,
    /// The error, for `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RowError>,
}

/// Totals of an import.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Summary {
    /// Rows read.
    pub rows: usize,
    /// Rows enrolled (or, in a dry run, that would be).
    pub created: usize,
    /// Rows already present, identical.
    pub unchanged: usize,
    /// Rows refused.
    pub errors: usize,
    /// Whether nothing was written.
    pub dry_run: bool,
}

fn conflict_error(c: Conflict) -> RowError {
    match c {
        Conflict::PeripheralId => RowError::new(
            ErrorCode::PeripheralExists,
            "this id is enrolled with a different key, group or attributes",
        ),
        Conflict::PeripheralKey => RowError::new(
            ErrorCode::PublicKeyInUse,
            "this public key is enrolled under another id",
        ),
        other => RowError::new(ErrorCode::Conflict, other.to_string()),
    }
}

/// Runs an import. `on_commit` is called with each batch's reports right
/// after the batch committed (or, in a dry run, was checked).
pub async fn run(
    store: &Store,
    rows: Rows,
    dry_run: bool,
    batch_size: usize,
    actor: &str,
    mut on_commit: impl FnMut(&[RowReport]),
) -> Result<Summary, StoreError> {
    let mut summary = Summary {
        dry_run,
        ..Summary::default()
    };
    for chunk in rows.chunks(batch_size.max(1)) {
        let parsed: Vec<(usize, Result<NewPeripheral, RowError>)> = chunk
            .iter()
            .map(|(line, raw)| {
                (
                    *line,
                    raw.as_ref().map_err(Clone::clone).and_then(parse_row),
                )
            })
            .collect();
        let mut reports = Vec::with_capacity(parsed.len());
        if dry_run {
            for (line, row) in parsed {
                reports.push(match row {
                    Err(e) => error_report(line, None, e),
                    Ok(p) => match store.check_enrollment(&p).await? {
                        Ok(EnrollOutcome::Created) => ok_report(line, &p, "would_create"),
                        Ok(EnrollOutcome::Unchanged) => ok_report(line, &p, "unchanged"),
                        Err(c) => error_report(line, Some(&p), conflict_error(c)),
                    },
                });
            }
        } else {
            let mut tx = store.begin_write().await?;
            // New rows, the usual case, in a few statements; anything else
            // (a row already enrolled, a conflict) row by row, which says
            // what each row is.
            let new: Vec<NewPeripheral> = parsed
                .iter()
                .filter_map(|(_, row)| row.as_ref().ok().cloned())
                .collect();
            if !new.is_empty() && tx.enroll_new_peripherals(&new, actor).await? {
                for (line, row) in parsed {
                    reports.push(match row {
                        Err(e) => error_report(line, None, e),
                        Ok(p) => ok_report(line, &p, "created"),
                    });
                }
                tx.commit().await?;
                count(&mut summary, &reports);
                on_commit(&reports);
                continue;
            }
            for (line, row) in parsed {
                reports.push(match row {
                    Err(e) => error_report(line, None, e),
                    Ok(p) => match tx.enroll_peripheral(&p, actor).await {
                        Ok(EnrollOutcome::Created) => ok_report(line, &p, "created"),
                        Ok(EnrollOutcome::Unchanged) => ok_report(line, &p, "unchanged"),
                        Err(StoreError::Conflict(c)) => {
                            error_report(line, Some(&p), conflict_error(c))
                        }
                        Err(e) => return Err(e),
                    },
                });
            }
            tx.commit().await?;
        }
        count(&mut summary, &reports);
        on_commit(&reports);
    }
    Ok(summary)
}

/// Adds a batch's reports to the summary.
fn count(summary: &mut Summary, reports: &[RowReport]) {
    for r in reports {
        summary.rows += 1;
        match r.result {
            "created" | "would_create" => summary.created += 1,
            "unchanged" => summary.unchanged += 1,
            _ => summary.errors += 1,
        }
    }
}

fn ok_report(line: usize, p: &NewPeripheral, result: &'static str) -> RowReport {
    RowReport {
        line,
        id: Some(p.id.to_string()),
        result,
        error: None,
    }
}

fn error_report(line: usize, p: Option<&NewPeripheral>, e: RowError) -> RowReport {
    RowReport {
        line,
        id: p.map(|p| p.id.to_string()),
        result: "error",
        error: Some(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vouch_proto::keys::IdentityKey;

    fn key(i: u8) -> String {
        IdentityKey::from_seed(&[i; 32]).public_key().to_string()
    }

    #[test]
    fn csv_rows_parse_with_attributes_and_errors_in_place() {
        let csv = format!(
            "id,public_key,group,attributes,attr.site\n,{},meters,fw=1.2;hw=b,plant\n00112233,{},,,\n,nothex,,,\n",
            key(1),
            key(2)
        );
        let rows = read_rows(csv.as_bytes(), Format::Csv).unwrap();
        assert_eq!(rows.len(), 3);
        let first = parse_row(rows[0].1.as_ref().unwrap()).unwrap();
        assert_eq!(first.group.as_deref(), Some("meters"));
        assert_eq!(first.attributes.get("fw").map(String::as_str), Some("1.2"));
        assert_eq!(
            first.attributes.get("site").map(String::as_str),
            Some("plant")
        );
        assert_eq!(
            first.id,
            PeripheralId::derive(&IdentityKey::from_seed(&[1; 32]).public_key())
        );
        assert_eq!(
            parse_row(rows[1].1.as_ref().unwrap()).unwrap_err().code,
            "invalid_id"
        );
        assert_eq!(
            parse_row(rows[2].1.as_ref().unwrap()).unwrap_err().code,
            "invalid_public_key"
        );
        assert_eq!(rows[2].0, 4);
    }

    #[test]
    fn ndjson_rows_parse_and_unknown_fields_are_errors() {
        let nd = format!(
            "{{\"public_key\":\"{}\",\"attributes\":{{\"a\":\"b\"}}}}\n\n{{\"public_key\":\"{}\",\"colour\":\"red\"}}\nnot json\n",
            key(1),
            key(2)
        );
        let rows = read_rows(nd.as_bytes(), Format::Ndjson).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].1.is_ok());
        assert_eq!(rows[1].0, 3);
        assert_eq!(rows[1].1.as_ref().unwrap_err().code, "invalid_row");
        assert_eq!(rows[2].1.as_ref().unwrap_err().code, "invalid_row");
    }

    /// Issue 16: one line of invalid UTF-8 is that line's error, with its
    /// number; the lines around it are read (NDJSON and CSV, CRLF too).
    #[test]
    fn an_invalid_utf8_line_is_its_own_error() {
        let mut nd = format!("{{\"public_key\":\"{}\"}}\r\n", key(1)).into_bytes();
        nd.extend_from_slice(b"{\"public_key\":\"\xff\xfe\"}\n");
        nd.extend_from_slice(format!("{{\"public_key\":\"{}\"}}\n", key(2)).as_bytes());
        let rows = read_rows(&nd[..], Format::Ndjson).unwrap();
        let lines: Vec<usize> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, [1, 2, 3]);
        assert!(rows[0].1.is_ok() && rows[2].1.is_ok());
        let err = rows[1].1.as_ref().unwrap_err();
        assert_eq!(err.code, "invalid_utf8");
        assert!(err.message.contains("byte 16"), "{}", err.message);

        let mut csv = format!("public_key,group\n{},a\n", key(1)).into_bytes();
        csv.extend_from_slice(format!("{},", key(2)).as_bytes());
        csv.extend_from_slice(b"\xc3\x28\n");
        csv.extend_from_slice(format!("{},b\n", key(3)).as_bytes());
        let rows = read_rows(&csv[..], Format::Csv).unwrap();
        let lines: Vec<usize> = rows.iter().map(|r| r.0).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert!(rows[0].1.is_ok() && rows[2].1.is_ok());
        let err = rows[1].1.as_ref().unwrap_err();
        assert_eq!(err.code, "invalid_utf8");
        assert!(err.message.contains("column 2"), "{}", err.message);
    }
}
