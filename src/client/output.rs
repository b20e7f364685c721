//! What the client commands print for people: aligned tables, durations
//! written short (`4m 32s`), and durations read (`90s`, `10m`, `1h`, or
//! plain seconds).
//!
//! Every byte the client commands write goes through here (`outln!`,
//! `errln!`, [`Table::print`], [`print_json`], [`json_line`]), for two
//! reasons:
//! - Text from the server (client names, users, reasons, messages) is the
//!   typing of anyone who can reach it: a control character in it could
//!   clear the reader's screen, forge a line or a colour. Every line and
//!   table cell is passed through [`visible`], which writes control
//!   characters as text (`\e`, `\n`, `\u{7}`); JSON keeps its own
//!   escapes (`\u001b`), with the few JSON leaves raw written as `\uXXXX`.
//! - A reader that goes away (`lablink status | head -1`) ends the command
//!   quietly, as SIGPIPE ends Unix tools (status 141, nothing on stderr),
//!   instead of a panic. SIGPIPE itself stays ignored, as Rust sets it:
//!   the client's own sockets rely on that.

use serde_json::Value;
use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

/// Prints one line on stdout, its text made [`visible`] (a newline inside
/// it is written `\n`, so one call is always one line).
macro_rules! outln {
    () => {
        $crate::client::output::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::client::output::out_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Prints one line on stderr, its text made [`visible`]. A stderr that
/// cannot be written is ignored: `run` must still clean up after it.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::client::output::err_line(format_args!($($arg)*))
    };
}
pub(crate) use errln;

/// `text` with every control character written visibly: ESC as `\e`,
/// newline, carriage return and tab as `\n`, `\r`, `\t`, the others
/// (C0, DEL, C1, the bidirectional overrides that reorder what a terminal
/// shows, the line and paragraph separators U+2028/U+2029 that some
/// terminals break lines at, and the zero-width characters U+200B–U+200F
/// and U+FEFF that take no column and so misalign a table) as `\u{7}`.
/// Borrowed when there is none.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\u{1b}' => out.push_str("\\e"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether a terminal would act on `c` (or show nothing for it) rather
/// than show it in one column.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// A JSON text with what [`visible`] hides and JSON leaves raw (DEL, C1,
/// bidirectional overrides: JSON escapes only U+0000 to U+001F) written as
/// `\uXXXX`, the same string to any JSON reader. Those characters occur
/// only inside JSON strings, so this never touches the structure.
fn json_visible(json: String) -> String {
    if !json.chars().any(hidden) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 12);
    for c in json.chars() {
        if hidden(c) && !matches!(c, '\n') {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `value` as one line of JSON (JSON Lines), made safe to show.
pub fn json_line(value: &Value) -> String {
    json_visible(value.to_string())
}

/// Prints `value` as pretty JSON, made safe to show.
pub fn print_json(value: &Value) {
    let mut text = json_visible(serde_json::to_string_pretty(value).unwrap_or_default());
    text.push('\n');
    write_stdout(&text);
}

#[doc(hidden)]
pub fn out_line(args: std::fmt::Arguments) {
    let mut line = visible(&args.to_string()).into_owned();
    line.push('\n');
    write_stdout(&line);
}

#[doc(hidden)]
pub fn err_line(args: std::fmt::Arguments) {
    let mut line = visible(&args.to_string()).into_owned();
    line.push('\n');
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Writes `text` (already safe) on stdout, at once (followers pipe into
/// `grep`). A closed pipe ends the process quietly with 141 (128 +
/// SIGPIPE, what a shell reports for a tool SIGPIPE ended); any other
/// failure to write is said on stderr and exits 1.
pub fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(
            super::exit::signalled(nix::sys::signal::Signal::SIGPIPE as i32),
        ),
        Err(e) => {
            err_line(format_args!("lablink: cannot write to stdout: {e}"));
            std::process::exit(super::exit::ERROR)
        }
    }
}

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

    /// A row; each cell made [`visible`], so a newline in a name cannot
    /// break the table.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|c| visible(c).into_owned()).collect());
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
        write_stdout(&self.render());
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
    fn control_characters_are_written_visibly() {
        assert_eq!(
            visible("\u{1b}[2J\u{1b}[31mPWNED\u{1b}[0m"),
            "\\e[2J\\e[31mPWNED\\e[0m"
        );
        assert_eq!(visible("a\u{7}\nb\r\tc"), "a\\u{7}\\nb\\r\\tc");
        assert_eq!(
            visible("\u{0}\u{7f}\u{9b}\u{202e}x"),
            "\\u{0}\\u{7f}\\u{9b}\\u{202e}x"
        );
        assert!(matches!(
            visible("Lab PC #3 µ"),
            Cow::Borrowed("Lab PC #3 µ")
        ));
    }

    #[test]
    fn separators_and_zero_width_characters_are_written_visibly() {
        assert_eq!(
            visible("a\u{2028}b\u{2029}c\u{200b}d\u{200f}e\u{feff}f"),
            r"a\u{2028}b\u{2029}c\u{200b}d\u{200f}e\u{feff}f"
        );
        // A table stays aligned: each escaped cell is as wide as it prints.
        let mut table = Table::new(&["USER", "STATE"]);
        table.row(vec!["a\u{200b}\u{200b}b".into(), "x".into()]);
        table.row(vec!["abcd".into(), "y".into()]);
        let text = table.render();
        let state_at: Vec<usize> = text.lines().map(|l| l.rfind("  ").unwrap()).collect();
        assert!(state_at.windows(2).all(|w| w[0] == w[1]), "{text}");
        let line = json_line(&json!({"user": "a\u{2028}b\u{feff}"}));
        assert_eq!(line, r#"{"user":"a\u2028b\ufeff"}"#);
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap()["user"],
            "a\u{2028}b\u{feff}"
        );
    }

    #[test]
    fn json_keeps_its_meaning_with_nothing_hidden_left_raw() {
        let value = json!({"client_name": "\u{1b}[2Ja\nb\u{9b}c\u{7f}\u{202e}"});
        let line = json_line(&value);
        assert!(!line.chars().any(hidden), "{line}");
        assert_eq!(
            line,
            r#"{"client_name":"\u001b[2Ja\nb\u009bc\u007f\u202e"}"#
        );
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), value);
    }

    #[test]
    fn a_newline_in_a_cell_cannot_break_a_table_row() {
        let mut table = Table::new(&["CLIENT", "USER"]);
        table.row(vec!["a\nb".into(), "\u{1b}[31mred".into()]);
        assert_eq!(table.render(), "CLIENT  USER\na\\nb    \\e[31mred\n");
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
