//! The SCPI codec: pure functions on bytes and text, no I/O. Framing of
//! replies (a line ending in `\n`, or an IEEE 488.2 definite-length block
//! `#<n><length><bytes>`), and the value formats instruments use: numbers
//! (NR1/NR2/NR3, `+1.234E+01`), booleans (`1`/`0`/`ON`/`OFF`), strings,
//! comma-separated lists, and binary blocks.

/// One complete reply from an instrument.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A line, without its terminator (`\n`, optionally preceded by `\r`).
    Line(String),
    /// The payload of a definite-length block.
    Block(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("malformed block header: {0}")]
    BadBlockHeader(String),
    #[error("reply is not text: {0}")]
    NotText(String),
    #[error("cannot read {expected} from reply {reply:?}")]
    Unparseable {
        expected: &'static str,
        reply: String,
    },
    #[error("reply longer than {0} bytes")]
    TooLong(usize),
}

/// The largest reply accepted (a long waveform fits; a runaway stream doesn't).
pub const MAX_REPLY: usize = 64 << 20;

/// Decodes one reply from the front of `buf`. `Ok(None)`: not complete yet,
/// read more. `Ok(Some((reply, used)))`: `used` bytes form the reply
/// (including a trailing newline after a block, if present).
pub fn decode(buf: &[u8]) -> Result<Option<(Reply, usize)>, CodecError> {
    if buf.first() == Some(&b'#') {
        return decode_block(buf);
    }
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let line = &buf[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let text = std::str::from_utf8(line)
                .map_err(|_| CodecError::NotText(String::from_utf8_lossy(line).into_owned()))?;
            Ok(Some((Reply::Line(text.to_owned()), end + 1)))
        }
        None if buf.len() > MAX_REPLY => Err(CodecError::TooLong(MAX_REPLY)),
        None => Ok(None),
    }
}

fn decode_block(buf: &[u8]) -> Result<Option<(Reply, usize)>, CodecError> {
    let Some(&digits) = buf.get(1) else {
        return Ok(None);
    };
    let n = (digits as char)
        .to_digit(10)
        .filter(|n| *n > 0)
        .ok_or_else(|| CodecError::BadBlockHeader(format!("#{}", digits as char)))?
        as usize;
    let Some(len_text) = buf.get(2..2 + n) else {
        return Ok(None);
    };
    let len: usize = std::str::from_utf8(len_text)
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            CodecError::BadBlockHeader(String::from_utf8_lossy(&buf[..2 + n]).into_owned())
        })?;
    if len > MAX_REPLY {
        return Err(CodecError::TooLong(MAX_REPLY));
    }
    let start = 2 + n;
    let Some(payload) = buf.get(start..start + len) else {
        return Ok(None);
    };
    let mut used = start + len;
    // A terminator after the block belongs to it; wait for it if it may come.
    match buf.get(used) {
        Some(b'\n') => used += 1,
        Some(b'\r') if buf.get(used + 1) == Some(&b'\n') => used += 2,
        Some(b'\r') if buf.len() == used + 1 => return Ok(None),
        None => return Ok(None),
        _ => {}
    }
    Ok(Some((Reply::Block(payload.to_vec()), used)))
}

/// Encodes a definite-length block (`#<n><length><payload>`).
pub fn encode_block(payload: &[u8]) -> Vec<u8> {
    let len = payload.len().to_string();
    let mut out = format!("#{}{}", len.len(), len).into_bytes();
    out.extend_from_slice(payload);
    out
}

fn text(reply: &Reply) -> Result<&str, CodecError> {
    match reply {
        Reply::Line(s) => Ok(s.trim()),
        Reply::Block(b) => Err(CodecError::NotText(format!("a {}-byte block", b.len()))),
    }
}

/// Parses an NR1/NR2/NR3 number (`12`, `-0.5`, `+1.234E+01`), also
/// `9.9E37`-style overflow markers as they are.
pub fn parse_number(raw: &str) -> Result<f64, CodecError> {
    let t = raw.trim();
    t.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .filter(|_| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        })
        .ok_or_else(|| CodecError::Unparseable {
            expected: "a number",
            reply: raw.into(),
        })
}

pub fn parse_bool(raw: &str) -> Result<bool, CodecError> {
    match raw.trim().to_ascii_uppercase().as_str() {
        "1" | "ON" | "+1" => Ok(true),
        "0" | "OFF" | "+0" => Ok(false),
        _ => Err(CodecError::Unparseable {
            expected: "a boolean (1/0/ON/OFF)",
            reply: raw.into(),
        }),
    }
}

/// A string reply, without surrounding double quotes if it has them.
pub fn parse_string(raw: &str) -> String {
    let t = raw.trim();
    t.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .map(|s| s.replace("\"\"", "\""))
        .unwrap_or_else(|| t.to_owned())
}

pub fn parse_list(raw: &str) -> Result<Vec<f64>, CodecError> {
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    raw.split(',').map(parse_number).collect()
}

/// A block of little-endian 32-bit floats (how the simulated scope, and
/// many real ones with `FORM REAL,32`, send waveforms).
pub fn parse_f32_block(payload: &[u8]) -> Result<Vec<f64>, CodecError> {
    if !payload.len().is_multiple_of(4) {
        return Err(CodecError::Unparseable {
            expected: "a block of 4-byte floats",
            reply: format!("{} bytes", payload.len()),
        });
    }
    Ok(payload
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect())
}

