//! How every verb prints, so that they all look alike: a list is a table
//! with a header row (columns aligned, `-` for nothing), one result is
//! `field: value` lines, and with the global `--json` either is one JSON
//! document on standard output, in the admin API's shape (a list is
//! `{"items": [...], "next_cursor": ...}`). Hints for people (the next
//! page) go to standard error, never into the data.

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

/// A table: the header, then one row per item, columns separated by two
/// spaces and padded to their widest cell.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// An optional text cell: the value, or `-`.
pub(super) fn cell(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

/// Prints one result: `field: value` lines (nested values as compact
/// JSON), or with `json` the value as one JSON document.
pub(super) fn record<T: Serialize>(json: bool, value: &T) -> Result<()> {
    let value = serde_json::to_value(value)?;
    if json {
        println!("{value}");
        return Ok(());
    }
    print!("{}", record_text(&value));
    Ok(())
}

fn record_text(value: &Value) -> String {
    let Value::Object(map) = value else {
        return format!("{}\n", scalar(value));
    };
    let width = map.keys().map(|k| k.len()).max().unwrap_or(0) + 1;
    map.iter()
        .map(|(k, v)| format!("{:<width$} {}\n", format!("{k}:"), scalar(v)))
        .collect()
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Prints a page of a list: the table (or with `json`, the items and the
/// cursor), and, when there is more, how to ask for it on standard error.
pub(super) fn page<T: Serialize>(
    json: bool,
    items: &[T],
    next_cursor: Option<String>,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::json!({ "items": items, "next_cursor": next_cursor })
        );
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        print!("{}", table(headers, &rows));
    }
    if let Some(c) = next_cursor {
        eprintln!("more: next page with --after {c}");
    }
    Ok(())
}

/// Reads up to `limit` items, page after page of at most `max_page` each
/// (the store's page size): returns them and the cursor of what follows
/// when the limit stopped the reading before the end.
pub(super) async fn collect<T, C, F, Fut>(
    limit: u32,
    max_page: u32,
    mut after: Option<C>,
    cursor_of: impl Fn(&T) -> C,
    mut fetch: F,
) -> Result<(Vec<T>, Option<C>)>
where
    C: Clone,
    F: FnMut(Option<C>, u32) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut out: Vec<T> = Vec::new();
    loop {
        let want = limit.saturating_sub(out.len() as u32);
        if want == 0 {
            // Stopped by the limit: is there anything after the last one?
            let last = out.last().map(&cursor_of).or(after);
            let more = !fetch(last.clone(), 1).await?.is_empty();
            return Ok((out, if more { last } else { None }));
        }
        let ask = want.min(max_page);
        let got = fetch(after.clone(), ask).await?;
        let full = got.len() as u32 == ask;
        after = got.last().map(&cursor_of).or(after);
        out.extend(got);
        if !full {
            return Ok((out, None));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_table_has_a_header_and_aligned_columns() {
        let t = table(
            &["id", "status", "group"],
            &[
                vec!["a".into(), "active".into(), "meters".into()],
                vec!["bbbb".into(), "revoked".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "ID    STATUS   GROUP\na     active   meters\nbbbb  revoked  -\n"
        );
    }

    #[test]
    fn a_record_is_field_value_lines() {
        let v = serde_json::json!({"id": "ab", "outcome": "created", "n": 3, "x": null});
        assert_eq!(
            record_text(&v),
            "id:      ab\nn:       3\noutcome: created\nx:       -\n"
        );
    }

    #[tokio::test]
    async fn collecting_crosses_pages_and_says_when_there_is_more() {
        let data: Vec<u32> = (1..=25).collect();
        let fetch = |after: Option<u32>, n: u32| {
            let page: Vec<u32> = data
                .iter()
                .copied()
                .filter(|v| after.is_none_or(|a| *v > a))
                .take(n as usize)
                .collect();
            async move { Ok(page) }
        };
        // More than a page, less than everything: 12 rows and a cursor.
        let (items, next) = collect(12, 5, None, |v| *v, fetch).await.unwrap();
        assert_eq!(items, (1..=12).collect::<Vec<_>>());
        assert_eq!(next, Some(12));
        // Everything: no cursor, even when the limit equals the count.
        let (items, next) = collect(25, 5, None, |v| *v, fetch).await.unwrap();
        assert_eq!((items.len(), next), (25, None));
        let (items, next) = collect(1000, 5, Some(20), |v| *v, fetch).await.unwrap();
        assert_eq!((items, next), ((21..=25).collect(), None));
    }
}
