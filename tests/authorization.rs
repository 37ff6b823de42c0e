//! Authorization (issue 15), as an attacker and as a legitimate user meet it: JWT subscribe rights
//! on every transport, publish and admin rights, tokens that expire, the keyless loopback rule
//! against cross-site requests, DNS rebinding and proxies, session secrets for long-poll, and the
//! secrets that must stay secret. Tokens are signed here, at test time (HS256, and ES256 with a
//! key made by the test).

mod common;

use std::time::Duration;

use common::{urlencode, within, ws_connect, ws_next, Sse, TestServer, WsStream};
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a test secret that signs tokens";
const API_KEY: &str = "backend-key";

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token with the `ssegate` claim `rights`, expiring `ttl_s` from now (negative: past).
fn token(rights: Value, ttl_s: i64) -> String {
    let exp = (now_s() as i64 + ttl_s) as u64;
    encode(&Header::default(), &json!({"sub": "user-1", "exp": exp, "ssegate": rights}), &key()).unwrap()
}

fn key() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

/// A gateway that verifies tokens with [`SECRET`] and takes [`API_KEY`] from backends.
async fn jwt_server(tweak: impl FnOnce(&mut ssegate::Config)) -> TestServer {
    TestServer::with(|c| {
        c.jwt_key = Some(ssegate::JwtKey::parse(SECRET).unwrap());
        c.api_key = vec![API_KEY.into()];
        tweak(c);
    })
    .await
}

