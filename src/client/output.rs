//! What the client commands print for people: aligned tables, durations
//! written short (`4m 32s`), and durations read (`90s`, `10m`, `1h`, or
//! plain seconds).

use serde_json::Value;
use std::time::Duration;

/// A table printed with its columns aligned (two spaces between them).
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// `seconds` for people: `45s`, `4m 32s`, `2h 05m`, `3d 4h`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// A `time_remaining` field: a duration, or `no timeout` when null.
pub fn time_left(value: &Value) -> String {
    value
        .as_f64()
        .map(duration)
        .unwrap_or_else(|| "no timeout".into())
}

/// A string field, or `-` when absent or null.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Who holds or waits: `user (client)`, whichever of the two is known.
pub fn who(entry: &Value) -> String {
    match (entry["user"].as_str(), entry["client_name"].as_str()) {
        (Some(user), Some(client)) => format!("{user} ({client})"),
        (Some(user), None) => user.into(),
        (None, Some(client)) => client.into(),
        (None, None) => "-".into(),
    }
}

/// Reads a duration as written on the command line: plain seconds (`90`,
/// `2.5`) or with units (`90s`, `10m`, `1h`, `1h 30m`, `500ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad =
        || format!("{text:?} is not a duration: write seconds (90) or with a unit (90s, 10m, 1h)");
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|_| bad());
    }
    humantime::parse_duration(text).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_plain_seconds_and_units() {
        let secs = |t: &str| parse_duration(t).map(|d| d.as_secs_f64());
        assert_eq!(secs("90"), Ok(90.0));
        assert_eq!(secs("2.5"), Ok(2.5));
        assert_eq!(secs("0"), Ok(0.0));
        assert_eq!(secs("90s"), Ok(90.0));
        assert_eq!(secs("10m"), Ok(600.0));
        assert_eq!(secs("1h"), Ok(3600.0));
        assert_eq!(secs("1h 30m"), Ok(5400.0));
        assert_eq!(secs("500ms"), Ok(0.5));
        for bad in ["", "-5", "ten", "5 parsecs", "NaN", "inf"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("90s, 10m, 1h"), "{bad}: {err}");
        }
    }

    #[test]
    fn durations_print_short() {
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(45.0), "45s");
        assert_eq!(duration(272.0), "4m 32s");
        assert_eq!(duration(7500.0), "2h 05m");
        assert_eq!(duration(3.0 * 86400.0 + 4.0 * 3600.0 + 59.0), "3d 4h");
        assert_eq!(duration(-3.0), "0s");
        assert_eq!(time_left(&json!(null)), "no timeout");
    }

    #[test]
    fn tables_align_every_column_and_leave_no_trailing_spaces() {
        let mut table = Table::new(&["EQUIPMENT", "STATE", "QUEUE"]);
        table.row(vec!["ps_abc123".into(), "locked".into(), "2".into()]);
        table.row(vec!["load_1".into(), "free".into(), "".into()]);
        assert_eq!(
            table.render(),
            "EQUIPMENT  STATE   QUEUE\nps_abc123  locked  2\nload_1     free\n"
        );
    }

    #[test]
    fn who_names_the_user_and_the_client() {
        assert_eq!(
            who(&json!({"user": "alice", "client_name": "PC 3"})),
            "alice (PC 3)"
        );
        assert_eq!(who(&json!({"user": null, "client_name": "PC 3"})), "PC 3");
        assert_eq!(who(&json!({})), "-");
    }
}
