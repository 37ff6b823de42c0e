//! A backend that embeds ssegate as a library: a dashboard of three counters (orders, customers,
//! products) changed through its own REST endpoints, each change pushed to browsers as a patch of
//! the retained topic `dashboard/counters`, and a "refresh" action for chosen clients or all.
//!
//! Run it with `cargo run --example dashboard` (add `-- 127.0.0.1:3000` for another address), then:
//! ```sh
//! curl -N 'http://127.0.0.1:3000/push/stream?topic=dashboard/counters'   # snapshot, then patches
//! curl -X POST http://127.0.0.1:3000/counters/orders/add
//! curl -X POST http://127.0.0.1:3000/counters/products/remove                # 400 at zero
//! curl -X POST http://127.0.0.1:3000/refresh -d '{"clients":["<client_id>"]}' # or {} for all
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use ssegate::StateChange;
use ssegate::{Draft, Hub};
use tokio::sync::Mutex;
use uuid::Uuid;

/// The topic whose retained state is the counters.
const TOPIC: &str = "dashboard/counters";
const COUNTERS: [&str; 3] = ["orders", "customers", "products"];

#[derive(Clone)]
struct App {
    hub: Hub,
    /// Held across the publish, so patches go out in the order the counters changed.
    counters: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn change(State(app): State<App>, Path((name, action)): Path<(String, String)>) -> Response {
    let Some(&name) = COUNTERS.iter().find(|c| **c == name) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_counter",
            format!("no counter {name:?} (orders, customers, products)"),
        );
    };
    let mut counters = app.counters.lock().await;
    let value = counters.get(name).copied().unwrap_or(0);
    let value = match action.as_str() {
        "add" => value + 1,
        "remove" if value == 0 => {
            let one = name.trim_end_matches('s');
            return error(StatusCode::BAD_REQUEST, "nothing_to_remove", format!("no {one} remains to remove"));
        }
        "remove" => value - 1,
        _ => return error(StatusCode::NOT_FOUND, "unknown_action", format!("no action {action:?} (add, remove)")),
    };
    counters.insert(name, value);
    let patch = Draft::state_change(TOPIC, StateChange::Merge(json!({ name: value })));
    if let Err(e) = app.hub.publish(vec![patch]).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, "publish_failed", e.to_string());
    }
    Json(json!({ name: value })).into_response()
}

async fn list(State(app): State<App>) -> Json<Value> {
    Json(json!(*app.counters.lock().await))
}

#[derive(Debug, Deserialize)]
struct Refresh {
    #[serde(default)]
    clients: Vec<Uuid>,
}

/// Tells the listed clients (or, with none listed, every client) to reload their data.
async fn refresh(State(app): State<App>, Json(req): Json<Refresh>) -> Response {
    let data = serde_json::value::to_raw_value(&json!({"reason": "backend data changed"}))
        .unwrap_or_else(|_| ssegate::null_data());
    let draft = if req.clients.is_empty() {
        Draft::broadcast("refresh", data)
    } else {
        Draft::clients(&req.clients, "refresh", data)
    };
    match app.hub.publish(vec![draft]).await {
        Ok(events) => {
            Json(json!({"ids": events.iter().map(|e| &*e.id_text).collect::<Vec<_>>(), "clients": req.clients}))
                .into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, "refresh_failed", e.to_string()),
    }
}

/// The backend's app, with the gateway nested under `/push`.
async fn app(hub: Hub) -> Router {
    let counters: BTreeMap<&'static str, u64> = COUNTERS.iter().map(|c| (*c, 0)).collect();
    let initial = Draft::state_change(TOPIC, StateChange::Set(json!(counters)));
    hub.publish(vec![initial]).await.expect("the initial state publishes");
    let state = App { hub: hub.clone(), counters: Arc::new(Mutex::new(counters)) };
    Router::new()
        .route("/counters", get(list))
        .route("/counters/{name}/{action}", post(change))
        .route("/refresh", post(refresh))
        .with_state(state)
        .nest("/push", ssegate::router(hub))
}

/// Serves the dashboard backend on `listener` until `shutdown`.
async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let hub = Hub::new(ssegate::Config::default())?;
    let router = app(hub.clone()).await;
    ssegate::serve(listener, hub, router, shutdown).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args().nth(1).as_deref().unwrap_or("127.0.0.1:3000").parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    use std::time::Duration;

    async fn next(
        events: &mut (impl futures::Stream<Item = Result<eventsource_stream::Event, impl std::fmt::Debug>> + Unpin),
    ) -> (String, Value) {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        (ev.event, serde_json::from_str(&ev.data).unwrap())
    }

    #[tokio::test]
    async fn counters_and_refresh_over_real_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let subscribe = || async {
            let res = http.get(format!("{base}/push/stream?topic={TOPIC}")).send().await.unwrap();
            let mut events = Box::pin(res.bytes_stream().eventsource());
            let (name, welcome) = next(&mut events).await;
            assert_eq!(name, "welcome");
            (welcome["client_id"].as_str().unwrap().to_owned(), events)
        };
        let (me, mut mine) = subscribe().await;
        let (_, mut theirs) = subscribe().await;
        let (name, snapshot) = next(&mut mine).await;
        assert_eq!(
            (name.as_str(), &snapshot["state"]),
            ("snapshot", &json!({"orders": 0, "customers": 0, "products": 0}))
        );
        next(&mut theirs).await;

        let post = |path: &str| http.post(format!("{base}{path}")).send();
        for path in
            ["/counters/orders/add", "/counters/orders/add", "/counters/customers/add", "/counters/orders/remove"]
        {
            assert_eq!(post(path).await.unwrap().status(), 200, "{path}");
        }
        let res = post("/counters/products/remove").await.unwrap();
        assert_eq!(res.status(), 400);
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["message"], "no product remains to remove");
        assert_eq!(post("/counters/widgets/add").await.unwrap().status(), 404);

        let mut state = snapshot["state"].clone();
        for _ in 0..4 {
            let (name, patch) = next(&mut mine).await;
            assert_eq!(name, "patch");
            json_patch::merge(&mut state, &patch["patch"]);
        }
        assert_eq!(state, json!({"orders": 1, "customers": 1, "products": 0}));
        assert_eq!(http.get(format!("{base}/counters")).send().await.unwrap().json::<Value>().await.unwrap(), state);
        let snap: Value =
            http.get(format!("{base}/push/snapshot?topic={TOPIC}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(snap["state"], state);

        // Refresh this dashboard only, then everyone.
        let res = http.post(format!("{base}/refresh")).json(&json!({"clients": [me]})).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let res = http.post(format!("{base}/refresh")).json(&json!({})).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(next(&mut mine).await.0, "refresh");
        assert_eq!(next(&mut mine).await.0, "refresh");
        for _ in 0..4 {
            assert_eq!(next(&mut theirs).await.0, "patch");
        }
        assert_eq!(next(&mut theirs).await.0, "refresh", "only the broadcast reaches the other dashboard");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    }
}
