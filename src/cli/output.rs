//! What client commands print for people: tables of lists (one column per field), and an
//! object's fields as `key: value` lines with its nested objects indented and its lists of
//! objects as tables. `--json` bypasses all of it.

use serde_json::Value;

/// Columns of a webhook in tables.
pub(super) const WEBHOOK_COLUMNS: &[&str] = &[
    "id",
    "organization_id",
    "url",
    "events",
    "active",
    "disabled",
    "description",
];
/// Columns of a delivery.
pub(super) const DELIVERY_COLUMNS: &[&str] = &[
    "id",
    "event_type",
    "event_id",
    "status",
    "last_outcome",
    "attempt_count",
    "created_at",
    "next_attempt_at",
];
/// Columns of an attempt (a delivery's `attempts`).
pub(super) const ATTEMPT_COLUMNS: &[&str] = &[
    "number",
    "started_at",
    "duration_ms",
    "status_code",
    "error",
    "trigger",
    "error_detail",
    "response_body",
];
/// Columns of an event.
pub(super) const EVENT_COLUMNS: &[&str] = &[
    "event_id",
    "event_type",
    "organization_id",
    "timestamp",
    "received_at",
];
/// Columns of an API key.
pub(super) const KEY_COLUMNS: &[&str] = &["id", "organization_id", "description", "created_at"];
/// Columns of a recovery or replay job.
pub(super) const JOB_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "webhook_id",
    "state",
    "matched",
    "queued",
    "succeeded",
    "failed",
    "created_at",
];
/// Columns of a failing streak (`status`).
pub(super) const STREAK_COLUMNS: &[&str] = &["webhook_id", "organization_id", "streak", "url"];

/// How many characters of an attempt's response body a table shows.
const BODY_CELL_CHARS: usize = 60;

/// A JSON value as a table cell: `-` for null and empty, lists comma-separated.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => printable(s),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        // A disabled webhook's `disabled` object: its reason.
        Value::Object(map) if map.contains_key("reason") => cell(&map["reason"]),
        other => other.to_string(),
    }
}

/// `text` safe for a terminal: control characters (escape sequences, carriage returns, NUL)
/// and bidirectional overrides written as escapes (`\n`, `\u{1b}`), so what a receiver
/// answered, or any stored string, cannot move the cursor, retitle or clear the terminal of
/// the person reading it.
pub(super) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&c.escape_unicode().to_string())
            }
            c => out.push(c),
        }
    }
    out
}

/// An attempt's response body on one line, cut at [`BODY_CELL_CHARS`] characters.
fn body_cell(value: &Value) -> String {
    let text = cell(value);
    if text.chars().count() > BODY_CELL_CHARS {
        let cut: String = text.chars().take(BODY_CELL_CHARS).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Prints `rows` as a table of `columns` (headers uppercase, columns padded).
pub(super) fn print_table(rows: &[Value], columns: &[&str]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| match *c {
                    "response_body" => body_cell(&r[*c]),
                    _ => cell(&r[*c]),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |values: Vec<String>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in cells {
        line(row);
    }
}

/// Prints an API answer for people: `done` for none, a table for a list or a page (then the
/// next page's cursor), `key: value` lines for an object.
pub(super) fn print_human(value: &Value, columns: &[&str]) {
    match value {
        Value::Null => out!("done"),
        Value::Array(rows) => print_table(rows, columns),
        Value::Object(map) if map.get("data").is_some_and(Value::is_array) => {
            print_table(
                map["data"].as_array().map_or(&[][..], Vec::as_slice),
                columns,
            );
            if let Some(cursor) = map.get("next_cursor").and_then(Value::as_str) {
                out!("\nnext page: --cursor {cursor}");
            }
        }
        Value::Object(map) => {
            print_object(map, "");
            if map.contains_key("secret") || map.contains_key("key") {
                out!("\nStore this secret now: it is shown only once.");
            }
        }
        other => out!("{other}"),
    }
}

/// Prints an object's scalar fields as `key: value` lines first, then its nested objects
/// (indented) and lists of objects (as tables).
pub(super) fn print_object(map: &serde_json::Map<String, Value>, indent: &str) {
    for (key, v) in map {
        match v {
            Value::Object(_) => {}
            Value::Array(rows) if rows.first().is_some_and(Value::is_object) => {}
            Value::Array(rows) if rows.is_empty() && key == "failure_streaks" => {
                out!("{indent}{key}: none")
            }
            _ if key == "data" || key == "filter" => out!("{indent}{key}: {v}"),
            _ => out!("{indent}{key}: {}", cell(v)),
        }
    }
    for (key, v) in map {
        match v {
            // An event's data and a webhook's filter read best as the JSON they are.
            Value::Object(inner) if key == "data" || key == "filter" => {
                out!("{indent}{key}: {}", Value::Object(inner.clone()))
            }
            Value::Object(inner) => {
                out!("{indent}{key}:");
                print_object(inner, &format!("{indent}  "));
            }
            Value::Array(rows) if rows.first().is_some_and(Value::is_object) => {
                out!("{indent}{key}:");
                let columns = match key.as_str() {
                    "attempts" => ATTEMPT_COLUMNS,
                    "failure_streaks" => STREAK_COLUMNS,
                    "daemons" => &["id", "address"][..],
                    "headers" => &["name", "value", "secret"][..],
                    _ => &["id", "webhook_id", "status"][..],
                };
                print_table(rows, columns);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_control_characters_are_escaped() {
        assert_eq!(
            printable("ok\u{1b}]0;title\u{7}\u{1b}[2J\r\nx\u{0}\u{202e}y"),
            "ok\\u{1b}]0;title\\u{7}\\u{1b}[2J\\r\\nx\\u{0}\\u{202e}y"
        );
        assert_eq!(printable("Café ☕ tab\there"), "Café ☕ tab\\there");
    }
}
