//! The gateway's router nested in a backend's own axum app: `/stream` and `/ws` then go through
//! axum (not the gateway's own socket path) and must behave the same, with events published
//! through the library's `Hub` handle.

mod common;

use common::{ws_next, Api, Sse};
use futures::SinkExt;
use serde_json::{json, Value};
use ssegate::{Draft, Hub};
use tokio_tungstenite::tungstenite::Message;

/// A backend's own axum app with the gateway's router nested under `/push`, served on a free
/// port: the hub, the address, the API under `/push`, and the server's task.
async fn nested(demo: bool) -> (Hub, std::net::SocketAddr, Api, tokio::task::JoinHandle<std::io::Result<()>>) {
    let hub = Hub::new(ssegate::Config { demo, ..Default::default() }).unwrap();
    let app = axum::Router::new().nest("/push", ssegate::router(hub.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await
    });
    let api = Api { base: format!("http://{addr}/push"), http: common::http() };
    (hub, addr, api, server)
}

#[tokio::test]
async fn a_nested_router_serves_sse_and_websocket_through_axum() {
    let (hub, addr, api, server) = nested(false).await;

    let mut sse = Sse::connect(&api, "topic=news").await;

    let url = format!("ws://{addr}/push/ws?topic=news");
    let (mut ws, _) = common::within("the websocket", tokio_tungstenite::connect_async(url)).await.unwrap();
    let welcome = ws_next(&mut ws).await.unwrap();
    assert_eq!((welcome["type"].as_str(), &welcome["topics"]), (Some("welcome"), &json!(["news"])));
    ws.send(Message::text(json!({"type": "ping", "ref": 1}).to_string())).await.unwrap();
    assert_eq!(ws_next(&mut ws).await.unwrap(), json!({"type": "ack", "ref": 1}));

    let published = hub
        .publish(vec![Draft::new(
            Some("news".into()),
            "headline",
            serde_json::value::to_raw_value(&json!({"n": 1})).unwrap(),
            ssegate::Audience::Topic,
        )])
        .await
        .unwrap();
    let id = published[0].id_text.to_string();
    let ev = sse.expect("headline").await;
    assert_eq!((ev.id.as_str(), serde_json::from_str::<Value>(&ev.data).unwrap()), (id.as_str(), json!({"n": 1})));
    let ev = ws_next(&mut ws).await.unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["id"].as_str(), &ev["data"]),
        (Some("event"), Some(id.as_str()), &json!({"n": 1}))
    );

    // Both clients are listed, with their transports.
    let (status, clients) = api.get_json("/clients").await;
    assert_eq!(status, 200);
    let mut transports: Vec<&str> =
        clients["clients"].as_array().unwrap().iter().map(|c| c["transport"].as_str().unwrap()).collect();
    transports.sort();
    assert_eq!(transports, ["sse", "ws"]);
    assert!(clients["clients"].as_array().unwrap().iter().any(|c| c["client_id"] == sse.client_id.as_str()));
    server.abort();
}

/// A library user's router has no demo endpoint, even with the demo on in its config: an
/// unauthenticated `POST /demo/refresh` would let anyone broadcast `refresh` to every client.
#[tokio::test]
async fn a_nested_router_has_no_demo_endpoint() {
    let (hub, _, api, server) = nested(true).await;
    let mut sse = Sse::connect(&api, "topic=news").await;
    let (status, body) = api.post_raw("/demo/refresh", "{}").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    // Nothing reached the subscriber: a published event is the next thing it sees.
    let data = serde_json::value::to_raw_value(&json!({"n": 2})).unwrap();
    hub.publish(vec![Draft::topic("news", "headline", data)]).await.unwrap();
    assert_eq!(sse.next().await.map(|e| e.event), Some("headline".to_owned()));
    server.abort();
}
