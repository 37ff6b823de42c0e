//! `--state-file`: history and retained state survive a restart, so clients resume across it as
//! across any reconnect; SIGTERM drains and exits cleanly.

mod common;

use common::{ChildServer, Sse};
use serde_json::json;

#[tokio::test]
async fn clients_resume_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("ssegate-restart-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.json");
    let file_arg = file.to_str().unwrap();

    let first = ChildServer::start(&["--state-file", file_arg]).await;
    let addr = first.base.trim_start_matches("http://").to_owned();
    first.publish_ok(json!({"topic": "kpi", "retain": true, "data": {"n": 0}})).await;
    let mut sse = Sse::connect(&first, "topic=feed&topic=kpi").await;
    assert_eq!(sse.expect("snapshot").await.data, r#"{"topic":"kpi","version":1,"state":{"n":0}}"#);
    for n in 0..5 {
        first.publish_ok(json!({"topic": "feed", "event": "n", "data": n})).await;
    }
    for n in 0..5 {
        assert_eq!(sse.expect("n").await.data, n.to_string());
    }
    let position = sse.last_id.clone();
    let status = first.terminate().await;
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    assert!(sse.next().await.is_none(), "the stream ended with the server");

    let second = ChildServer::start_at(&addr, &["--state-file", file_arg]).await;
    for n in 5..8 {
        second.publish_ok(json!({"topic": "feed", "event": "n", "data": n})).await;
    }
    second.publish_ok(json!({"topic": "kpi", "patch": {"n": 1}})).await;
    let mut back = Sse::connect_with(&second, "topic=feed&topic=kpi", Some(&position)).await;
    for n in 5..8 {
        assert_eq!(back.expect("n").await.data, n.to_string(), "every event once, in order, across the restart");
    }
    let patch = back.expect("patch").await;
    assert_eq!(patch.data, r#"{"topic":"kpi","version":2,"patch":{"n":1}}"#, "the state's version carried on");
    let (_, snap) = second.get_json("/snapshot?topic=kpi").await;
    assert_eq!(snap["state"], json!({"n": 1}));
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}