pub fn encode_f32_block(values: &[f64]) -> Vec<u8> {
    let payload: Vec<u8> = values
        .iter()
        .flat_map(|v| (*v as f32).to_le_bytes())
        .collect();
    encode_block(&payload)
}

/// How a query's reply is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    Number,
    Boolean,
    String,
    List,
    /// A definite-length block, returned as its length and hex bytes.
    Block,
    /// A definite-length block of little-endian f32 values.
    BlockF32,
}

/// Reads `reply` as `kind`, into JSON.
pub fn interpret(reply: &Reply, kind: ReplyKind) -> Result<serde_json::Value, CodecError> {
    use serde_json::json;
    Ok(match kind {
        ReplyKind::Number => json!(parse_number(text(reply)?)?),
        ReplyKind::Boolean => json!(parse_bool(text(reply)?)?),
        ReplyKind::String => json!(parse_string(text(reply)?)),
        ReplyKind::List => json!(parse_list(text(reply)?)?),
        ReplyKind::Block | ReplyKind::BlockF32 => {
            let Reply::Block(payload) = reply else {
                return Err(CodecError::Unparseable {
                    expected: "a #-block",
                    reply: text(reply)?.into(),
                });
            };
            if kind == ReplyKind::BlockF32 {
                json!(parse_f32_block(payload)?)
            } else {
                let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
                json!({"length": payload.len(), "hex": hex})
            }
        }
    })
}

/// Whether a `SYST:ERR?` reply means "no error" (`0,"No error"`, `+0,...`).
/// Whether `reply` has the shape of an error-queue entry: a whole number,
/// a comma, then text (`-113,"Undefined header"`, `0,"No error"`).
pub fn is_error_entry(reply: &str) -> bool {
    reply
        .split_once(',')
        .is_some_and(|(code, _)| code.trim().parse::<i64>().is_ok())
}

pub fn is_no_error(reply: &str) -> bool {
    let code = reply.split(',').next().unwrap_or("").trim();
    code.parse::<i64>().is_ok_and(|c| c == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_framed_by_newline() {
        assert_eq!(decode(b"1.5"), Ok(None));
        assert_eq!(
            decode(b"1.5\r\nrest"),
            Ok(Some((Reply::Line("1.5".into()), 5)))
        );
        assert_eq!(decode(b"\n"), Ok(Some((Reply::Line(String::new()), 1))));
        assert!(matches!(decode(b"\xff\xfe\n"), Err(CodecError::NotText(_))));
    }

    #[test]
    fn definite_length_blocks() {
        let block = b"#210abcdefghij\n";
        assert_eq!(decode(&block[..5]), Ok(None));
        assert_eq!(decode(&block[..12]), Ok(None), "payload incomplete");
        assert_eq!(decode(&block[..14]), Ok(None), "a terminator may follow");
        assert_eq!(
            decode(block),
            Ok(Some((Reply::Block(b"abcdefghij".to_vec()), 15)))
        );
        assert_eq!(
            decode(b"#15hello#1"),
            Ok(Some((Reply::Block(b"hello".to_vec()), 8)))
        );
        // The binary payload may hold newlines.
        assert_eq!(
            decode(b"#13a\nb\n"),
            Ok(Some((Reply::Block(b"a\nb".to_vec()), 7)))
        );
        let long = encode_block(&vec![7u8; 1000]);
        assert_eq!(&long[..6], b"#41000");
        assert!(matches!(
            decode(b"#0xyz"),
            Err(CodecError::BadBlockHeader(_))
        ));
        assert!(matches!(
            decode(b"#2a1xyz"),
            Err(CodecError::BadBlockHeader(_))
        ));
        assert!(matches!(
            decode(b"#9999999999"),
            Err(CodecError::TooLong(_))
        ));
    }

    #[test]
    fn values_table() {
        for (raw, want) in [
            ("12", 12.0),
            ("-0.5", -0.5),
            ("+1.234E+01", 12.34),
            (" 3e-3 ", 0.003),
        ] {
            assert_eq!(parse_number(raw), Ok(want), "{raw}");
        }
        for bad in ["", "abc", "1,2", "NaN", "inf", "0x10"] {
            assert!(parse_number(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_bool("ON"), Ok(true));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("maybe").is_err());
        assert_eq!(parse_string("\"Keysight,E36313A\""), "Keysight,E36313A");
        assert_eq!(parse_string("\"say \"\"hi\"\"\""), "say \"hi\"");
        assert_eq!(parse_list("1,2.5,-3E0"), Ok(vec![1.0, 2.5, -3.0]));
        assert_eq!(parse_list(""), Ok(vec![]));
        assert!(parse_list("1,,2").is_err());
        let samples = [0.5, -1.25, 3.0];
        let block = encode_f32_block(&samples);
        let Ok(Some((reply, _))) = decode(&[block.as_slice(), b"\n"].concat()) else {
            panic!()
        };
        assert_eq!(
            interpret(&reply, ReplyKind::BlockF32),
            Ok(serde_json::json!(samples))
        );
        assert!(interpret(&Reply::Line("1".into()), ReplyKind::BlockF32).is_err());
        assert!(is_no_error("+0,\"No error\""));
        assert!(is_error_entry("-113,\"Undefined header\"") && is_error_entry("+0,\"No error\""));
        assert!(!is_error_entry("12.0") && !is_error_entry("ON") && !is_error_entry(""));
        assert!(!is_no_error("-222,\"Data out of range\""));
    }
}
