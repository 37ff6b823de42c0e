//! The backend-facing HTTP API: `POST /publish`, the client and topic admin endpoints, and the
//! health checks. Every request is checked whole before anything is published.

pub(crate) mod demo;
pub(crate) mod rpc;
pub(crate) mod web;

use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::core::broker::Command;
use crate::core::event::{now_ms, null_data, Audience, Checked, Draft, StateChange};
use crate::core::hub::{Hub, PublishError};
use crate::core::metrics::Format;
use crate::core::retained::MAX_STATE_DEPTH;
use crate::core::topic::{validate_topic, Pattern};
use crate::http::auth::{Admin, Publisher};
use crate::http::error::ApiError;
use crate::http::query::parse_patterns;

/// One item of a publish request, as the contract names its fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    topic: Option<String>,
    topics: Option<Vec<String>>,
    event: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    clients: Option<Vec<Uuid>>,
    #[serde(default)]
    broadcast: bool,
    #[serde(default)]
    retain: bool,
    #[serde(borrow)]
    patch: Option<&'a RawValue>,
    #[serde(borrow)]
    json_patch: Option<&'a RawValue>,
}

fn json_error(e: serde_json::Error, at: &str) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request("invalid_json", format!("{at}the body is not valid JSON: {e}"))
        }
        Category::Data => ApiError::bad_request("invalid_request", format!("{at}{e}")),
    }
}

/// Turns one item into drafts: one per topic, or one with no topic for targeted and broadcast
/// events. The drafts of a plain event share one copy of its data.
fn drafts_of(item: Item<'_>, ts: u64, out: &mut Vec<Draft>) -> Result<(), ApiError> {
    let invalid = |m: &str| ApiError::bad_request("invalid_request", m);
    let topics = match (item.topic, item.topics) {
        (Some(_), Some(_)) => return Err(invalid("give topic or topics, not both")),
        (Some(t), None) => vec![t],
        (None, Some(ts)) if ts.is_empty() => return Err(invalid("topics must not be empty")),
        (None, Some(ts)) => ts,
        (None, None) => Vec::new(),
    };
    if let Some(change) = state_change(&item.retain, item.data, item.patch, item.json_patch)? {
        if topics.is_empty() || item.clients.is_some() || item.broadcast {
            return Err(invalid(
                "retain, patch and json_patch change a topic's state: give topic or topics, not clients or broadcast",
            ));
        }
        if item.event.is_some() {
            return Err(invalid("state changes go out as snapshot and patch events: leave out event"));
        }
        out.extend(topics.iter().map(|t| Draft { ts, ..Draft::state_change(t, change.clone()) }));
        return Ok(());
    }
    let audience = match (item.clients, item.broadcast) {
        (Some(_), true) => return Err(invalid("give clients or broadcast, not both")),
        (Some(ids), false) => Audience::Clients(Arc::from(ids)),
        (None, true) => Audience::All,
        (None, false) if topics.is_empty() => {
            return Err(invalid("missing target: give topic, topics, clients or broadcast"))
        }
        (None, false) => Audience::Topic,
    };
    let event = item.event.as_deref().unwrap_or("message");
    let data: Arc<RawValue> = Arc::from(item.data.map(|raw| raw.to_owned()).unwrap_or_else(null_data));
    let draft = |topic: Option<Arc<str>>| Draft { ts, ..Draft::sharing(topic, event, data.clone(), audience.clone()) };
    if topics.is_empty() {
        out.push(draft(None));
    } else {
        out.extend(topics.into_iter().map(|t| draft(Some(Arc::from(t)))));
    }
    Ok(())
}

