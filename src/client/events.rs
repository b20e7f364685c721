//! `lablink events`: the history, oldest first, filtered by equipment,
//! session and time; `--follow` then streams new events live from the
//! WebSocket, resuming from the last `seq` printed so nothing is missed or
//! repeated (also across a reconnect after a server restart). The live
//! feed is filtered here as the history is (every filter must match): the
//! server's subscription is a union of its filters.

use serde_json::Value;
use std::time::Duration;

use super::ClientError;
use super::http::Api;
use super::live::{LiveEvents, Subscription};
use super::output::{errln, json_line, outln, text, write_stdout};

pub struct EventFilter {
    pub equipment: Option<String>,
    pub session: Option<String>,
    /// RFC 3339, as the server takes it.
    pub since: Option<String>,
}

/// The history's largest page.
const PAGE: &str = "1000";

pub async fn events(
    api: &Api,
    filter: &EventFilter,
    follow: bool,
    json: bool,
) -> Result<(), ClientError> {
    // Following: where the history ends before it is read, so an empty
    // (filtered) page resumes the live feed from here, not from the first
    // event ever recorded. Nothing matching is skipped: the history is read
    // after this and covers everything up to it.
    let newest = if follow { newest_seq(api).await? } else { None };
    let mut cursor: Option<u64> = None;
    loop {
        let mut query = vec![("limit", PAGE.to_owned())];
        query.extend(filter.equipment.clone().map(|e| ("equipment_id", e)));
        query.extend(filter.session.clone().map(|s| ("session_id", s)));
        query.extend(filter.since.clone().map(|s| ("since", s)));
        query.extend(cursor.map(|c| ("cursor", c.to_string())));
        let page = api.get_query(&["api", "locks", "events"], &query).await?;
        for event in page["events"].as_array().into_iter().flatten() {
            print_event(event, json);
        }
        cursor = page["next_cursor"].as_u64().or(cursor);
        if page["has_more"] != true {
            break;
        }
    }
    if !follow {
        return Ok(());
    }
    let subscription = Subscription {
        equipment_ids: filter.equipment.iter().cloned().collect(),
        session_id: filter.session.clone(),
        all: filter.equipment.is_none() && filter.session.is_none(),
        // Nothing recorded yet: everything from the first event on.
        resume_from: Some(cursor.max(newest).unwrap_or(0)),
    };
    follow_live(api, subscription, filter, json).await
}

/// The newest `seq` recorded (None before the first event): a cursor past
/// the end gets an empty page whose `next_cursor` is the newest `seq`.
async fn newest_seq(api: &Api) -> Result<Option<u64>, ClientError> {
    let past_the_end = [("limit", "1".to_owned()), ("cursor", i64::MAX.to_string())];
    let page = api
        .get_query(&["api", "locks", "events"], &past_the_end)
        .await?;
    Ok(page["next_cursor"].as_u64())
}

impl EventFilter {
    /// Whether a live message passes every filter given, as the history's
    /// filters do: the instrument (or the group it was locked with) and
    /// the session (as actor or as the one who forced a release).
    fn matches(&self, event: &Value) -> bool {
        let equipment = self.equipment.as_deref().is_none_or(|id| {
            event["equipment_id"].as_str() == Some(id) || event["group_id"].as_str() == Some(id)
        });
        let session = self.session.as_deref().is_none_or(|id| {
            event["session_id"].as_str() == Some(id) || event["forced_by"].as_str() == Some(id)
        });
        equipment && session
    }
}

/// Prints live events until interrupted; reconnects (resuming after the
/// last `seq` printed) when the socket closes, e.g. on a server restart.
async fn follow_live(
    api: &Api,
    mut subscription: Subscription,
    filter: &EventFilter,
    json: bool,
) -> Result<(), ClientError> {
    let mut told = false;
    loop {
        let mut live = match LiveEvents::connect(api, &subscription).await {
            Ok(live) => live,
            // A server gone for a moment (a restart) is waited for; one
            // that refuses (a bad token, a proxy without WebSockets) is not.
            Err(e @ ClientError::Unreachable { .. }) => {
                if !std::mem::replace(&mut told, true) {
                    errln!("lablink events: {e}; retrying every second");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        told = false;
        while let Some(message) = live.next().await {
            let message = message?;
            match message["type"].as_str() {
                Some("lagged") => break, // reconnect from the last seq printed
                Some("error") => {
                    errln!("lablink events: {}", text(&message["detail"]));
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            if let Some(seq) = message["seq"].as_u64() {
                subscription.resume_from = Some(seq);
            }
            if filter.matches(&message) {
                print_event(&message, json);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One event: with `--json` the server's object on one line (JSON Lines);
/// else `time  seq  event  equipment  session  other=fields`.
pub fn print_event(event: &Value, json: bool) {
    // Each line goes out at once (followers pipe into `grep`); a reader
    // gone ends `--follow` too.
    if json {
        write_stdout(&format!("{}\n", json_line(event)));
    } else {
        outln!("{}", human(event));
    }
}

fn human(event: &Value) -> String {
    const SHOWN: [&str; 5] = ["timestamp", "seq", "event", "equipment_id", "session_id"];
    let seq = event["seq"]
        .as_u64()
        .map(|s| format!("#{s}"))
        .unwrap_or_else(|| "live".into());
    let details: Vec<String> = event
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| !SHOWN.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    format!(
        "{}  {:>6}  {:<22}  {:<12}  {:<36}  {}",
        text(&event["timestamp"]),
        seq,
        text(&event["event"]),
        text(&event["equipment_id"]),
        text(&event["session_id"]),
        details.join(" ")
    )
    .trim_end()
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_reads_as_one_aligned_line_with_its_other_fields() {
        let e = json!({"seq": 7, "event": "lock_acquired", "timestamp": "2026-01-05T09:00:00.000Z",
                       "equipment_id": "ps_abc123", "session_id": "s1", "fencing_token": 3});
        assert_eq!(
            human(&e),
            format!(
                "2026-01-05T09:00:00.000Z      #7  lock_acquired           ps_abc123     s1{}  fencing_token=3",
                " ".repeat(34)
            )
        );
        let note = json!({"event": "queue_position", "timestamp": "t", "position": 2});
        assert!(human(&note).contains("live"), "{}", human(&note));
        assert!(human(&note).ends_with("position=2"));
    }
}
