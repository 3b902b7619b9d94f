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
                    println!("{k:<width$}  {}", cell(Some(v)));
                }
            } else {
                println!("{value}");
            }
        }
    }
}
