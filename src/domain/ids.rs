//! Identifier newtypes. Parsing happens once, at the edge; the rest of the
//! code can rely on an id being well formed. No I/O, no randomness here:
//! callers that need fresh ids pass them in.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::DomainError;

/// The longest id we accept, in characters (Unicode scalar values, as JSON
/// Schema's `maxLength` counts them), so ids stay cheap to store, log and
/// index.
pub const MAX_ID_LEN: usize = 128;

/// `check_id`'s character rule as an ECMA-262 pattern, for the API document:
/// no whitespace (`\s`) and no control characters (C0, DEL, C1).
pub const ID_PATTERN: &str = r"^[^\s\x00-\x1f\x7f-\x9f]+$";

/// A free text's character rule (a client name, a reason, a message) as
/// an ECMA-262 pattern, for the API document: no control characters.
pub const TEXT_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// The first control character (Unicode category Cc: ESC, BEL, newline,
/// ...) in a free text people will read, if any. Such texts are printed in
/// terminals and tables, where an escape sequence or a line break would act
/// instead of being read; they are refused, not cleaned, so nothing is
/// stored that differs from what the client sent.
pub fn control_character(raw: &str) -> Option<char> {
    raw.chars().find(|c| c.is_control())
}

/// `raw` without its control characters: for a name the client did not
/// choose to send to us (its User-Agent), which is kept rather than refused.
pub fn without_control_characters(raw: &str) -> String {
    raw.chars().filter(|c| !c.is_control()).collect()
}

fn check_id(kind: &'static str, raw: &str) -> Result<(), DomainError> {
    if raw.is_empty() || raw.chars().count() > MAX_ID_LEN {
        return Err(DomainError::InvalidId {
            kind,
            reason: format!("must be 1 to {MAX_ID_LEN} characters"),
        });
    }
    // U+FEFF too: the schema's `\s` (ECMAScript) counts it as whitespace.
    if raw
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\u{feff}')
    {
        return Err(DomainError::InvalidId {
            kind,
            reason: "must not contain whitespace or control characters".into(),
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1..=128 printable characters without whitespace.
            pub fn parse(raw: &str) -> Result<Self, DomainError> {
                Self::parse_field($kind, raw)
            }

            /// As `parse`, for a body field of this kind under another
            /// name (`forced_by`, `with_session_id`): an error names
            /// the field the client wrote.
            pub fn parse_field(field: &'static str, raw: &str) -> Result<Self, DomainError> {
                check_id(field, raw)?;
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A session's id. New sessions get a random UUID v4 (made by the
    /// service); any well-formed string is accepted when parsing, so that a
    /// client naming an unknown session gets a 404, not a format error.
    SessionId,
    "session_id"
);
string_id!(
    /// A registered instrument's id, as written in the configuration.
    EquipmentId,
    "equipment_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_printable_and_reject_the_rest() {
        for ok in ["ps_abc123", "550e8400-e29b-41d4-a716-446655440000", "a"] {
            assert!(EquipmentId::parse(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", "a b", "tab\t", "nl\n", "bom\u{feff}", long.as_str()] {
            assert!(SessionId::parse(bad).is_err(), "{bad:?}");
        }
        // The limit counts characters, as the message says: 128 two-byte
        // characters are 256 bytes and still fit.
        assert!(SessionId::parse(&"é".repeat(MAX_ID_LEN)).is_ok());
        assert!(SessionId::parse(&"é".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn a_field_parse_names_the_field() {
        let err = SessionId::parse_field("forced_by", "x y").unwrap_err();
        assert!(
            matches!(
                err,
                DomainError::InvalidId {
                    kind: "forced_by",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
