//! Micro-benchmarks of the delivery path: encoding an event for SSE, and the hub's fan-out of one
//! event to N subscribers (each then taken from its queue, as its writer would).
//! Run with `cargo bench --bench fanout`.

use std::collections::VecDeque;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde_json::value::RawValue;
use ssegate::client::Transport;
use ssegate::event::{Audience, Draft, Event, EventId};
use ssegate::topic::Pattern;
use ssegate::{Config, Hub};

fn draft(payload: usize) -> Draft {
    let data = RawValue::from_string(format!("{{\"v\":\"{}\"}}", "x".repeat(payload))).unwrap();
    Draft::new(Some(Arc::from("bench/topic")), "metrics", data, Audience::Topic)
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_encode");
    for payload in [100, 1_000] {
        group.throughput(Throughput::Bytes(payload as u64));
        group.bench_with_input(BenchmarkId::from_parameter(payload), &payload, |b, &payload| {
            b.iter_batched(
                || Event::new(EventId { ms: 1_700_000_000_000, seq: 7 }, draft(payload)),
                |ev| ev.sse_frame(false).len(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("hub_fanout");
    for clients in [100usize, 1_000, 10_000] {
        let _guard = rt.enter();
        let hub = Hub::new(Config { demo: false, queue_size: 1 << 16, ..Config::default() }).unwrap();
        let pattern = Pattern::parse("bench/topic").unwrap();
        let conns: Vec<_> = (0..clients).map(|_| hub.connect(Transport::Sse, vec![pattern.clone()])).collect();
        let mut batch = VecDeque::new();
        group.throughput(Throughput::Elements(clients as u64));
        group.bench_with_input(BenchmarkId::from_parameter(clients), &clients, |b, _| {
            b.iter(|| {
                rt.block_on(hub.publish(vec![draft(100)])).unwrap();
                for conn in &conns {
                    batch.clear();
                    conn.client().drain_into(&mut batch);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, fanout);
criterion_main!(benches);
