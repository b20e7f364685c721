//! `lablink status`, `sessions`, `queue`, `release` and `command`: one or a
//! few requests each, printed as aligned tables (or with `--json` as the
//! server's own JSON).

use futures_util::future::try_join_all;
use serde_json::{Map, Value, json};

use super::manage::maintenance_text;
use super::output::{Table, duration, outln, print_json, text, time_left, who};
use super::{ClientError, http::Api};

/// The state column: `maintenance` wins (the holder, if any, still shows).
fn state_of(status: &Value) -> &'static str {
    if !status["maintenance"].is_null() {
        return "maintenance";
    }
    match (status["locked"].as_bool(), status["lock_mode"].as_str()) {
        (Some(true), _) => "locked",
        (_, Some("observer")) => "observed",
        _ => "free",
    }
}

/// `status`: every instrument in a table, or with `--json` their lock
/// status objects (`GET /api/locks/status/{id}`) in a list.
pub async fn status_all(api: &Api, json: bool) -> Result<(), ClientError> {
    let list = api.get(&["api", "equipment", "list"]).await?;
    let equipment = list["equipment"].as_array().cloned().unwrap_or_default();
    let statuses = try_join_all(equipment.iter().map(|e| async move {
        let id = e["equipment_id"].as_str().unwrap_or_default();
        api.get(&["api", "locks", "status", id]).await
    }))
    .await?;
    if json {
        print_json(&Value::Array(statuses));
        return Ok(());
    }
    // Every lock and queue at once, for the waiters' priorities and the
    // lock groups.
    let all = api.get(&["api", "locks", "all"]).await?;
    let queues = &all["queues"];
    let groups = list["groups"].as_array().cloned().unwrap_or_default();
    // Tags and groups get their columns only where there are any, so a
    // lab without them reads as it always did.
    let tagged = equipment.iter().any(|e| !tags_of(e).is_empty());
    let grouped = !groups.is_empty() || statuses.iter().any(|s| !s["group_id"].is_null());
    let mut headers = vec!["EQUIPMENT", "NAME"];
    headers.extend(tagged.then_some("TAGS"));
    headers.extend(["STATE", "HOLDER"]);
    headers.extend(grouped.then_some("GROUP"));
    headers.extend(["TIME LEFT", "QUEUE", "OBSERVERS"]);
    let mut table = Table::new(&headers);
    for (e, s) in equipment.iter().zip(&statuses) {
        let locked = s["locked"].as_bool() == Some(true);
        let id = text(&e["equipment_id"]);
        let mut row = vec![id.clone(), text(&e["name"])];
        if tagged {
            row.push(tags_cell(e));
        }
        row.extend([state_of(s).into(), if locked { who(s) } else { "-".into() }]);
        if grouped {
            row.push(group_name(&all["exclusive_locks"][&id], s));
        }
        row.extend([
            if locked {
                time_left(&s["time_remaining"])
            } else {
                "-".into()
            },
            queue_cell(&s["queue_length"], &queues[&id]),
            text(&s["observer_count"]),
        ]);
        table.row(row);
    }
    table.print();
    // Why each one in maintenance is out of service, under the table.
    for s in statuses.iter().filter(|s| !s["maintenance"].is_null()) {
        outln!(
            "{} in maintenance: {}",
            text(&s["equipment_id"]),
            maintenance_text(&s["maintenance"])
        );
    }
    if !groups.is_empty() {
        outln!();
        groups_table(&groups, &all).print();
    }
    Ok(())
}