/// The state change an item asks for, if any: `retain` with `data`, `patch` or `json_patch`.
fn state_change(
    retain: &bool,
    data: Option<&RawValue>,
    patch: Option<&RawValue>,
    json_patch: Option<&RawValue>,
) -> Result<Option<StateChange>, ApiError> {
    let invalid = |m: &str| ApiError::bad_request("invalid_request", m);
    // A value nested past serde_json's limit of 128 levels cannot be a state, which nests at
    // most `MAX_STATE_DEPTH`: refused as such, not as bad JSON.
    let unreadable = |e: serde_json::Error, what: String| {
        if e.to_string().starts_with("recursion limit exceeded") {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "state_too_large",
                format!("a state nests at most {MAX_STATE_DEPTH} levels of arrays and objects"),
            )
        } else {
            invalid(&format!("{what}: {e}"))
        }
    };
    let value = |raw: &RawValue, what: &str| {
        serde_json::from_str::<Value>(raw.get()).map_err(|e| unreadable(e, format!("{what} is not valid JSON")))
    };
    match (*retain, patch, json_patch) {
        (false, None, None) => Ok(None),
        (true, None, None) => match data {
            Some(d) => Ok(Some(StateChange::Set(value(d, "data")?))),
            None => Err(invalid("retain: true needs data (the new state)")),
        },
        (false, Some(p), None) if data.is_none() => Ok(Some(StateChange::Merge(value(p, "patch")?))),
        (false, None, Some(ops)) if data.is_none() => serde_json::from_str::<json_patch::Patch>(ops.get())
            .map(|p| Some(StateChange::JsonPatch(p)))
            .map_err(|e| unreadable(e, "json_patch is not an RFC 6902 patch".into())),
        (false, _, _) if data.is_some() => Err(invalid("a patch carries no data: the patch is the change")),
        _ => Err(invalid("give one of retain, patch and json_patch")),
    }
}

/// Refuses an item whose `topics` names more than `limit` topics (`--max-topics-per-client`),
/// before any of them is looked at.
fn check_topic_count(item: &Item<'_>, limit: u64, at: &str) -> Result<(), ApiError> {
    let n = item.topics.as_ref().map_or(0, Vec::len);
    if n as u64 > limit {
        return Err(ApiError::bad_request(
            "too_many_topics",
            format!("{at}topics names {n} topics; an item may name at most {limit}"),
        ));
    }
    Ok(())
}

/// Parses a publish body (one item or an array of items, each naming at most `max_topics` topics,
/// `--max-topics-per-client`) into checked drafts, each knowing the item it came from (an item
/// with `topics` makes one draft per topic). Nothing checks them again.
pub(crate) fn parse_publish(body: &[u8], max_topics: u64) -> Result<Checked, ApiError> {
    let ts = now_ms();
    let mut drafts = Vec::new();
    let mut item_of = Vec::new();
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| json_error(e, ""))?;
        for (i, raw) in items.iter().enumerate() {
            let at = format!("item {i}: ");
            let item: Item<'_> = serde_json::from_str(raw.get()).map_err(|e| json_error(e, &at))?;
            check_topic_count(&item, max_topics, &at)?;
            drafts_of(item, ts, &mut drafts).map_err(|e| ApiError { message: format!("{at}{}", e.message), ..e })?;
            item_of.resize(drafts.len(), i);
        }
    } else {
        if first != Some(&b'{') {
            // Let serde say what is wrong with it; a valid non-object is a request error.
            serde_json::from_slice::<&RawValue>(body).map_err(|e| json_error(e, ""))?;
            return Err(ApiError::bad_request(
                "invalid_request",
                "the body must be a JSON object or an array of objects",
            ));
        }
        let item: Item<'_> = serde_json::from_slice(body).map_err(|e| json_error(e, ""))?;
        check_topic_count(&item, max_topics, "")?;
        drafts_of(item, ts, &mut drafts)?;
        item_of.resize(drafts.len(), 0);
    }
    Ok(Checked::items(drafts, item_of)?)
}

/// Reads a request body up to the configured limit (`413` beyond it).
pub(crate) async fn read_body(hub: &Hub, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let limit = hub.config().max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    to_bytes(body, limit).await.map_err(|_| too_large())
}

