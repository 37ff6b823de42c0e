//! The built-in demo that `ssegate serve` runs by default (`--demo false` turns it off): a
//! publisher that keeps the retained topic `demo/counters` ({orders, customers, products}) and the
//! time series `demo/series` moving, and `POST /demo/refresh`, which the demo page's "Simulate
//! backend refresh" button calls to refresh one client or all of them.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::core::event::{now_ms, null_data, Draft, StateChange};
use crate::core::hub::Hub;
use crate::http::auth::Admin;
use crate::http::error::ApiError;

/// The retained topic of the demo's counters.
pub(crate) const COUNTERS: &str = "demo/counters";
/// The topic of the demo's time series (`point` events).
pub(crate) const SERIES: &str = "demo/series";
/// How often the demo publishes.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// A small deterministic generator: the demo needs movement, not quality randomness.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Starts the demo publisher; it stops when the hub shuts down.
pub(crate) fn spawn(hub: Hub) {
    let stop = hub.shutdown_token().clone();
    tokio::spawn(async move {
        let mut rng = Lcg(now_ms());
        let mut counts = [120u64, 48, 12];
        let names = ["orders", "customers", "products"];
        // Keep the counters a restarted gateway restored; start them otherwise.
        if let Some(snapshot) = hub.snapshot(COUNTERS) {
            let state: Value =
                serde_json::from_slice::<Value>(&snapshot.json).map(|v| v["state"].clone()).unwrap_or_default();
            for (c, name) in counts.iter_mut().zip(names) {
                *c = state[name].as_u64().unwrap_or(*c);
            }
        } else {
            let initial = json!({"orders": counts[0], "customers": counts[1], "products": counts[2]});
            if let Err(e) = hub.publish(vec![Draft::state_change(COUNTERS, StateChange::Set(initial))]).await {
                tracing::warn!(error = %e, "demo publisher could not start");
                return;
            }
        }
        let mut value = 50.0f64;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut patch = serde_json::Map::new();
            for (i, name) in names.iter().enumerate() {
                if rng.next(3) == 0 {
                    continue;
                }
                let step = rng.next(5);
                counts[i] = if rng.next(4) == 0 { counts[i].saturating_sub(step) } else { counts[i] + step };
                patch.insert((*name).to_owned(), json!(counts[i]));
            }
            value = (value + (rng.next(21) as f64 - 10.0) / 2.0).clamp(0.0, 100.0);
            let point = serde_json::value::to_raw_value(&json!({"t": now_ms(), "value": value}))
                .unwrap_or_else(|_| null_data());
            let mut drafts = vec![Draft::topic(SERIES, "point", point)];
            if !patch.is_empty() {
                drafts.push(Draft::state_change(COUNTERS, StateChange::Merge(Value::Object(patch))));
            }
            if let Err(e) = hub.publish(drafts).await {
                tracing::debug!(error = %e, "demo publish failed");
            }
        }
    });
}

/// What the demo page asks for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    /// The client to refresh; with none, every client.
    client_id: Option<Uuid>,
}

/// The demo's own endpoint, `POST /demo/refresh`. [`crate::run`] mounts it beside
/// [`crate::router`] when `--demo` is on; an app that nests the router does not get it unless it
/// merges this too.
pub(crate) fn router(hub: Hub) -> axum::Router {
    axum::Router::new().route("/demo/refresh", axum::routing::post(refresh)).with_state(hub)
}

/// `POST /demo/refresh`: a stand-in for a backend that tells one dashboard, or all of them, to
/// reload. It targets clients or broadcasts, so it needs admin rights like `POST /publish` would:
/// with no key configured, the demo page served by the gateway on loopback has them; a page on
/// another site does not.
pub(crate) async fn refresh(
    State(hub): State<Hub>,
    _: Admin,
    Json(req): Json<RefreshRequest>,
) -> Result<Json<Value>, ApiError> {
    if !hub.config().demo {
        return Err(ApiError::not_found("not_found", "the demo is turned off on this server"));
    }
    let data = json!({"reason": "the backend has new data", "at": now_ms(), "target": if req.client_id.is_some() { "one" } else { "all" }});
    let data = serde_json::value::to_raw_value(&data).unwrap_or_else(|_| null_data());
    let draft = match req.client_id {
        Some(id) => Draft::clients(&[id], "refresh", data),
        None => Draft::broadcast("refresh", data),
    };
    let events = hub.publish(vec![draft]).await?;
    Ok(Json(json!({"ids": events.iter().map(|e| &*e.id_text).collect::<Vec<_>>()})))
}