fn tags_of(equipment: &Value) -> Vec<String> {
    equipment["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect()
}

/// `psu,30V`, or `-` without tags.
fn tags_cell(equipment: &Value) -> String {
    let tags = tags_of(equipment);
    if tags.is_empty() {
        "-".into()
    } else {
        tags.join(",")
    }
}

/// The lock group a lock belongs to: its configured id when it was asked
/// for by one (`group_name`), else its `group_id`; `-` for a lock alone.
fn group_name(lock: &Value, status: &Value) -> String {
    match (lock["group_name"].as_str(), status["group_id"].as_str()) {
        (Some(name), _) => name.into(),
        (None, Some(id)) => id.into(),
        (None, None) => "-".into(),
    }
}

/// The configured lock groups under the instruments: members, who holds
/// them (one holder of the whole group, or which members are busy), and
/// how many requests wait for any member (a group waiting in every
/// member's queue counts once).
fn groups_table(groups: &[Value], all: &Value) -> Table {
    let mut table = Table::new(&["GROUP", "NAME", "MEMBERS", "HOLDER", "WAITING"]);
    for group in groups {
        let members: Vec<String> = group["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        let locks: Vec<(&String, &Value)> = members
            .iter()
            .filter_map(|m| all["exclusive_locks"].get(m).map(|l| (m, l)))
            .collect();
        let one_holder = locks.len() == members.len()
            && locks
                .iter()
                .all(|(_, l)| !l["group_id"].is_null() && l["group_id"] == locks[0].1["group_id"]);
        let holder = match locks.first() {
            None => "-".into(),
            Some((_, lock)) if one_holder => who(lock),
            Some(_) => format!(
                "busy: {}",
                locks
                    .iter()
                    .map(|(m, l)| format!("{m} ({})", who(l)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut waiting: Vec<String> = members
            .iter()
            .flat_map(|m| all["queues"][m].as_array().cloned().unwrap_or_default())
            .map(|e| match e["group_id"].as_str() {
                Some(group) => group.to_owned(),
                None => text(&e["queue_id"]),
            })
            .collect();
        waiting.sort();
        waiting.dedup();
        table.row(vec![
            text(&group["group_id"]),
            text(&group["name"]),
            members.join(", "),
            holder,
            waiting.len().to_string(),
        ]);
    }
    table
}

/// The queue length, and when anyone waits with a priority, every waiter's
/// in serving order: `2 (priorities 3, 0)`.
fn queue_cell(length: &Value, queue: &Value) -> String {
    let priorities: Vec<i64> = queue
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["priority"].as_i64().unwrap_or(0))
        .collect();
    if priorities.iter().all(|p| *p == 0) {
        return text(length);
    }
    let listed: Vec<String> = priorities.iter().map(i64::to_string).collect();
    format!("{} (priorities {})", text(length), listed.join(", "))
}

/// `status EQ`: one instrument in detail with its queue; with `--json` its
/// lock status object.
pub async fn status_one(api: &Api, equipment: &str, json: bool) -> Result<(), ClientError> {
    if json {
        print_json(&api.get(&["api", "locks", "status", equipment]).await?);
        return Ok(());
    }
    let (detail, queue, list) = futures_util::future::try_join3(
        api.get(&["api", "equipment", equipment, "status"]),
        api.get(&["api", "locks", "queue", equipment]),
        api.get(&["api", "equipment", "list"]),
    )
    .await?;
    let s = &detail["lock"];
    let mut lines = Table::new(&["equipment:", &text(&detail["equipment_id"])]);
    lines.row(vec![
        "name:".into(),
        format!(
            "{} ({}, {})",
            text(&detail["name"]),
            text(&detail["model"]),
            text(&detail["driver"])
        ),
    ]);
    let tags = list["equipment"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["equipment_id"] == equipment)
        .map(tags_of)
        .unwrap_or_default();
    if !tags.is_empty() {
        lines.row(vec!["tags:".into(), tags.join(", ")]);
    }
    lines.row(vec!["state:".into(), state_of(s).into()]);
    if !s["maintenance"].is_null() {
        lines.row(vec![
            "maintenance:".into(),
            maintenance_text(&s["maintenance"]),
        ]);
    }
    if s["locked"].as_bool() == Some(true) {
        lines.row(vec!["holder:".into(), who(s)]);
        lines.row(vec!["session:".into(), text(&s["session_id"])]);
        if !s["group_id"].is_null() {
            lines.row(vec![
                "group:".into(),
                format!("{} (every member goes with it)", text(&s["group_id"])),
            ]);
        }
        lines.row(vec![
            "lock:".into(),
            format!(
                "{}, fencing token {}",
                text(&s["lock_id"]),
                text(&s["fencing_token"])
            ),
        ]);
        lines.row(vec!["acquired:".into(), text(&s["acquired_at"])]);
        lines.row(vec!["time left:".into(), time_left(&s["time_remaining"])]);
        if let Some(claim) = claim_text(s) {
            lines.row(vec!["claim:".into(), claim]);
        }
    }
    let observers: Vec<String> = s["observer_sessions"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    lines.row(vec![
        "observers:".into(),
        if observers.is_empty() {
            "none".into()
        } else {
            observers.join(", ")
        },
    ]);
    lines.row(vec![
        "queue:".into(),
        format!("{} waiting", text(&s["queue_length"])),
    ]);
    lines.print();
    if queue["queue"].as_array().is_some_and(|q| !q.is_empty()) {
        outln!();
        queue_table(&queue).print();
    }
    Ok(())
}

/// A lock handed over from the queue within a claim window: until when
/// its holder must claim it (the server's `claim_by`, RFC 3339 as the
/// other times here). `None` outside a claim window.
fn claim_text(status: &Value) -> Option<String> {
    let by = status["claim_by"].as_str()?;
    Some(format!("claim by {by} or it passes to the next in line"))
}

fn queue_table(queue: &Value) -> Table {
    let mut table = Table::new(&[
        "POS",
        "SESSION",
        "WHO",
        "MODE",
        "PRIORITY",
        "LOCK TIMEOUT",
        "QUEUED AT",
        "GIVES UP AT",
    ]);
    for entry in queue["queue"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&entry["position"]),
            text(&entry["session_id"]),
            who(entry),
            text(&entry["lock_mode"]),
            entry["priority"].as_i64().unwrap_or(0).to_string(),
            match entry["timeout_seconds"].as_f64() {
                Some(0.0) | None => "none".into(),
                Some(t) => duration(t),
            },
            text(&entry["queued_at"]),
            // When `max_wait_seconds` drops the place.
            text(&entry["wait_expires_at"]),
        ]);
    }
    table
}

/// `queue EQ`: who waits, next in line first.
pub async fn queue(api: &Api, equipment: &str, json: bool) -> Result<(), ClientError> {
    let queue = api.get(&["api", "locks", "queue", equipment]).await?;
    if json {
        print_json(&queue);
    } else if queue["queue"].as_array().is_none_or(|q| q.is_empty()) {
        outln!("nobody is waiting for {equipment}");
    } else {
        queue_table(&queue).print();
    }
    Ok(())
}

/// `sessions`: every live session (all pages), with what each holds and
/// waits for; with `--json` the server's `{"sessions", "count"}` for all
/// of them.
pub async fn sessions(api: &Api, json: bool) -> Result<(), ClientError> {
    let mut all: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "1000".to_owned())];
        query.extend(cursor.take().map(|c| ("cursor", c)));
        let page = api.get_query(&["api", "locks", "sessions"], &query).await?;
        all.extend(page["sessions"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    if json {
        print_json(&json!({"sessions": all, "count": all.len(), "next_cursor": null}));
        return Ok(());
    }
    if all.is_empty() {
        outln!("no live sessions");
        return Ok(());
    }
    let held = holdings(&api.get(&["api", "locks", "all"]).await?);
    let mut table = Table::new(&["SESSION", "CLIENT", "USER", "HOLDS", "AGE", "EXPIRES IN"]);
    for s in &all {
        let id = s["session_id"].as_str().unwrap_or_default();
        table.row(vec![
            id.into(),
            text(&s["client_name"]),
            text(&s["user"]),
            held.get(id).map(|h| h.join(", ")).unwrap_or("-".into()),
            s["duration_seconds"]
                .as_f64()
                .map(duration)
                .unwrap_or("-".into()),
            time_left(&s["time_remaining"]),
        ]);
    }
    table.print();
    Ok(())
}

/// What each session holds or waits for, from `GET /api/locks/all`:
/// `ps_abc123`, `scope_123 (observer)`, `load_1 (queued 2)`.
fn holdings(all: &Value) -> std::collections::HashMap<String, Vec<String>> {
    let mut held: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut note = |session: &Value, what: String| {
        if let Some(s) = session.as_str() {
            held.entry(s.to_owned()).or_default().push(what);
        }
    };
    for (eq, lock) in all["exclusive_locks"].as_object().into_iter().flatten() {
        note(&lock["session_id"], eq.clone());
    }
    for (eq, locks) in all["observer_locks"].as_object().into_iter().flatten() {
        for lock in locks.as_array().into_iter().flatten() {
            note(&lock["session_id"], format!("{eq} (observer)"));
        }
    }
    for (eq, entries) in all["queues"].as_object().into_iter().flatten() {
        for e in entries.as_array().into_iter().flatten() {
            let priority = match e["priority"].as_i64() {
                Some(p) if p != 0 => format!(", priority {p}"),
                _ => String::new(),
            };
            note(
                &e["session_id"],
                format!("{eq} (queued {}{priority})", text(&e["position"])),
            );
        }
    }
    held
}

/// What `release` names: one instrument (or a configured group's id, or
/// a group's member: the server releases the whole group), several (a
/// lock group by the instruments it was taken with), or a `group_id`.
pub struct ReleaseTarget {
    pub equipment: Vec<String>,
    pub group_id: Option<String>,
}

/// `release EQ [--force]`: `session` releases its own lock, lock group or
/// queue place; `force` releases whoever holds it (an admin's action,
/// recorded as forced by `session`).
pub async fn release(
    api: &Api,
    target: &ReleaseTarget,
    session: &str,
    force: bool,
    json: bool,
) -> Result<(), ClientError> {
    let (what, label) = match (&target.group_id, target.equipment.as_slice()) {
        (Some(group), _) => (json!({"group_id": group}), format!("lock group {group}")),
        (None, [one]) => (json!({"equipment_id": one}), one.clone()),
        (None, several) => (json!({"equipment_ids": several}), several.join(", ")),
    };
    let answer = api.release_what(what, session, force).await?;
    if json {
        print_json(&answer);
        return Ok(());
    }
    // A lock group's release names the group and every member.
    let equipment = match (
        answer["group_id"].as_str(),
        answer["equipment_ids"].as_array(),
    ) {
        (Some(group), Some(ids)) => format!(
            "lock group {group} ({})",
            ids.iter().map(text).collect::<Vec<_>>().join(", ")
        ),
        _ => label,
    };
    let done = match (answer["status"].as_str(), answer["was_forced"].as_bool()) {
        (Some("released"), Some(true)) => format!("force-released {equipment}"),
        (Some("released"), _) => format!("released {equipment}"),
        (Some("observer_released"), _) => format!("released the observer lock on {equipment}"),
        (Some("dequeued"), _) => format!("left the queue for {equipment}"),
        _ => format!("{equipment}: {answer}"),
    };
    outln!("{done}");
    Ok(())
}

/// `command EQ ACTION key=value...`: runs an action, its parameters typed
/// from the equipment's action catalog; prints the result's `data`.
pub async fn command(
    api: &Api,
    equipment: &str,
    action: &str,
    assignments: &[String],
    session: Option<&str>,
    fencing_token: Option<u64>,
    json: bool,
) -> Result<(), ClientError> {
    let catalog = api.get(&["api", "equipment", equipment, "status"]).await?;
    let spec = catalog["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["name"] == action);
    let parameters = typed_parameters(spec, assignments)?;
    let mut body = json!({
        "command_id": format!("cli-{}", uuid::Uuid::new_v4()),
        "equipment_id": equipment,
        "action": action,
        "parameters": parameters,
    });
    if let Some(session) = session {
        body["session_id"] = json!(session);
    }
    if let Some(token) = fencing_token {
        body["fencing_token"] = json!(token);
    }
    let answer = api
        .post(&["api", "equipment", equipment, "command"], &body)
        .await?;
    if answer["success"] != true {
        let why = answer["error"].as_str().unwrap_or("the command failed");
        return Err(ClientError::Server {
            status: 200,
            code: "command_failed".into(),
            detail: why.into(),
        });
    }
    if json {
        print_json(&answer);
    } else {
        match &answer["data"] {
            Value::String(s) => outln!("{s}"),
            data => print_json(data),
        }
    }
    Ok(())
}

/// Inside `lablink run`, for a command naming its session: the fencing
/// token of its lock on `equipment`, from `LABLINK_EQUIPMENT_ID` and
/// `LABLINK_FENCING_TOKEN` (space-separated in step: ids hold no spaces).
pub fn fencing_token_from_env(equipment: &str, session: Option<&str>) -> Option<u64> {
    let var = |name: &str| std::env::var(name).ok();
    if session.is_none() || session != var(super::vars::SESSION_ID).as_deref() {
        return None;
    }
    let ids = var("LABLINK_EQUIPMENT_ID")?;
    let tokens = var("LABLINK_FENCING_TOKEN")?;
    ids.split_whitespace()
        .zip(tokens.split_whitespace())
        .find(|(id, _)| *id == equipment)
        .and_then(|(_, token)| token.parse().ok())
}

/// `key=value` words as JSON parameters, typed by the action's declared
/// parameters (`voltage=12` is a number, `enabled=on` a boolean). Keys the
/// catalog does not declare (or an action it does not list) are sent as
/// JSON if they read as JSON, else as text, for the server to judge.
pub fn typed_parameters(
    spec: Option<&Value>,
    assignments: &[String],
) -> Result<Map<String, Value>, ClientError> {
    let mut parameters = Map::new();
    for word in assignments {
        let Some((key, raw)) = word.split_once('=') else {
            return Err(ClientError::Input(format!(
                "parameters are written key=value (voltage=12), got {word:?}"
            )));
        };
        let declared = spec
            .and_then(|s| s["params"].as_array())
            .and_then(|ps| ps.iter().find(|p| p["name"] == key));
        let value = match declared.and_then(|p| p["type"].as_str()) {
            Some(kind) => typed(kind, key, raw)?,
            None => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into())),
        };
        parameters.insert(key.to_owned(), value);
    }
    Ok(parameters)
}

fn typed(kind: &str, key: &str, raw: &str) -> Result<Value, ClientError> {
    let wrong = |what: &str| ClientError::Input(format!("`{key}` must be {what}, got {raw:?}"));
    Ok(match kind {
        "number" => raw
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Value::from)
            .ok_or_else(|| wrong("a number"))?,
        "integer" => Value::from(raw.parse::<i64>().map_err(|_| wrong("a whole number"))?),
        "boolean" => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" => Value::Bool(true),
            "false" | "0" | "off" | "no" => Value::Bool(false),
            _ => return Err(wrong("true or false (or on/off, yes/no, 1/0)")),
        },
        _ => Value::String(raw.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_window_shows_until_when() {
        let held = serde_json::json!({"locked": true, "claim_by": "2026-01-05T09:01:00.000Z"});
        assert_eq!(
            claim_text(&held).as_deref(),
            Some("claim by 2026-01-05T09:01:00.000Z or it passes to the next in line")
        );
        assert_eq!(claim_text(&serde_json::json!({"locked": true})), None);
    }

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn parameters_are_typed_from_the_catalog() {
        let spec = json!({"name": "x", "params": [
            {"name": "voltage", "type": "number"},
            {"name": "channel", "type": "integer"},
            {"name": "enabled", "type": "boolean"},
            {"name": "mode", "type": "choice", "values": ["CC", "CV"]},
            {"name": "command", "type": "text"},
        ]});
        let got = typed_parameters(
            Some(&spec),
            &words(&[
                "voltage=12",
                "channel=2",
                "enabled=on",
                "mode=CC",
                "command=12",
                "extra=[1,2]",
                "note=hello",
            ]),
        )
        .unwrap();
        assert_eq!(
            Value::Object(got),
            json!({"voltage": 12.0, "channel": 2, "enabled": true, "mode": "CC",
                   "command": "12", "extra": [1, 2], "note": "hello"})
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_the_parameter() {
        let spec = json!({"params": [{"name": "voltage", "type": "number"},
                                     {"name": "channel", "type": "integer"}]});
        for (word, expected) in [
            ("voltage=twelve", "`voltage` must be a number"),
            ("voltage=inf", "`voltage` must be a number"),
            ("channel=1.5", "`channel` must be a whole number"),
            ("channel", "key=value"),
        ] {
            let err = typed_parameters(Some(&spec), &words(&[word])).unwrap_err();
            assert!(err.to_string().contains(expected), "{word}: {err}");
        }
    }
}
