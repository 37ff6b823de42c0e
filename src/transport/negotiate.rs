//! `GET /negotiate`: picks a transport for a client from what it needs and supports, by the
//! contract's decision matrix, skipping transports the server has disabled.

use axum::extract::{OriginalUri, RawQuery, State};
use axum::Json;
use serde::Serialize;

use crate::config::Transports;
use crate::core::hub::Hub;
use crate::http::error::ApiError;
use crate::http::query::truthy;

pub(crate) use crate::config::Transport;

/// Where a transport is served.
fn path(c: Transport) -> &'static str {
    match c {
        Transport::Sse => "/stream",
        Transport::Ws => "/ws",
        Transport::LongPoll => "/poll",
        Transport::Poll => "/snapshot",
    }
}

/// What a client says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    /// It sends as well as receives.
    pub bidirectional: bool,
    /// It wants events as they happen.
    pub realtime: bool,
    /// It wants them with little delay.
    pub low_latency: bool,
    /// Server push alone suffices. Absent means false, as in the seed's `selectUpdateStrategy`:
    /// a real-time, low-latency client gets `ws` unless it says `server_push`.
    pub server_push: bool,
    /// An old browser or a locked-down network.
    pub legacy: bool,
    /// Transports it supports; `None` means all.
    pub supports: Option<Vec<Transport>>,
}

/// The transports to try, best first, by the decision matrix: bidirectional → ws; real-time and
/// low latency → sse when the client says server push suffices, else ws; legacy → long-poll then
/// poll; otherwise sse. The first rule that applies decides; each preference is followed by the
/// other transports as fallbacks (a legacy client's by `poll` only).
pub(crate) fn preference(n: &Needs) -> &'static [Transport] {
    use Transport::*;
    let needs_ws = n.bidirectional || (n.realtime && n.low_latency && !n.server_push);
    if needs_ws {
        &[Ws, Sse, LongPoll, Poll]
    } else if n.realtime && n.low_latency {
        &[Sse, Ws, LongPoll, Poll]
    } else if n.legacy {
        &[LongPoll, Poll]
    } else {
        &[Sse, Ws, LongPoll, Poll]
    }
}

/// The usable transports for a client, best first: the matrix's order, less what the client
/// does not support and what the server disabled.
pub(crate) fn choose(n: &Needs, enabled: &Transports) -> Vec<Transport> {
    preference(n)
        .iter()
        .copied()
        .filter(|c| enabled.enabled(*c))
        .filter(|c| n.supports.as_ref().is_none_or(|s| s.contains(c)))
        .collect()
}

/// The answer of `/negotiate`.
#[derive(Debug, Serialize)]
pub(crate) struct Negotiated {
    /// The transport to use.
    pub transport: Transport,
    /// Where to connect (a path on this gateway, with the client's topics).
    pub url: String,
    /// What to try next, in order, if it fails.
    pub fallbacks: Vec<Transport>,
}

fn flag(v: &str) -> Result<bool, ApiError> {
    match v {
        "0" | "false" | "no" | "off" => Ok(false),
        v if truthy(v) => Ok(true),
        other => Err(ApiError::bad_request("invalid_request", format!("flag value {other:?} is not true/false/1/0"))),
    }
}

/// `GET /negotiate`.
pub(crate) async fn negotiate(
    State(hub): State<Hub>,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Result<Json<Negotiated>, ApiError> {
    let mut needs = Needs::default();
    let mut topics = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "bidirectional" => needs.bidirectional = flag(&v)?,
            "realtime" => needs.realtime = flag(&v)?,
            "low_latency" => needs.low_latency = flag(&v)?,
            "server_push" => needs.server_push = flag(&v)?,
            "legacy" => needs.legacy = flag(&v)?,
            "transports" => {
                let list = v
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| {
                        Transport::parse(t).ok_or_else(|| {
                            ApiError::bad_request(
                                "invalid_request",
                                format!("unknown transport {t:?} (sse, ws, long-poll, poll)"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                needs.supports = Some(list);
            }
            "topic" => topics.push(v.into_owned()),
            _ => {}
        }
    }
    let mut usable = choose(&needs, &hub.config().transports).into_iter();
    let Some(transport) = usable.next() else {
        return Err(ApiError::bad_request("no_transport", "none of the client's transports is enabled on this server"));
    };
    // Paths relative to where the gateway is mounted, so a nested router answers correctly.
    let prefix = uri.path().strip_suffix("/negotiate").unwrap_or("");
    let mut url = format!("{prefix}{}", path(transport));
    // `/snapshot` serves one topic: a polling client asks for each on its own.
    let listed = if transport == Transport::Poll { &topics[..topics.len().min(1)] } else { &topics[..] };
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(listed.iter().map(|t| ("topic", t.as_str())))
        .finish();
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    Ok(Json(Negotiated { transport, url, fallbacks: usable.collect() }))
}