/// `POST /publish`.
pub(crate) async fn publish(
    State(hub): State<Hub>,
    publisher: Publisher,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let result = async {
        let body = read_body(&hub, &headers, body).await?;
        let checked = parse_publish(&body, hub.config().max_topics_per_client)?;
        // A token publishes only where its claim allows; nothing is published otherwise.
        publisher.check(checked.drafts())?;
        Ok::<_, ApiError>(hub.publish_checked(checked).await?)
    }
    .await;
    match result {
        Ok(events) => {
            let ids: Vec<&str> = events.iter().map(|e| &*e.id_text).collect();
            Ok(Json(json!({ "ids": ids })))
        }
        Err(e) => {
            hub.metrics().rejected.inc();
            Err(e)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsBody {
    topics: Vec<String>,
}

fn client_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("unknown_client", "no client with this client_id is connected"))
}

async fn patterns_in(hub: &Hub, headers: &HeaderMap, body: Body) -> Result<Vec<Pattern>, ApiError> {
    let body = read_body(hub, headers, body).await?;
    let req: TopicsBody = serde_json::from_slice(&body).map_err(|e| json_error(e, ""))?;
    if req.topics.is_empty() {
        return Err(ApiError::bad_request("invalid_request", "topics must not be empty"));
    }
    parse_patterns(req.topics.iter().map(String::as_str), hub.config().max_topics_per_client)
}

/// `POST /clients/{client_id}/subscribe` and `/unsubscribe`: the client's subscriptions after.
pub(crate) async fn subscriptions(
    State(hub): State<Hub>,
    _: Admin,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id = client_id(&id)?;
    let subscribe = match action.as_str() {
        "subscribe" => true,
        "unsubscribe" => false,
        _ => return Err(not_found().await),
    };
    let patterns: Vec<String> = patterns_in(&hub, &headers, body).await?.iter().map(ToString::to_string).collect();
    let command = if subscribe { Command::Subscribe(patterns) } else { Command::Unsubscribe(patterns) };
    let topics = hub.command(id, command).await?;
    Ok(Json(json!({ "client_id": id, "topics": topics })))
}

/// `DELETE /clients/{client_id}`.
pub(crate) async fn disconnect(
    State(hub): State<Hub>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = client_id(&id)?;
    hub.command(id, Command::Disconnect).await?;
    Ok(Json(json!({ "client_id": id, "disconnected": true })))
}

/// `GET /clients`.
pub(crate) async fn clients(State(hub): State<Hub>, _: Admin) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "clients": hub.all_clients().await? })))
}

/// `GET /topics`.
pub(crate) async fn topics(State(hub): State<Hub>, _: Admin) -> Json<Value> {
    Json(json!({ "topics": hub.topics() }))
}

/// `DELETE /topics/{topic}`: drops the topic's retained state, as a state change published in
/// order with the rest: its subscribers get `snapshot` with `state: null` and the next version,
/// which a later state continues from. Answers `{"topic", "version", "id"}` (the version and event
/// id of the deletion), or `404 unknown_topic` when the topic has no state.
pub(crate) async fn delete_topic(
    State(hub): State<Hub>,
    publisher: Publisher,
    topic: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Value>, ApiError> {
    // A path that does not decode to UTF-8 names no topic (and is never decoded lossily).
    let Path(topic) = topic.map_err(|_| ApiError::bad_request("invalid_topic", "the topic is not valid UTF-8"))?;
    validate_topic(&topic).map_err(|e| ApiError::bad_request("invalid_topic", format!("{topic:?}: {e}")))?;
    if !publisher.may_publish(&topic) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your token does not allow publishing to {topic:?}"),
        ));
    }
    let events = hub.publish(vec![Draft::state_change(&topic, StateChange::Delete)]).await.map_err(|e| match e {
        PublishError::UnknownTopic { .. } => {
            ApiError::not_found("unknown_topic", format!("topic {topic:?} has no retained state"))
        }
        other => other.into(),
    })?;
    let deleted = events.first().map(|ev| (ev.draft.version, &*ev.id_text));
    let (version, id) = deleted.unwrap_or((None, ""));
    Ok(Json(json!({ "topic": topic, "version": version, "id": id })))
}

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: ready to serve, broker reachable.
pub(crate) async fn readyz(State(hub): State<Hub>) -> Response {
    let broker = hub.broker();
    if hub.shutdown_token().is_cancelled() {
        return ApiError::unavailable("shutting_down", "the gateway is shutting down", 1).into_response();
    }
    if broker.ready() {
        Json(json!({ "status": "ready", "broker": broker.name() })).into_response()
    } else {
        ApiError::unavailable("broker_unavailable", format!("the {} broker is not reachable", broker.name()), 1)
            .into_response()
    }
}

