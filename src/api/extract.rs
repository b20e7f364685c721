//! Extractors whose rejections speak our error format: malformed JSON or a
//! wrong field type is 422, a body over the limit 413, a bad query 422, a
//! plain request to the WebSocket endpoint 400. Every message names the
//! field or parameter and says what it expects, in the client's terms
//! (JSON types, not Rust types).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use super::edge::AccessNote;
use super::error::{ApiError, quoted};

/// A JSON body. The content type is not checked (old clients omit it), and
/// an empty body reads as `{}` so that all-optional bodies may be left out.
pub struct ApiJson<T>(pub T);

/// JSON's own whitespace (RFC 8259): a body of only these is empty. Other
/// ASCII "whitespace" (form feed) is not JSON and stays an error.
fn is_json_whitespace(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let note = req.extensions().get::<AccessNote>().cloned();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is larger than 1 MiB",
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "unreadable_body",
                        format!("the request body could not be read: {}", e.body_text()),
                    )
                }
            })?;
        if let Some(note) = note {
            note.session_in_body(&bytes);
        }
        let raw: &[u8] = if bytes.iter().all(is_json_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        parse_object(raw, "the request body").map(ApiJson)
    }
}

/// Reads a JSON object into `T`; `whole` names it in messages ("the
/// request body"). The direct parse is the fast path; when it fails for a
/// reason that is not plainly about the data, the text is read again as a
/// JSON value to tell malformed JSON (`invalid_json`) from a field of the
/// wrong type (`invalid_body`; serde_json reports some of those, such as a
/// number where a name is expected, as syntax).
fn parse_object<T: DeserializeOwned>(raw: &[u8], whole: &str) -> Result<T, ApiError> {
    // Every body is an object; a struct would otherwise also accept an
    // array of its fields in order.
    if raw.iter().find(|b| !is_json_whitespace(b)) == Some(&b'{') {
        let mut json = serde_json::Deserializer::from_slice(raw);
        match serde_path_to_error::deserialize(&mut json) {
            Ok(value) if json.end().is_ok() => return Ok(value),
            Err(e) if e.inner().is_data() => return Err(data_error(whole, e)),
            _ => {}
        }
    }
    let value: serde_json::Value = serde_json::from_slice(raw).map_err(|e| {
        // serde_json's own words ("expected value", "EOF while parsing a
        // string") are about JSON, which the client wrote.
        let said = without_position(&e);
        // serde_json's words for a `\uD800` without its pair ("unexpected
        // end of hex escape") do not say what is wrong.
        let said = if said.contains("hex escape") || said.contains("surrogate") {
            format!(
                "{said}: a \\u escape must be a character; \\uD800 to \\uDFFF only come in pairs (a lone surrogate is no character)"
            )
        } else {
            said
        };
        ApiError::unprocessable(
            "invalid_json",
            format!(
                "{whole} is not valid JSON: {said} at line {} column {}",
                e.line(),
                e.column()
            ),
        )
    })?;
    object_from_value(value, whole)
}

/// Reads a WebSocket client's message, with the same words as a body.
pub fn parse_message<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    parse_object(text.as_bytes(), "the message").map_err(|e| e.detail)
}

fn object_from_value<T: DeserializeOwned>(
    value: serde_json::Value,
    whole: &str,
) -> Result<T, ApiError> {
    if !value.is_object() {
        let got = match value {
            serde_json::Value::Array(_) => "an array".to_owned(),
            other => other.to_string(),
        };
        return Err(ApiError::unprocessable(
            "invalid_body",
            format!("{whole} must be a JSON object, got {}", quoted_value(&got)),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| data_error(whole, e))
}

impl<T: DeserializeOwned> ApiJson<T> {
    /// Reads `T` from a JSON object already parsed (for handlers that need
    /// part of a body even when the rest is wrong), with the same errors as
    /// a body.
    pub fn from_value(value: serde_json::Value) -> Result<T, ApiError> {
        object_from_value(value, "the request body")
    }
}

/// A short rendering of what was sent in place of an object.
fn quoted_value(json: &str) -> String {
    match json.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &json[..cut]),
        None => json.to_owned(),
    }
}

/// A field of the wrong type, missing or unknown: 422 `invalid_body`.
fn data_error(whole: &str, e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let field = (path != ".").then_some(path);
    let message = without_position(e.inner());
    ApiError::unprocessable(
        "invalid_body",
        in_user_terms(whole, field.as_deref(), &message),
    )
}

/// serde_json's message without its " at line L column C" suffix.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// Rewrites serde's message about `field` (None: `whole`, the whole body or
/// message) so that it names the field, the JSON type expected and what was
/// sent.
fn in_user_terms(whole: &str, field: Option<&str>, message: &str) -> String {
    let subject = field.map_or_else(|| whole.to_owned(), |f| format!("`{f}`"));
    let within = |name: &str| match field {
        Some(parent) => format!("{parent}.{name}"),
        None => name.to_owned(),
    };
    if let Some(name) = backticked(message, "missing field ") {
        return format!("`{}` is required", within(name));
    }
    if let Some(name) = backticked(message, "duplicate field ") {
        return format!("`{}` is given more than once", within(name));
    }
    if let Some(name) = backticked(message, "unknown field ") {
        // The path already ends at the unknown field itself.
        let path = match field {
            Some(path) if path == name || path.ends_with(&format!(".{name}")) => path.to_owned(),
            _ => within(name),
        };
        return format!("`{path}` is not a known field");
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (got, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let choices = expected
            .trim_start_matches("one of ")
            .replace('`', "\"")
            .replace(" or ", ", ");
        return format!(
            "{subject} must be one of {choices}, got {}",
            got.replace('`', "\"")
        );
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((got, expected)) = rest.split_once(", expected ")
        {
            return format!(
                "{subject} must be {}, got {}",
                expected_in_json(expected),
                got_in_json(got)
            );
        }
    }
    format!("{subject}: {message}")
}

fn backticked<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message
        .strip_prefix(prefix)?
        .strip_prefix('`')?
        .split('`')
        .next()
}

