//! Human tables and machine JSON for listings.

use serde_json::Value;

use crate::client::Answer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// A listing's column: its header, and its cell made from the typed item.
pub type Column<T> = (&'static str, fn(&T) -> String);

/// Prints a listing as an aligned table of `columns`, or as the broker's JSON documents,
/// one a line.
pub fn list<T>(format: Format, items: &[Answer<T>], columns: &[Column<T>]) {
    match format {
        Format::Json => {
            for item in items {
                println!("{}", item.raw);
            }
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| columns.iter().map(|(_, cell)| cell(&item.typed)).collect())
                .collect();
            let headers: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
            print_table(&headers, &rows);
        }
    }
}

/// A typed value as the API writes it in JSON (`null` if it cannot be written).
pub fn json<T: serde::Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A typed field as a table cell: the cell its JSON form would make.
pub fn field<T: serde::Serialize + ?Sized>(v: &T) -> String {
    cell(Some(&json(v)))
}

/// A timestamp as the API writes it (RFC 3339; the model's `time::serde::rfc3339`).
pub fn time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into())
}

/// A JSON value as a table cell: `-` for nothing, strings unquoted, lists comma-joined.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| cell(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

pub fn print_table(headers: &[String], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers);
    for row in rows {
        line(row);
    }
}

/// Prints one object as `key: value` lines, or as one JSON document.
pub fn object(format: Format, value: &Value) {
    match format {
        Format::Json => println!("{value}"),
        Format::Table => {
            if let Value::Object(map) = value {
                let width = map.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in map {
                    println!("{k:<width$}  {}", field_cell(k, v));
                }
            } else {
                println!("{value}");
            }
        }
    }
}

/// Fields that JWT claims (RFC 7519) and introspection (RFC 7662) write as seconds since
/// the epoch: a table shows them in RFC 3339, like every other time it shows.
const EPOCH_FIELDS: &[&str] = &["exp", "iat", "nbf", "auth_time", "expires_at"];

/// A record's field as a table cell: epoch seconds as RFC 3339, the rest by [`cell`].
fn field_cell(key: &str, v: &Value) -> String {
    if EPOCH_FIELDS.contains(&key) {
        if let Some(t) = v
            .as_i64()
            .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        {
            return time(t);
        }
    }
    cell(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_claims_read_as_rfc3339_in_tables() {
        assert_eq!(
            field_cell("exp", &serde_json::json!(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            field_cell("expires_at", &serde_json::json!("2030-01-01T00:00:00Z")),
            "2030-01-01T00:00:00Z"
        );
        assert_eq!(field_cell("port", &serde_json::json!(5432)), "5432");
    }
}