/// `GET /metrics`: Prometheus text 0.0.4, or OpenMetrics for a scraper whose `Accept` asks for it.
pub(crate) async fn metrics(State(hub): State<Hub>, headers: HeaderMap) -> Response {
    hub.metrics().history.set(hub.broker().history_len() as i64);
    let accept: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    let format = Format::negotiate((!accept.is_empty()).then(|| accept.join(",")).as_deref());
    ([(header::CONTENT_TYPE, format.content_type()), (header::VARY, "Accept")], hub.metrics().render(format))
        .into_response()
}

/// Answers paths the gateway does not serve.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; see the API contract")
}

/// Answers a known path called with the wrong method.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_item_becomes_one_draft_per_topic() {
        let checked = parse_publish(br#"{"topics":["a","b"],"event":"x","data":{"k":[1, 2]}}"#, 8).unwrap();
        let d = checked.drafts();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].topic.as_deref(), Some("b"));
        assert_eq!(d[0].data.get(), r#"{"k":[1, 2]}"#);
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let code = |b: &[u8]| parse_publish(b, 8).unwrap_err().code;
        assert_eq!(code(b"{\"topic\":"), "invalid_json");
        assert_eq!(code(b"42"), "invalid_request");
        assert_eq!(code(br#"{"data":1}"#), "invalid_request");
        assert_eq!(code(br#"{"topic":"a","topics":["b"]}"#), "invalid_request");
        assert_eq!(code(br#"{"topic":"a","tpoic":1}"#), "invalid_request");
        assert_eq!(code(br#"{"clients":["nope"]}"#), "invalid_request");
        let e = parse_publish(br#"[{"topic":"a"},{"data":2}]"#, 8).unwrap_err();
        assert!(e.message.starts_with("item 1:"), "{}", e.message);
        // What the drafts themselves break (a reserved event name) names the item too, although
        // the item before it made two drafts.
        let e = parse_publish(br#"[{"topics":["a","b"]},{"topic":"c","event":"welcome"}]"#, 8).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        assert!(e.message.starts_with("item 1:"), "{}", e.message);
        assert_eq!(code(br#"{"topic":"a/*"}"#), "invalid_request");
    }

    #[test]
    fn too_many_topics_are_refused_before_any_is_parsed() {
        let names = |n: usize| (0..n).map(|i| format!("t/{i}")).collect::<Vec<_>>();
        let body = |n: usize| serde_json::to_vec(&json!([{"topic": "a"}, {"topics": names(n)}])).unwrap();
        assert_eq!(parse_publish(&body(3), 3).unwrap().drafts().len(), 4);
        let e = parse_publish(&body(4), 3).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "too_many_topics"));
        assert!(e.message.starts_with("item 1:"), "{}", e.message);

        let ok = parse_patterns(["a", "b/*", "a"], 3).unwrap();
        assert_eq!(ok.iter().map(ToString::to_string).collect::<Vec<_>>(), ["a", "b/*"], "each once, in order");
        // Four names, one of them invalid: the count is what refuses it.
        assert_eq!(parse_patterns(["a", "b", "c", "*/bad"], 3).unwrap_err().code, "too_many_topics");
        assert_eq!(parse_patterns(["a", "*/bad"], 3).unwrap_err().code, "invalid_topic");
    }
}