/// serde's name of the expected type, as a JSON client would say it.
fn expected_in_json(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a map" => "a JSON object".into(),
        "a sequence" => "a JSON array".into(),
        // serde_json's words for an enum of names given something else.
        "string or map" => "a string".into(),
        other if other.starts_with("struct ") => "a JSON object".into(),
        other if other.starts_with("variant identifier") => "one of the listed values".into(),
        other => other.replace('`', "\""),
    }
}

/// serde's description of what was sent, as JSON.
fn got_in_json(got: &str) -> String {
    let literal = |s: &str| s.trim_start_matches('`').trim_end_matches('`').to_owned();
    if let Some(n) = got.strip_prefix("integer ") {
        return literal(n);
    }
    if let Some(n) = got.strip_prefix("floating point ") {
        return literal(n);
    }
    if let Some(b) = got.strip_prefix("boolean ") {
        return literal(b);
    }
    if let Some(s) = got.strip_prefix("string ") {
        // serde quotes with Rust escapes; without any it is valid JSON.
        return if s.contains('\\') {
            "a string".into()
        } else {
            s.to_owned()
        };
    }
    match got {
        "map" => "an object".into(),
        "sequence" => "an array".into(),
        "unit value" | "null" => "null".into(),
        other => other.replace('`', "\""),
    }
}

/// Query parameters, with 422 `invalid_parameter` naming the parameter
/// when one cannot be read. Query types read numbers through the
/// `deserialize_with` helpers below, so every message is one of ours.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        serde_urlencoded::from_str::<T>(parts.uri.query().unwrap_or_default())
            .map(ApiQuery)
            .map_err(|e| {
                let message = e.to_string();
                // The helpers below name their parameter themselves.
                let detail = if message.starts_with('`') {
                    message
                } else {
                    format!(
                        "query string: {}",
                        in_user_terms("the query string", None, &message)
                    )
                };
                ApiError::unprocessable("invalid_parameter", detail)
            })
    }
}

/// The largest page any listing returns.
pub const MAX_LIMIT: usize = 1000;

/// Reads the `limit` query parameter: a whole number from 1 to 1000.
pub fn limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let raw: Option<String> = Option::deserialize(d)?;
    raw.map(|raw| {
        raw.parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "`limit` must be a whole number from 1 to {MAX_LIMIT}, got {}",
                    quoted(&raw)
                ))
            })
    })
    .transpose()
}

/// The largest `cursor`: event numbers are stored as SQLite integers.
pub const MAX_CURSOR: u64 = i64::MAX as u64;

/// Reads the `cursor` query parameter: an event `seq`, 0 to `MAX_CURSOR`.
pub fn cursor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let raw: Option<String> = Option::deserialize(d)?;
    raw.map(|raw| {
        raw.parse::<u64>()
            .ok()
            .filter(|c| *c <= MAX_CURSOR)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "`cursor` must be a whole number from 0 to {MAX_CURSOR} (the `next_cursor` of a previous page), got {}",
                    quoted(&raw)
                ))
            })
    })
    .transpose()
}

/// Path parameters, with our error format when they cannot be read.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| ApiPath(p))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    format!("the path could not be read: {}", e.body_text()),
                )
            })
    }
}

/// A WebSocket handshake; a plain HTTP request gets a JSON 400 saying
/// that this endpoint needs a WebSocket client.
pub struct ApiWebSocket(pub WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for ApiWebSocket {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map(ApiWebSocket)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "websocket_required",
                    format!(
                        "/api/ws is a WebSocket endpoint: connect with a WebSocket client ({})",
                        e.body_text()
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_become_the_clients_terms() {
        let cases = [
            (
                Some("equipment_id"),
                "invalid type: integer `5`, expected a string",
                "`equipment_id` must be a string, got 5",
            ),
            (
                Some("fencing_token"),
                "invalid value: integer `-1`, expected u64",
                "`fencing_token` must be a whole number (0 or more), got -1",
            ),
            (None, "missing field `action`", "`action` is required"),
            (
                Some("lock_mode"),
                "unknown variant `x`, expected `exclusive` or `observer`",
                "`lock_mode` must be one of \"exclusive\", \"observer\", got \"x\"",
            ),
            (
                None,
                "invalid type: sequence, expected struct AcquireBody",
                "the request body must be a JSON object, got an array",
            ),
        ];
        for (field, serde, ours) in cases {
            assert_eq!(in_user_terms("the request body", field, serde), ours);
        }
    }

    #[test]
    fn only_json_whitespace_is_empty() {
        assert!(b" \t\r\n".iter().all(is_json_whitespace));
        assert!(!is_json_whitespace(&0x0c));
    }
}