/// `POST /publish` with an `Authorization: Bearer` credential.
async fn publish_as(s: &TestServer, bearer: &str, body: Value) -> (StatusCode, Value) {
    let res = s.http.post(s.url("/publish")).bearer_auth(bearer).json(&body).send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `GET path` with optional bearer: status and the error code, if any.
async fn get_as(s: &TestServer, path: &str, bearer: Option<&str>) -> (StatusCode, Option<String>) {
    let mut req = s.http.get(s.url(path));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let body: Value = if status.is_success() { Value::Null } else { res.json().await.unwrap_or(Value::Null) };
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

/// Opens a WebSocket with extra headers: the socket, or the handshake's refusal status.
async fn ws_with(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> Result<WsStream, u16> {
    let url = format!("{}{}", s.base.replacen("http://", "ws://", 1), path);
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match within("the websocket handshake", tokio_tungstenite::connect_async(req)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

async fn send(ws: &mut WsStream, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next WebSocket frame that is not a snapshot.
async fn ws_frame(ws: &mut WsStream) -> Value {
    loop {
        let v = ws_next(ws).await.expect("a frame");
        if v["type"] != "snapshot" {
            return v;
        }
    }
}

/// One long poll with a bearer token: status and answer.
async fn long_poll(s: &TestServer, query: &str, bearer: &str) -> (StatusCode, Value) {
    let res = s.http.get(s.url(&format!("/poll?{query}"))).bearer_auth(bearer).send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_token_for_a_subtree_reads_it_on_every_transport_and_nothing_else() {
    let s = jwt_server(|_| {}).await;
    let reader = token(json!({"subscribe": ["a/**"]}), 600);

    // SSE with the token in the header; WebSocket with access_token; long-poll with the header.
    let res = s.http.get(s.url("/stream?topic=a/x")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut sse_events = res.bytes_stream();
    let mut ws = ws_connect(&s, &format!("/ws?topic=a/*&access_token={reader}")).await;
    assert_eq!(ws_frame(&mut ws).await["type"], "welcome");
    let (status, first) = long_poll(&s, "topic=a/x", &reader).await;
    assert_eq!(status, 200, "{first}");
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let session = first["session"].as_str().unwrap().to_owned();
    let id = first["client_id"].as_str().unwrap().to_owned();

    let (status, _) = publish_as(&s, API_KEY, json!({"topic": "a/x", "event": "news", "data": 7})).await;
    assert_eq!(status, 200);
    let got = within("the SSE event", async {
        let mut text = String::new();
        while !text.contains("event: news") {
            text.push_str(&String::from_utf8_lossy(&sse_events.next().await.unwrap().unwrap()));
        }
        text
    })
    .await;
    assert!(got.contains("data: 7"), "{got}");
    let ev = ws_frame(&mut ws).await;
    assert_eq!((ev["type"].as_str(), ev["topic"].as_str(), &ev["data"]), (Some("event"), Some("a/x"), &json!(7)));
    let q = format!("topic=a/x&client_id={id}&session={session}&cursor={}&timeout=5", urlencode(&cursor));
    let (status, next) = long_poll(&s, &q, &reader).await;
    assert_eq!((status, &next["events"][0]["data"]), (StatusCode::OK, &json!(7)));

    // `b` is outside the claim: 403 on each transport.
    assert_eq!(get_as(&s, "/stream?topic=b", Some(&reader)).await, (StatusCode::FORBIDDEN, Some("forbidden".into())));
    assert_eq!(get_as(&s, "/stream?topic=a/x&topic=b", Some(&reader)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(get_as(&s, "/stream?topic=**", Some(&reader)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(ws_with(&s, &format!("/ws?topic=b&access_token={reader}"), &[]).await.err(), Some(403));
    assert_eq!(get_as(&s, "/poll?topic=b", Some(&reader)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(get_as(&s, "/snapshot?topic=b", Some(&reader)).await.0, StatusCode::FORBIDDEN);

    // No token, an expired one, a forged one: 401.
    let expired = token(json!({"subscribe": ["**"]}), -10);
    let forged =
        encode(&Header::default(), &json!({"ssegate": {"subscribe": ["**"]}}), &EncodingKey::from_secret(b"guess"))
            .unwrap();
    for bad in [None, Some(expired.as_str()), Some(forged.as_str()), Some("not.a.jwt")] {
        for path in ["/stream?topic=a/x", "/poll?topic=a/x", "/snapshot?topic=a/x"] {
            assert_eq!(get_as(&s, path, bad).await, (StatusCode::UNAUTHORIZED, Some("unauthorized".into())), "{path}");
        }
    }
    assert_eq!(ws_with(&s, "/ws?topic=a/x", &[]).await.err(), Some(401));
    assert_eq!(ws_with(&s, &format!("/ws?topic=a/x&access_token={expired}"), &[]).await.err(), Some(401));
    // A token signed with "none" is no token.
    let none = format!("eyJhbGciOiJub25lIn0.{}.", jsonwebtoken_payload(&json!({"ssegate": {"subscribe": ["**"]}})));
    assert_eq!(get_as(&s, "/stream?topic=a/x", Some(&none)).await.0, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

/// The base64url of a JSON payload, for hand-made tokens.
fn jsonwebtoken_payload(v: &Value) -> String {
    base64url(v.to_string().as_bytes())
}

fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    let mut s = base64url(bytes).replace('-', "+").replace('_', "/");
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

#[tokio::test]
async fn websocket_subscribe_frames_are_checked_but_a_backend_subscribes_anyone() {
    let s = jwt_server(|_| {}).await;
    let reader = token(json!({"subscribe": ["a/**"]}), 600);
    let mut ws = ws_with(&s, "/ws", &[("authorization", &format!("Bearer {reader}"))]).await.unwrap();
    let id = ws_frame(&mut ws).await["client_id"].as_str().unwrap().to_owned();
    send(&mut ws, json!({"type": "subscribe", "topics": ["b"], "ref": 1})).await;
    let err = ws_frame(&mut ws).await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str(), &err["ref"]),
        (Some("error"), Some("forbidden"), &json!(1))
    );
    send(&mut ws, json!({"type": "subscribe", "topics": ["a/y"], "ref": 2})).await;
    assert_eq!(ws_frame(&mut ws).await, json!({"type": "ack", "ref": 2}));

    // The backend's own right: it subscribes the client to `b`, whatever the client's token says.
    let res = s
        .http
        .post(s.url(&format!("/clients/{id}/subscribe")))
        .bearer_auth(API_KEY)
        .json(&json!({"topics": ["b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    publish_as(&s, API_KEY, json!({"topic": "b", "data": "from the backend"})).await;
    assert_eq!(ws_frame(&mut ws).await["data"], "from the backend");
    s.stop().await;
}

#[tokio::test]
async fn anonymous_topics_need_no_token_and_api_keys_read_everything() {
    let s = jwt_server(|c| c.anonymous_topics = vec!["public/**".into()]).await;
    let mut sse = Sse::connect(&s, "topic=public/news").await;
    assert_eq!(get_as(&s, "/stream?topic=private", None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get_as(&s, "/stream?topic=public/**", None).await.0, StatusCode::OK);
    assert_eq!(get_as(&s, "/stream?topic=**", None).await.0, StatusCode::UNAUTHORIZED, "** is wider than public/**");
    let backend = Sse::connect(&s, &format!("topic=private&access_token={API_KEY}")).await;
    drop(backend);
    publish_as(&s, API_KEY, json!({"topic": "public/news", "data": 1})).await;
    assert_eq!(sse.expect("message").await.data, "1");
    s.stop().await;
}

#[tokio::test]
async fn live_streams_are_closed_when_their_token_expires() {
    let s = jwt_server(|_| {}).await;
    let short = token(json!({"subscribe": ["a/**"]}), 2);
    let mut sse = Sse::connect(&s, &format!("topic=a/x&access_token={short}")).await;
    let mut ws = ws_connect(&s, &format!("/ws?topic=a/x&access_token={short}")).await;
    assert_eq!(ws_frame(&mut ws).await["type"], "welcome");
    let long = token(json!({"subscribe": ["a/**"]}), 600);
    let mut keeps = ws_connect(&s, &format!("/ws?topic=a/x&access_token={long}")).await;
    assert_eq!(ws_frame(&mut keeps).await["type"], "welcome");

    let code = within("the WebSocket to be closed at exp", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(code, Some(1008));
    assert!(within("the SSE stream to end at exp", async { sse.next().await }).await.is_none());
    // The token's expiry closes its own connections only.
    publish_as(&s, API_KEY, json!({"topic": "a/x", "data": "still here"})).await;
    assert_eq!(ws_frame(&mut keeps).await["data"], "still here");
    // And it cannot come back with the same token.
    assert_eq!(get_as(&s, &format!("/stream?topic=a/x&access_token={short}"), None).await.0, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test]
async fn a_token_publishes_where_its_claim_allows_and_admin_is_its_own_right() {
    let s = jwt_server(|_| {}).await;
    let mut watcher = Sse::connect(&s, &format!("topic=**&access_token={API_KEY}")).await;
    let writer = token(json!({"publish": ["a/**"]}), 600);
    let (status, _) = publish_as(&s, &writer, json!({"topic": "a/x", "data": "ok"})).await;
    assert_eq!(status, 200);
    assert_eq!(watcher.expect("message").await.data, "\"ok\"");

    // Outside the claim, targeting, broadcasting, admin endpoints: 403, and nothing published.
    for body in [
        json!({"topic": "b", "data": "no"}),
        json!([{"topic": "a/x", "data": "no"}, {"topic": "b", "data": "no"}]),
        json!({"broadcast": true, "data": "no"}),
        json!({"topic": "a/x", "clients": [watcher.client_id], "data": "no"}),
    ] {
        let (status, v) = publish_as(&s, &writer, body.clone()).await;
        assert_eq!((status, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{body}");
    }
    assert_eq!(get_as(&s, "/clients", Some(&writer)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(get_as(&s, "/topics", Some(&writer)).await.0, StatusCode::FORBIDDEN);
    let reader = token(json!({"subscribe": ["**"]}), 600);
    assert_eq!(publish_as(&s, &reader, json!({"topic": "a/x", "data": "no"})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(publish_as(&s, "wrong-key", json!({"topic": "a/x", "data": "no"})).await.0, StatusCode::UNAUTHORIZED);
    let res = s.http.post(s.url("/publish")).header("x-api-key", "").json(&json!({"topic": "a/x"})).send().await;
    assert_eq!(res.unwrap().status(), StatusCode::UNAUTHORIZED, "an empty key is not a key");
    assert_eq!(
        s.publish(&json!({"topic": "a/x", "data": "no"})).await.0,
        StatusCode::UNAUTHORIZED,
        "loopback is no key"
    );

    // An admin token may do all of it; a case-insensitive Bearer scheme works.
    let admin = token(json!({"admin": true}), 600);
    assert_eq!(get_as(&s, "/clients", Some(&admin)).await.0, StatusCode::OK);
    let res = s
        .http
        .post(s.url("/publish"))
        .header("authorization", format!("bEaReR {admin}"))
        .json(&json!({"broadcast": true, "event": "last", "data": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let next = watcher.expect("last").await;
    assert_eq!(next.data, "\"yes\"", "nothing refused reached the subscriber");

    // Over a WebSocket, the same claim.
    let mut ws = ws_connect(&s, &format!("/ws?access_token={writer}")).await;
    ws_frame(&mut ws).await;
    send(&mut ws, json!({"type": "publish", "topic": "b", "data": 1, "ref": 1})).await;
    assert_eq!(ws_frame(&mut ws).await["code"], "forbidden");
    send(&mut ws, json!({"type": "publish", "topic": "a/z", "data": 1, "ref": 2})).await;
    assert_eq!(ws_frame(&mut ws).await["type"], "ack");
    s.stop().await;
}

/// An ES256 key pair made now: the PKCS#8 private key (DER) and the public key as PEM.
fn es256_pair() -> (Vec<u8>, String) {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // SubjectPublicKeyInfo for a P-256 key: the fixed header, then the uncompressed point.
    let mut spki = hex("3059301306072a8648ce3d020106082a8648ce3d030107034200");
    spki.extend_from_slice(pair.public_key().as_ref());
    let body = base64(&spki);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    (pkcs8.as_ref().to_vec(), format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n")))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[tokio::test]
async fn an_es256_public_key_file_verifies_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = es256_pair();
    let path = dir.path().join("jwt.pem");
    std::fs::write(&path, &public).unwrap();
    let jwt_key = ssegate::JwtKey::parse(&format!("@{}", path.display())).unwrap();
    assert_eq!(jwt_key.algorithm, Algorithm::ES256);
    let s = TestServer::with(|c| c.jwt_key = Some(jwt_key)).await;
    let claims = json!({"exp": now_s() + 600, "ssegate": {"subscribe": ["a/**"]}});
    let signed = encode(&Header::new(Algorithm::ES256), &claims, &EncodingKey::from_ec_der(&private)).unwrap();
    assert_eq!(get_as(&s, "/stream?topic=a/b", Some(&signed)).await.0, StatusCode::OK);
    // Algorithm confusion: the public key used as an HS256 secret does not verify.
    let confused = encode(&Header::default(), &claims, &EncodingKey::from_secret(public.as_bytes())).unwrap();
    assert_eq!(get_as(&s, "/stream?topic=a/b", Some(&confused)).await.0, StatusCode::UNAUTHORIZED);
    assert!(ssegate::JwtKey::parse(&format!("@{}", dir.path().join("missing").display())).is_err());
    s.stop().await;
}

/// `POST /publish` as a web page (or a rebinding DNS name, or a proxy) could send it to a keyless
/// gateway: text/plain, with the extra headers.
async fn drive_by(s: &TestServer, headers: &[(&str, &str)]) -> StatusCode {
    let mut req = s
        .http
        .post(s.url("/publish"))
        .header("content-type", "text/plain")
        .body(json!({"topic": "t", "event": "attack", "data": 1}).to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn a_keyless_gateway_refuses_what_a_web_page_or_a_rebinding_name_could_send() {
    let s = TestServer::with(|c| {
        c.cors_origins = "https://app.example".into();
        c.allowed_hosts = vec!["gateway.internal".into()];
    })
    .await;
    let mut watcher = Sse::connect(&s, "topic=t").await;
    for headers in [
        &[("origin", "http://evil.example")][..],
        &[("origin", "null")],
        &[("sec-fetch-site", "cross-site")],
        &[("host", "rebind.evil.example")],
        &[("host", "rebind.evil.example:8080"), ("origin", "http://rebind.evil.example:8080")],
    ] {
        assert_eq!(drive_by(&s, headers).await, StatusCode::FORBIDDEN, "{headers:?}");
    }
    // The admin endpoints too: reading the clients cross-origin, disconnecting one.
    let evil = [("origin", "http://evil.example")];
    let res = s.http.get(s.url("/clients")).header(evil[0].0, evil[0].1).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = s.http.delete(s.url(&format!("/clients/{}", watcher.client_id))).header(evil[0].0, evil[0].1).send();
    assert_eq!(res.await.unwrap().status(), StatusCode::FORBIDDEN);

    // What is legitimate: a local backend, a listed origin, the gateway's own page, a listed host.
    assert_eq!(drive_by(&s, &[]).await, StatusCode::OK);
    assert_eq!(drive_by(&s, &[("origin", "https://app.example")]).await, StatusCode::OK);
    let own = format!("http://{}", s.addr);
    assert_eq!(drive_by(&s, &[("origin", &own), ("sec-fetch-site", "same-origin")]).await, StatusCode::OK);
    assert_eq!(drive_by(&s, &[("host", "gateway.internal")]).await, StatusCode::OK);
    assert_eq!(drive_by(&s, &[("host", "localhost:1234")]).await, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(watcher.expect("attack").await.data, "1");
    }
    assert!(watcher.quiet_for(Duration::from_millis(200)).await.is_none(), "the refused ones published nothing");
    assert_eq!(s.client_ids().await, [watcher.client_id.clone()], "nobody was disconnected");
    s.stop().await;
}

#[tokio::test]
async fn behind_a_proxy_loopback_means_the_real_client() {
    // A proxy nobody declared: its forwarded requests are not loopback.
    let s = TestServer::start().await;
    assert_eq!(drive_by(&s, &[("x-forwarded-for", "203.0.113.7")]).await, StatusCode::FORBIDDEN);
    assert_eq!(drive_by(&s, &[("forwarded", "for=203.0.113.7")]).await, StatusCode::FORBIDDEN);
    s.stop().await;

    let s = TestServer::with(|c| c.trusted_proxies = vec![ssegate::IpNet::parse("127.0.0.1").unwrap()]).await;
    assert_eq!(drive_by(&s, &[("x-forwarded-for", "203.0.113.7")]).await, StatusCode::FORBIDDEN, "remote");
    assert_eq!(drive_by(&s, &[]).await, StatusCode::FORBIDDEN, "a proxy that does not say who asked");
    // A client that claims loopback in front of the proxy does not fool it: the proxy appends.
    let spoofed = [("x-forwarded-for", "127.0.0.1, 203.0.113.7")];
    assert_eq!(drive_by(&s, &spoofed).await, StatusCode::FORBIDDEN);
    let res = s.http.get(s.url("/clients")).header("x-forwarded-for", "203.0.113.7").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(drive_by(&s, &[("x-forwarded-for", "127.0.0.1")]).await, StatusCode::OK, "a local client");
    assert_eq!(drive_by(&s, &[("forwarded", "for=\"[::1]:5000\"")]).await, StatusCode::OK);
    s.stop().await;
}

#[tokio::test]
async fn websocket_origins_are_checked_against_cors_origins() {
    let s = TestServer::with(|c| c.cors_origins = "https://app.example".into()).await;
    assert_eq!(ws_with(&s, "/ws?topic=t", &[("origin", "http://evil.example")]).await.err(), Some(403));
    let mut ok = ws_with(&s, "/ws?topic=t", &[("origin", "https://app.example")]).await.unwrap();
    assert_eq!(ws_frame(&mut ok).await["type"], "welcome");
    let mut tool = ws_with(&s, "/ws?topic=t", &[]).await.unwrap();
    assert_eq!(ws_frame(&mut tool).await["type"], "welcome", "a client that is not a browser");
    s.stop().await;
}

#[tokio::test]
async fn a_client_id_does_not_open_another_clients_long_poll_session() {
    let s = TestServer::with(|c| {
        c.poll_session_ttl_ms = 300;
        c.heartbeat_ms = 100;
    })
    .await;
    let (_, first) = s.get_json("/poll?topic=t").await;
    let (id, session, cursor) = (
        first["client_id"].as_str().unwrap().to_owned(),
        first["session"].as_str().unwrap().to_owned(),
        first["cursor"].as_str().unwrap().to_owned(),
    );
    s.publish_ok(json!({"clients": [id], "event": "private", "data": "for the owner"})).await;
    // The attacker knows the client_id (from /clients, logs, the demo page) and the cursor.
    for q in [
        format!("topic=t&client_id={id}&cursor={cursor}&timeout=0"),
        format!("topic=t&client_id={id}&session=0000&cursor={cursor}&timeout=0"),
    ] {
        let (status, v) = s.get_json(&format!("/poll?{q}")).await;
        assert_eq!(status, 200);
        assert_ne!(v["client_id"], id.as_str(), "a session of its own");
        assert!(v["events"].as_array().unwrap().iter().all(|e| e["event"] != "private"), "{v}");
    }
    // The owner still gets its event.
    let q = format!("topic=t&client_id={id}&session={session}&cursor={cursor}&timeout=5");
    let (_, v) = s.get_json(&format!("/poll?{q}")).await;
    assert_eq!(v["events"][0]["data"], "for the owner");
    let after = v["cursor"].as_str().unwrap().to_owned();

    // Once the session has expired, its targeted history is the owner's alone as well.
    common::until("the session to expire", || async { s.client_ids().await.is_empty() }).await;
    s.publish_ok(json!({"clients": [id], "event": "private", "data": "while away"})).await;
    let (_, stolen) = s.get_json(&format!("/poll?topic=t&client_id={id}&cursor={after}&timeout=0")).await;
    assert_ne!(stolen["client_id"], id.as_str());
    assert!(stolen["events"].as_array().unwrap().iter().all(|e| e["event"] != "private"), "{stolen}");
    let q = format!("topic=t&client_id={id}&session={session}&cursor={after}&timeout=5");
    let (_, back) = s.get_json(&format!("/poll?{q}")).await;
    assert_eq!(back["client_id"], id.as_str());
    assert_eq!(back["events"][0]["data"], "while away");
    s.stop().await;
}

#[tokio::test]
async fn rpc_reaches_the_backend_with_the_callers_identity() {
    let backend = axum::Router::new().route(
        "/rpc",
        axum::routing::post(|axum::Json(req): axum::Json<Value>| async move { axum::Json(req["identity"].clone()) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let backend_task = tokio::spawn(async move { axum::serve(listener, backend).await });
    let s = jwt_server(|c| {
        c.rpc_url = Some(format!("http://{backend_addr}/rpc"));
        c.anonymous_topics = vec!["**".into()];
    })
    .await;
    let mut ws = ws_connect(&s, &format!("/ws?access_token={}", token(json!({"subscribe": ["a"]}), 600))).await;
    ws_frame(&mut ws).await;
    send(&mut ws, json!({"type": "rpc", "method": "whoami", "data": null, "ref": 1})).await;
    let reply = ws_frame(&mut ws).await;
    assert_eq!((reply["type"].as_str(), reply["data"]["sub"].as_str()), (Some("reply"), Some("user-1")), "{reply}");
    assert_eq!(reply["data"]["ssegate"]["subscribe"], json!(["a"]));
    let mut anon = ws_connect(&s, "/ws").await;
    ws_frame(&mut anon).await;
    send(&mut anon, json!({"type": "rpc", "method": "whoami", "data": null, "ref": 2})).await;
    assert_eq!(ws_frame(&mut anon).await["data"], Value::Null, "no token: no identity");
    s.stop().await;
    backend_task.abort();
}

#[tokio::test]
async fn topics_that_are_not_utf8_are_refused_not_merged() {
    let s = TestServer::start().await;
    for path in ["/stream?topic=a%FF", "/poll?topic=a%FF", "/snapshot?topic=a%FF", "/stream?topic=a%C3"] {
        assert_eq!(get_as(&s, path, None).await, (StatusCode::BAD_REQUEST, Some("invalid_topic".into())), "{path}");
    }
    assert_eq!(ws_with(&s, "/ws?topic=a%FE", &[]).await.err(), Some(400));
    let res = s.http.delete(s.url("/topics/a%FF")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "invalid_topic");
    // Both used to become "a\u{FFFD}"; a real U+FFFD is a topic like any other.
    let mut sse = Sse::connect(&s, "topic=a%EF%BF%BD").await;
    s.publish_ok(json!({"topic": "a\u{FFFD}", "data": 1})).await;
    assert_eq!(sse.expect("message").await.data, "1");
    s.stop().await;
}

#[tokio::test]
async fn the_demo_refresh_needs_admin_rights() {
    let s = TestServer::with(|c| c.demo = true).await;
    let refresh = |origin: Option<&'static str>| {
        let mut req = s.http.post(s.url("/demo/refresh")).json(&json!({}));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(refresh(Some("http://evil.example")).await, StatusCode::FORBIDDEN);
    assert_eq!(refresh(None).await, StatusCode::OK, "the local demo page");
    s.stop().await;
    let s = TestServer::with(|c| {
        c.demo = true;
        c.api_key = vec![API_KEY.into()];
    })
    .await;
    let res = s.http.post(s.url("/demo/refresh")).json(&json!({})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = s.http.post(s.url("/demo/refresh")).bearer_auth(API_KEY).json(&json!({})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_state_file_is_private_and_written_without_following_planted_links() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    // The name the gateway used to write through first.
    std::os::unix::fs::symlink(&victim, dir.path().join("state.tmp")).unwrap();
    let s = TestServer::with(|c| c.state_file = Some(path.clone())).await;
    s.publish_ok(json!({"topic": "t", "retain": true, "data": {"secret": 1}})).await;
    s.stop().await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the owner reads the state file");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(std::fs::read_to_string(&path).unwrap().contains("secret"));
}

#[tokio::test]
async fn empty_keys_are_refused_at_start() {
    for (args, env) in [
        (&["--api-key", ""][..], None),
        (&["--api-key", "k1,"], None),
        (&["--jwt-key", ""], None),
        (&[], Some(("SSEGATE_API_KEY", ""))),
        (&["--jwt-key", "@/nonexistent/key.pem"], None),
        (&["--anonymous-topics", "a/*/b"], None),
    ] {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssegate"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--demo", "false"]).args(args).kill_on_drop(true);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = within("the binary to refuse its configuration", cmd.output()).await.unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty(), "a message says why");
    }
}

#[tokio::test]
async fn keys_and_tokens_are_never_logged() {
    let jwt = token(json!({"subscribe": ["**"]}), 600);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--demo", "false", "--api-key", "sekrit-api-key"])
        .args(["--jwt-key", SECRET])
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    within("the address", tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)).await.unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap().to_owned();
    let http = common::http();
    for path in ["/ws?token=sekrit-api-key".to_owned(), format!("/stream?topic=a&access_token={jwt}")] {
        let _ = http.get(format!("{base}{path}")).timeout(Duration::from_secs(2)).send().await;
    }
    let _ = http.get(format!("{base}/clients")).header("x-api-key", "sekrit-api-key").send().await;
    let _ = http.get(format!("{base}/clients?access_token={jwt}")).send().await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let out = within("the gateway to exit", child.wait_with_output()).await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("request"), "the requests were traced: {log}");
    assert!(!log.contains("sekrit-api-key") && !log.contains(&jwt), "{log}");
    assert!(!log.contains(SECRET));
}

#[tokio::test]
async fn a_token_in_the_cookie_works_for_its_own_site_only() {
    let s = jwt_server(|_| {}).await;
    let cookie =
        format!("theme=dark; ssegate_token={}", token(json!({"subscribe": ["a/**"], "publish": ["a/**"]}), 600));
    let res = s.http.get(s.url("/stream?topic=a/x")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut ws = ws_with(&s, "/ws?topic=a/x", &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(ws_frame(&mut ws).await["type"], "welcome");
    // A page on another site: the browser would send the cookie along. Refused, even with
    // --cors-origins '*' (cross-site WebSocket hijacking, CSRF).
    let evil = [("cookie", cookie.as_str()), ("origin", "http://evil.example")];
    assert_eq!(ws_with(&s, "/ws?topic=a/x", &evil).await.err(), Some(403));
    let publish = |headers: &'static [(&'static str, &'static str)], cookie: String| {
        let mut req = s.http.post(s.url("/publish")).header("cookie", cookie).json(&json!({"topic": "a/x", "data": 1}));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(publish(&[("origin", "http://evil.example")], cookie.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(publish(&[("sec-fetch-site", "cross-site")], cookie.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(publish(&[], cookie.clone()).await, StatusCode::OK);
    s.stop().await;
}
