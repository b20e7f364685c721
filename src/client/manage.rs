//! The lab manager's commands (`maintenance start|end`, `dequeue`,
//! `end-session`: admins once authentication is on) and a waiter's own
//! trades (`step-back`, `swap`). One request each; a line for people, or
//! with `--json` the server's answer as it is.

use serde_json::{Value, json};

use super::output::print_json;
use super::output::{outln, text};
use super::{ClientError, http::Api};

/// `--until`: an RFC 3339 instant as given, or a duration from now (`2h`)
/// as the instant it ends.
pub fn until_arg(text: &str) -> Result<String, ClientError> {
    if let Ok(after) = super::output::parse_duration(text) {
        let after = chrono::Duration::from_std(after)
            .map_err(|_| ClientError::Input(format!("--until {text} is too far away")))?;
        return Ok(
            (chrono::Utc::now() + after).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|_| text.to_owned())
        .map_err(|_| {
            ClientError::Input(format!(
                "--until must be an RFC 3339 time (2026-11-28T12:00:00Z) or a duration from now (90m, 2h), got {text:?}"
            ))
        })
}

/// A maintenance as one phrase: `calibration (since T, until T, by alice)`.
pub fn maintenance_text(m: &Value) -> String {
    let mut about = vec![format!("since {}", text(&m["since"]))];
    about.push(match m["until"].as_str() {
        Some(until) => format!("until {until}"),
        None => "no end set".into(),
    });
    if let Some(user) = m["user"].as_str() {
        about.push(format!("by {user}"));
    }
    if let Some(group) = m["group"].as_str() {
        about.push(format!("with group {group}"));
    }
    format!("{} ({})", text(&m["reason"]), about.join(", "))
}

/// `maintenance start EQ --reason R [--until T]`.
pub async fn start_maintenance(
    api: &Api,
    equipment: &str,
    reason: &str,
    until: Option<&str>,
    json: bool,
) -> Result<(), ClientError> {
    let body = json!({"reason": reason, "until": until});
    let answer = api
        .post(&["api", "equipment", equipment, "maintenance"], &body)
        .await?;
    if json {
        print_json(&answer);
    } else {
        outln!(
            "{equipment} is in maintenance: {}",
            maintenance_text(&answer["maintenance"])
        );
    }
    Ok(())
}

/// `maintenance end EQ`.
pub async fn end_maintenance(api: &Api, equipment: &str, json: bool) -> Result<(), ClientError> {
    let answer = api
        .delete(&["api", "equipment", equipment, "maintenance"])
        .await?;
    if json {
        print_json(&answer);
    } else {
        outln!(
            "{equipment} is back in service (the maintenance was: {})",
            maintenance_text(&answer["maintenance"])
        );
    }
    Ok(())
}

/// A refusal of an intervention with the body's fields named as the
/// flags that filled them (`--reason` is sent as `message`), so the user
/// knows which argument to fix.
fn as_flags(error: ClientError) -> ClientError {
    match error {
        ClientError::Server {
            status,
            code,
            detail,
        } => ClientError::Server {
            status,
            code,
            detail: detail
                .replace("`message`", "--reason")
                .replace("`forced_by`", "--forced-by")
                .replace("invalid forced_by", "invalid --forced-by"),
        },
        other => other,
    }
}

/// `dequeue EQ SESSION`: an admin takes a waiter's place.
pub async fn dequeue(
    api: &Api,
    equipment: &str,
    session: &str,
    intervention: &Value,
    json: bool,
) -> Result<(), ClientError> {
    let answer = api
        .post(
            &["api", "locks", "queue", equipment, session, "remove"],
            intervention,
        )
        .await
        .map_err(as_flags)?;
    if json {
        print_json(&answer);
    } else {
        outln!(
            "removed session {session} (position {}) from the queue for {equipment}",
            text(&answer["queue_entry"]["position"])
        );
    }
    Ok(())
}

/// `end-session SESSION`: an admin ends someone's session.
pub async fn end_session(
    api: &Api,
    session: &str,
    intervention: &Value,
    json: bool,
) -> Result<(), ClientError> {
    let answer = api
        .post(&["api", "locks", "sessions", session, "end"], intervention)
        .await
        .map_err(as_flags)?;
    if json {
        print_json(&answer);
    } else {
        let released = answer["locks_released"].as_u64().unwrap_or(0);
        outln!(
            "ended session {session}; {released} lock{} released",
            if released == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// `step-back EQ`: let the waiter behind go first.
pub async fn step_back(
    api: &Api,
    equipment: &str,
    session: &str,
    json: bool,
) -> Result<(), ClientError> {
    let answer = api
        .post(
            &["api", "locks", "queue", equipment, "step-back"],
            &json!({"session_id": session}),
        )
        .await?;
    if json {
        print_json(&answer);
    } else {
        outln!(
            "stepped back: now position {} in the queue for {equipment}",
            text(&answer["position"])
        );
    }
    Ok(())
}

/// `swap EQ WITH`: offers a swap, or makes it when WITH offered first.
pub async fn swap(
    api: &Api,
    equipment: &str,
    session: &str,
    with: &str,
    json: bool,
) -> Result<(), ClientError> {
    let answer = api
        .post(
            &["api", "locks", "queue", equipment, "swap"],
            &json!({"session_id": session, "with_session_id": with}),
        )
        .await?;
    if json {
        print_json(&answer);
    } else if answer["status"] == "swapped" {
        outln!(
            "swapped with {with}: now position {} in the queue for {equipment}",
            text(&answer["position"])
        );
    } else {
        outln!(
            "offered to swap with {with}; it happens when {with} asks too (still position {} in the queue for {equipment})",
            text(&answer["position"])
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interventions_refusal_names_the_flags() {
        let refused = |detail: &str| ClientError::Server {
            status: 422,
            code: "invalid_body".into(),
            detail: detail.into(),
        };
        let said = |e: ClientError| as_flags(e).to_string();
        assert_eq!(
            said(refused("`message` must be at most 256 characters")),
            "--reason must be at most 256 characters"
        );
        assert_eq!(
            said(refused(
                "`forced_by` must not contain control characters (it has U+0007)"
            )),
            "--forced-by must not contain control characters (it has U+0007)"
        );
        assert_eq!(
            said(refused("session x is not queued")),
            "session x is not queued"
        );
    }

    #[test]
    fn until_takes_an_instant_or_a_duration_from_now() {
        assert_eq!(
            until_arg("2026-11-28T12:00:00Z").unwrap(),
            "2026-11-28T12:00:00Z"
        );
        let in_two_hours = until_arg("2h").unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(&in_two_hours).unwrap();
        let ahead = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
        assert!((7190..=7200).contains(&ahead.num_seconds()), "{ahead}");
        let err = until_arg("tomorrow").unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        assert_eq!(err.exit_status(), super::super::exit::USAGE);
    }

    #[test]
    fn a_maintenance_reads_as_one_phrase() {
        let m = json!({"reason": "calibration", "since": "2026-11-28T10:00:00Z",
                       "until": "2026-11-28T12:00:00Z", "user": "alice"});
        assert_eq!(
            maintenance_text(&m),
            "calibration (since 2026-11-28T10:00:00Z, until 2026-11-28T12:00:00Z, by alice)"
        );
        let open = json!({"reason": "broken", "since": "2026-11-28T10:00:00Z", "until": null, "user": null});
        assert_eq!(
            maintenance_text(&open),
            "broken (since 2026-11-28T10:00:00Z, no end set)"
        );
        let grouped = json!({"reason": "recabling", "since": "2026-11-28T10:00:00Z",
                             "until": null, "group": "bench3"});
        assert_eq!(
            maintenance_text(&grouped),
            "recabling (since 2026-11-28T10:00:00Z, no end set, with group bench3)"
        );
    }
}
