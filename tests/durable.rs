//! `--data-dir`: a publish answered `200` survives `kill -9`. Publishers run at about 1,000
//! events/s, the binary is killed at random moments and restarted on the same directory, and a
//! client resuming from before each kill must get every acknowledged event, in order, once, with
//! its id, and the retained state as last acknowledged. A torn or bit-flipped tail is cut at the
//! last whole record; many patches are compacted into a snapshot.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Api, ChildServer, Sse};
use serde_json::{json, Value};

/// A small random generator (xorshift), seeded from the clock and printed, so a failing run can
/// be replayed with `DURABLE_SEED`.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("DURABLE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        eprintln!("DURABLE_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ssegate-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn start(dir: &Path, extra: &[&str]) -> ChildServer {
    let mut args = vec!["--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    ChildServer::start(&args).await
}

/// What the publishers saw: `(id, data)` of each acknowledged event, and the data of requests
/// still unanswered when the gateway died.
#[derive(Default)]
struct Record {
    acked: Vec<(String, String)>,
    in_flight: Vec<String>,
    /// Of the retained topic: acknowledged patches, and the one unanswered, if any.
    kpi_acked: u64,
    kpi_in_flight: Option<u64>,
}

/// One publisher of plain events on `feed`: `batch` events per request, `every` apart, until a
/// request fails (the gateway died).
async fn feed(api: Api, worker: usize, batch: usize, every: Duration, record: Arc<Mutex<Record>>) {
    let mut tick = tokio::time::interval(every);
    for n in 0.. {
        tick.tick().await;
        let datas: Vec<String> = (0..batch).map(|i| format!("\"w{worker}-{n}-{i}\"")).collect();
        let body: Vec<Value> = datas
            .iter()
            .map(|d| json!({"topic": "feed", "event": "n", "data": serde_json::from_str::<Value>(d).unwrap()}))
            .collect();
        record.lock().unwrap().in_flight.extend(datas.iter().cloned());
        let Some(res) = try_publish(&api, &Value::from(body)).await else { return };
        let ids: Vec<String> = res["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        assert_eq!(ids.len(), batch);
        let mut r = record.lock().unwrap();
        r.in_flight.retain(|d| !datas.contains(d));
        r.acked.extend(ids.into_iter().zip(datas));
    }
}

/// The one publisher of patches to the retained topic `kpi`, one at a time, so that at most one
/// is unanswered at a kill. Patch `k` sets `n` to `base + k`.
async fn patches(api: Api, base: u64, every: Duration, record: Arc<Mutex<Record>>) {
    let mut tick = tokio::time::interval(every);
    for k in 1.. {
        tick.tick().await;
        record.lock().unwrap().kpi_in_flight = Some(k);
        let body = json!({"topic": "kpi", "patch": {"n": base + k}});
        if try_publish(&api, &body).await.is_none() {
            return;
        }
        let mut r = record.lock().unwrap();
        r.kpi_in_flight = None;
        r.kpi_acked = k;
    }
}

/// Publishes `body`: the answer if it was `200`, `None` if the gateway died first.
async fn try_publish(api: &Api, body: &Value) -> Option<Value> {
    let req = api.http.post(api.url("/publish")).json(body).timeout(Duration::from_secs(10));
    let res = req.send().await.ok()?;
    if res.status() != 200 {
        return None;
    }
    res.json().await.ok()
}

/// The retained state of `kpi`: `(version, n)`.
async fn kpi(api: &Api) -> (u64, u64) {
    let (status, snap) = api.get_json("/snapshot?topic=kpi").await;
    assert_eq!(status, 200, "{snap}");
    (snap["version"].as_u64().unwrap(), snap["state"]["n"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_kill_9() {
    const KILLS: usize = 21;
    let mut rng = Rng::new();
    let dir = temp_dir("durable");
    let mut server = start(&dir, &[]).await;
    server.publish_ok(json!({"topic": "kpi", "retain": true, "data": {"n": 0}})).await;
    let mut from = server.publish_ok(json!({"topic": "feed", "event": "n", "data": "start"})).await.remove(0);
    let mut total_acked = 0;

    for round in 0..KILLS {
        let (version, n) = kpi(&server).await;
        let record = Arc::new(Mutex::new(Record::default()));
        // About 1,000 events/s: three publishers of single events and one of batches of four,
        // each every 4 ms, and a patch every 10 ms.
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let batch = if worker == 3 { 4 } else { 1 };
            let every = Duration::from_millis(if worker == 3 { 16 } else { 4 });
            tasks.push(tokio::spawn(feed(server.api.clone(), worker, batch, every, record.clone())));
        }
        tasks.push(tokio::spawn(patches(server.api.clone(), n, Duration::from_millis(10), record.clone())));
        tokio::time::sleep(Duration::from_millis(60 + rng.below(300))).await;
        server.kill().await;
        for t in tasks {
            t.await.unwrap();
        }
        let record = std::mem::take(&mut *record.lock().unwrap());
        assert!(!record.acked.is_empty(), "round {round}: some publishes were answered before the kill");

        server = start(&dir, &[]).await;
        // Retained state: the last acknowledged patch, or the one unanswered if it reached the disk.
        let (v, got) = kpi(&server).await;
        let acked = (version + record.kpi_acked, n + record.kpi_acked);
        let maybe = record.kpi_in_flight.map(|k| (version + k, n + k));
        assert!(
            (v, got) == acked || Some((v, got)) == maybe,
            "round {round}: kpi is {v}/{got}, acknowledged {acked:?}"
        );

        // A client that last saw `from` (before this round's publishes) resumes across the kill.
        let mut sse = Sse::connect_with(&server, "topic=feed", Some(&from)).await;
        let marker = server.publish_ok(json!({"topic": "feed", "event": "end", "data": round})).await.remove(0);
        let got = sse.collect_until("end").await;
        let (end, replayed) = got.split_last().unwrap();
        assert_eq!(end.id, marker);
        let mut last: Option<(u64, u64)> = None;
        for ev in replayed {
            assert_eq!(ev.event, "n", "round {round}: {ev:?}");
            let (ms, seq) = ev.id.split_once('-').unwrap();
            let id = (ms.parse().unwrap(), seq.parse().unwrap());
            assert!(last.is_none_or(|l| l < id), "round {round}: ids in order and once: {:?} then {}", last, ev.id);
            last = Some(id);
            assert!(
                record.acked.iter().any(|(_, d)| *d == ev.data) || record.in_flight.contains(&ev.data),
                "round {round}: {} was never published",
                ev.data
            );
        }
        let replayed: std::collections::HashMap<&str, &str> =
            replayed.iter().map(|e| (e.id.as_str(), e.data.as_str())).collect();
        for (id, data) in &record.acked {
            assert_eq!(
                replayed.get(id.as_str()),
                Some(&data.as_str()),
                "round {round}: acknowledged {id} replayed as published"
            );
        }
        let marker_id: (u64, u64) =
            marker.split_once('-').map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).unwrap();
        assert!(last.is_none_or(|l| l < marker_id), "ids continue after the last stored one");
        total_acked += record.acked.len();
        from = marker;
    }
    eprintln!("{KILLS} kills, {total_acked} acknowledged events, none lost");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// The segment file written last, and the offset of its last record.
fn last_record(dir: &Path) -> (PathBuf, usize, usize) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("history")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files.into_iter().rev() {
        let bytes = std::fs::read(&file).unwrap();
        let (mut at, mut last, mut records) = (0, 0, 0);
        while at + 8 <= bytes.len() {
            last = at;
            records += 1;
            at += 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        }
        if records > 1 {
            return (file, last, bytes.len());
        }
    }
    panic!("no segment with events");
}

#[tokio::test]
async fn a_torn_or_bit_flipped_tail_is_cut_at_the_last_whole_record() {
    for damage in ["torn", "flipped"] {
        let dir = temp_dir("tail");
        let server = start(&dir, &[]).await;
        server.publish_ok(json!({"topic": "kpi", "retain": true, "data": {"n": 0}})).await;
        let mut ids = Vec::new();
        for n in 0..20 {
            ids.push(server.publish_ok(json!({"topic": "feed", "event": "n", "data": n})).await.remove(0));
        }
        server.publish_ok(json!({"topic": "kpi", "patch": {"n": 1}})).await;
        server.kill().await;

        // The last record is the patch: damage it as a crash mid-write or a bad disk would.
        let (file, last, len) = last_record(&dir);
        match damage {
            "torn" => std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len as u64 - 5).unwrap(),
            _ => {
                let mut bytes = std::fs::read(&file).unwrap();
                bytes[last + 8 + (len - last - 8) / 2] ^= 0x10;
                std::fs::write(&file, bytes).unwrap();
            }
        }

        let server = start(&dir, &[]).await;
        assert_eq!(kpi(&server).await, (1, 0), "{damage}: the state before the damaged patch");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), last as u64, "{damage}: cut at the last whole record");
        let mut sse = Sse::connect_with(&server, "topic=feed", Some(&ids[0])).await;
        let marker = server.publish_ok(json!({"topic": "feed", "event": "end", "data": null})).await.remove(0);
        let got = sse.collect_until("end").await;
        let replayed: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        let mut expected: Vec<&str> = ids[1..].iter().map(String::as_str).collect();
        expected.push(&marker);
        assert_eq!(replayed, expected, "{damage}: the whole records, in order, then new ids after them");
        // The damaged change's version is free again and taken by the next one.
        server.publish_ok(json!({"topic": "kpi", "patch": {"n": 2}})).await;
        assert_eq!(kpi(&server).await, (2, 2));
        drop(server);
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

#[tokio::test]
async fn patches_are_compacted_and_history_is_trimmed_on_disk() {
    let dir = temp_dir("compact");
    let args = ["--history-size", "200"];
    let server = start(&dir, &args).await;
    server.publish_ok(json!({"topic": "kpi", "retain": true, "data": {"n": 0, "pad": "x".repeat(500)}})).await;
    // 4,000 patches of about 600 bytes: 2.4 MB logged, a history of 200 kept.
    for round in 0..80 {
        let body: Vec<Value> =
            (1..=50).map(|i| json!({"topic": "kpi", "patch": {"n": round * 50 + i, "pad": "y".repeat(500)}})).collect();
        server.publish_ok(Value::from(body)).await;
    }
    let used = dir_bytes(&dir);
    assert!(used < 400_000, "the data dir holds the history kept and one snapshot, not every patch: {used} bytes");
    server.kill().await;
    let server = start(&dir, &args).await;
    let (status, snap) = server.get_json("/snapshot?topic=kpi").await;
    assert_eq!(status, 200);
    assert_eq!((snap["version"].as_u64(), snap["state"]["n"].as_u64()), (Some(4001), Some(4000)));
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_state_file_is_read_into_an_empty_data_dir() {
    let dir = temp_dir("import");
    let file = dir.join("state.json");
    let file_arg = file.to_str().unwrap();
    let first = ChildServer::start(&["--state-file", file_arg]).await;
    first.publish_ok(json!({"topic": "kpi", "retain": true, "data": {"n": 7}})).await;
    let id = first.publish_ok(json!({"topic": "feed", "event": "n", "data": 1})).await.remove(0);
    let after = first.publish_ok(json!({"topic": "feed", "event": "n", "data": 2})).await.remove(0);
    assert!(first.terminate().await.success());

    let data = dir.join("data");
    let second = start(&data, &["--state-file", file_arg]).await;
    assert_eq!(kpi(&second).await, (1, 7));
    let mut sse = Sse::connect_with(&second, "topic=feed", Some(&id)).await;
    assert_eq!(sse.expect("n").await.id, after);
    second.kill().await;
    // From now on the data dir is what counts.
    let third = start(&data, &[]).await;
    assert_eq!(kpi(&third).await, (1, 7));
    let mut sse = Sse::connect_with(&third, "topic=feed", Some(&id)).await;
    assert_eq!(sse.expect("n").await.id, after);
    drop(third);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_second_gateway_on_the_same_data_dir_is_refused() {
    let dir = temp_dir("locked");
    let first = start(&dir, &[]).await;
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_ssegate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--demo", "false", "--data-dir", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = common::within("the second gateway to exit", second).await.unwrap();
    assert_eq!(out.status.code(), Some(64), "a configuration error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another process"));
    // The first one is unharmed.
    first.publish_ok(json!({"topic": "feed", "data": 1})).await;
    drop(first);
    let _ = std::fs::remove_dir_all(dir);
}
