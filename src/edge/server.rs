//! Serving: the accept loop, per-connection control (a handle that can cut a connection), the
//! connection limit, and graceful shutdown with a time limit.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::core::hub::Hub;
use crate::core::metrics::{OpenConnection, Protocol};
use crate::edge::direct::Sniffed;
use crate::edge::linger::{linger, linger_idle, LINGER_BYTES, LINGER_IDLE, LINGER_TIME};
use crate::http::peer::{address_key, PerAddress};
use crate::transport::ConnHandle;

/// Connections kept, beyond `--max-connections`, for requests that are not event streams
/// (publishing, health checks, administration): subscribers that take every slot never lock the
/// backend or the orchestrator out.
pub(crate) const RESERVED_CONNECTIONS: usize = 64;

/// Refusals (`503` answers) being written at once; past this, connections over a limit are
/// dropped without an answer, so a connection flood cannot take file descriptors through them.
const MAX_REFUSING: usize = 256;

/// The number of open connections (in all and per source address), and a signal when it
/// reaches zero.
#[derive(Debug, Default)]
struct Open {
    count: AtomicUsize,
    none: Notify,
    per_address: Mutex<PerAddress>,
    refusing: AtomicUsize,
}

impl Open {
    /// Counts a connection from `key`; returns how many it has open now.
    fn add(&self, key: IpAddr) -> usize {
        self.per_address.lock().unwrap_or_else(|e| e.into_inner()).add(key)
    }

    fn remove(&self, key: IpAddr) {
        self.per_address.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Takes a slot for a connection (or an HTTP/2 stream) from `key` (`None`: not counted per
    /// address); returns it with how many are taken now in all and from `key`.
    fn take(open: &Arc<Open>, key: Option<IpAddr>) -> (Slot, usize, usize) {
        let total = open.count.fetch_add(1, Ordering::AcqRel) + 1;
        let from_address = key.map_or(0, |key| open.add(key));
        (Slot::new(open.clone(), key), total, from_address)
    }

    async fn until_none(&self) {
        loop {
            let none = self.none.notified();
            tokio::pin!(none);
            none.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            none.await;
        }
    }
}

/// One open connection from a source address (none for a trusted proxy); dropping it gives the
/// slot back. Every handle on
/// the connection holds it ([`ConnHandle`]), a WebSocket session that took the connection over too.
#[derive(Debug)]
struct Slot {
    open: Arc<Open>,
    key: Option<IpAddr>,
    /// The connection in `ssegate_open_connections`, once it is served (its protocol known: after
    /// the first bytes, or the TLS handshake); connections refused are never counted there.
    served: OnceLock<OpenConnection>,
}

impl Slot {
    fn new(open: Arc<Open>, key: Option<IpAddr>) -> Slot {
        Slot { open, key, served: OnceLock::new() }
    }

    /// Counts the connection as served over `protocol` until the slot is given back.
    fn serving(&self, hub: &Hub, protocol: Protocol) {
        let _ = self.served.set(hub.metrics().connection_open(protocol));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.open.remove(key);
        }
        if self.open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.none.notify_waiters();
        }
    }
}

/// Serves `app` on `listener` for `hub` until `shutdown` completes, then drains: clients are told
/// to come back, idle connections close, and whatever is still open after the configured time
/// is cut.
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let draining = CancellationToken::new();
    let cut = CancellationToken::new();
    let open = Arc::new(Open::default());
    let max = hub.config().max_connections;
    let max_per_address = hub.config().max_per_address;
    let tls = crate::edge::tls::Tls::from_config(hub.config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
        .map(Arc::new);
    // Stopped when serving ends (the guard aborts it).
    let _reloader = tls.clone().map(|tls| AbortOnDrop(tokio::spawn(crate::edge::tls::reload_on_hangup(tls))));
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A trusted proxy carries many clients: only --max-connections bounds it (its requests
        // name their clients, whom the long-poll sessions count).
        let key = (!hub.config().trusts_proxy(peer.ip())).then(|| address_key(peer.ip()));
        let (slot, total, from_address) = Open::take(&open, key);
        let slot = Arc::new(slot);
        if total > max + RESERVED_CONNECTIONS || from_address > max_per_address {
            drop(slot);
            let why = if from_address > max_per_address { Refusal::Address } else { Refusal::Full };
            match &tls {
                Some(tls) => refuse_tls_soon(&tracker, &open, stream, tls.acceptor(), why),
                None => refuse_soon(&tracker, &open, stream, why),
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let handle = ConnHandle::new(cut.child_token(), slot.clone());
        if let Some(tls) = &tls {
            // The last slots are kept for publishers and health checks; over TLS the requests
            // are only seen after the handshake, so the connection carries the mark.
            let reserved = total > max;
            let acceptor = tls.acceptor();
            let app = app.clone();
            let draining = draining.clone();
            let hub = hub.clone();
            let open = open.clone();
            tracker.spawn(async move {
                let kill = handle.token();
                let stream = tokio::select! {
                    s = tokio::time::timeout(HANDSHAKE_TIME, acceptor.accept(stream)) => match s {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    },
                    _ = kill.cancelled() => return,
                    _ = draining.cancelled() => return,
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                slot.serving(&hub, if h2 { Protocol::H2 } else { Protocol::Https1 });
                drop(slot);
                let limits = Limits { open, key, max, max_per_address };
                Box::pin(https(stream, peer, handle, app, draining, reserved, limits)).await;
            });
            continue;
        }
        let app = app.clone();
        let draining = draining.clone();
        let hub = hub.clone();
        let open = open.clone();
        let refusals = tracker.clone();
        tracker.spawn(async move {
            let kill = handle.token();
            let sniffed = tokio::select! {
                s = crate::edge::direct::sniff(&stream) => s,
                _ = kill.cancelled() => return,
                _ = draining.cancelled() => return,
            };
            let transports = hub.config().transports;
            let subscriber = matches!(sniffed, Some(Sniffed::Stream | Sniffed::Ws));
            if subscriber && open.count.load(Ordering::Acquire) > max {
                // The last slots are kept for publishers and health checks.
                drop((handle, slot));
                refuse_soon(&refusals, &open, stream, Refusal::Full);
                return;
            }
            if sniffed.is_some() {
                slot.serving(&hub, Protocol::Http1);
            }
            drop(slot);
            match sniffed {
                None => return,
                Some(Sniffed::Stream) if transports.sse => return crate::edge::direct::serve(hub, stream, kill).await,
                Some(Sniffed::Ws) if transports.ws => {
                    return Box::pin(crate::edge::direct::serve_ws(hub, stream, handle)).await
                }
                Some(_) => {}
            }
            // Boxed, like the WebSocket session: a task is as large as its largest branch, and
            // most connections are event streams.
            Box::pin(http(stream, peer, handle, app, draining)).await;
        });
    }

    drop(listener);
    let limit = Duration::from_millis(hub.config().shutdown_timeout_ms);
    tracing::info!(open = open.count.load(Ordering::Relaxed), ?limit, "shutting down: draining connections");
    hub.shutdown();
    draining.cancel();
    tracker.close();
    let drained = async {
        tracker.wait().await;
        open.until_none().await;
    };
    if tokio::time::timeout(limit, drained).await.is_err() {
        tracing::warn!(
            open = open.count.load(Ordering::Relaxed),
            "drain time limit reached: cutting the remaining connections"
        );
        cut.cancel();
        tracker.wait().await;
        open.until_none().await;
    }
    if let Err(e) = hub.save_state() {
        tracing::error!(error = %e, "could not keep history and state for the next start");
    }
    tracing::info!("shut down");
    Ok(())
}

/// Serves a connection through hyper and the router until it closes, is cut, or drains; then,
/// once hyper (or the WebSocket session it upgraded the connection to) lets go of the socket,
/// closes it with a lingering close ([`crate::edge::linger`]): an error answer such as `413` arrives
/// even to a client that is still sending its body.
async fn http(stream: TcpStream, peer: SocketAddr, handle: ConnHandle, app: Router, draining: CancellationToken) {
    let kill = handle.token();
    // Kept while lingering: a closing connection still counts, for a bounded time.
    let slot = handle.clone();
    let (io, released) = Shared::new(stream);
    let stream = io.stream.clone();
    if serve_http(io, peer, handle, app, draining).await.is_err() {
        return;
    }
    tokio::select! {
        _ = released => {}
        _ = kill.cancelled() => return,
    }
    tokio::select! {
        _ = linger_idle(&stream, LINGER_TIME, LINGER_IDLE, LINGER_BYTES) => {}
        _ = kill.cancelled() => {}
    }
    drop(slot);
}

/// The connection was cut.
struct Cut;

/// How long a TLS handshake may take.
const HANDSHAKE_TIME: Duration = Duration::from_secs(10);

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long an HTTP/2 connection may stay open without a request in progress (no stream, long
/// poll or WebSocket): then it is told to go away (`GOAWAY`) and closed. HTTP/1.1 connections
/// have hyper's `header_read_timeout` instead.
const H2_IDLE: Duration = Duration::from_secs(10);

/// What an HTTP/2 connection needs to count its event streams against the connection limits.
struct Limits {
    open: Arc<Open>,
    key: Option<IpAddr>,
    max: usize,
    max_per_address: usize,
}

/// The requests in progress on an HTTP/2 connection, and its subscribers (`/stream`, `/ws`).
#[derive(Default)]
struct InProgress {
    requests: tokio::sync::watch::Sender<usize>,
    subscribers: std::sync::Mutex<Subscribers>,
}

/// An HTTP/2 connection's subscribers and the slots they hold beyond the connection's own: the
/// connection's slot covers one, as on HTTP/1.1, and each further one takes a slot of its own,
/// so `extra` holds one slot fewer than there are subscribers, whichever of them ends first.
#[derive(Default)]
struct Subscribers {
    count: usize,
    extra: Vec<Slot>,
}

/// One request in progress on an HTTP/2 connection, held by its response body and (for a
/// WebSocket) its session: dropping the last holder ends it.
struct Request2 {
    in_progress: Arc<InProgress>,
    /// Counted among the connection's subscribers.
    subscriber: bool,
}

impl Request2 {
    /// Starts a request; a subscriber beyond the connection's first gets a slot of its own, or
    /// the refusal a new connection would get.
    fn start(in_progress: &Arc<InProgress>, limits: &Limits, subscriber: bool) -> Result<Request2, Refusal> {
        in_progress.requests.send_modify(|n| *n += 1);
        let mut request = Request2 { in_progress: in_progress.clone(), subscriber: false };
        if subscriber {
            let mut subs = in_progress.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            if subs.count >= 1 {
                // Refused, the slot is given back as it is dropped.
                let (slot, total, from_address) = Open::take(&limits.open, limits.key);
                if from_address > limits.max_per_address {
                    return Err(Refusal::Address);
                }
                if total > limits.max {
                    return Err(Refusal::Full);
                }
                subs.extra.push(slot);
            }
            subs.count += 1;
            request.subscriber = true;
        }
        Ok(request)
    }
}

impl Drop for Request2 {
    fn drop(&mut self) {
        if self.subscriber {
            let mut subs = self.in_progress.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            subs.count -= 1;
            let freed = subs.extra.pop();
            drop(subs);
            drop(freed);
        }
        self.in_progress.requests.send_modify(|n| *n -= 1);
    }
}

/// A response body that holds its HTTP/2 request's [`Request2`] (if any) until hyper drops it
/// (sent, or the stream reset).
struct Held {
    body: Body,
    _request: Option<Arc<Request2>>,
}

impl hyper::body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Where a stream's task is found once hyper has spawned it.
type StreamTask = Arc<OnceLock<tokio::task::AbortHandle>>;

/// The executor hyper runs an HTTP/2 connection's streams on: each stream is a task of its own,
/// and the stream's [`ConnHandle`] can abort it, so that the slow-client cut of one event stream
/// resets that stream alone (`RST_STREAM`) and leaves the other streams of its connection alone.
/// Hyper spawns a stream's task right after calling the service for its request, on the same
/// thread: the service leaves the stream's [`StreamTask`] in `next`, and this takes it.
#[derive(Clone, Default)]
struct StreamTasks {
    next: Arc<Mutex<Option<StreamTask>>>,
}

impl<F> hyper::rt::Executor<F> for StreamTasks
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let task = tokio::spawn(fut);
        if let Some(slot) = self.next.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = slot.set(task.abort_handle());
        }
    }
}

/// Why an HTTPS connection stops being served before it ends.
enum Stop {
    /// The server drains: tell the client (`GOAWAY`), let the requests finish.
    Drain,
    /// An HTTP/2 connection without a request for [`H2_IDLE`].
    Idle,
    /// Cut.
    Kill,
}

/// A future polled only when it woke itself (and on the first poll): beside a busy one in a
/// `select!`, it costs an atomic load per wake of the task instead of a poll.
struct OnWake<F> {
    inner: F,
    woken: Arc<Woken>,
    started: bool,
}

/// Whether an [`OnWake`]'s future woke, and the task to wake then.
#[derive(Default)]
struct Woken {
    flag: std::sync::atomic::AtomicBool,
    task: futures::task::AtomicWaker,
}

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> OnWake<F> {
    fn new(inner: F) -> OnWake<F> {
        OnWake { inner, woken: Arc::default(), started: false }
    }
}

impl<F: Future + Unpin> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.woken.task.register(cx.waker());
        if self.started && !self.woken.flag.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        self.started = true;
        let waker = std::task::Waker::from(self.woken.clone());
        Pin::new(&mut self.inner).poll(&mut Context::from_waker(&waker))
    }
}

/// Completes once `in_progress` has had no request for [`H2_IDLE`].
async fn idle(in_progress: Arc<InProgress>) {
    let mut requests = in_progress.requests.subscribe();
    loop {
        if requests.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        if tokio::time::timeout(H2_IDLE, requests.wait_for(|n| *n > 0)).await.is_err() {
            return;
        }
    }
}

/// Serves a TLS connection through hyper and the router, HTTP/2 or HTTP/1.1 as ALPN chose, until
/// it closes, is cut, or drains. Event streams and long polls are HTTP/2 streams side by side on
/// the one connection, each event stream beyond the first counted against the connection limits
/// as a connection of its own; a connection with no request in progress for [`H2_IDLE`] is
/// closed. A WebSocket takes an HTTP/1.1 connection over through the upgrade, or an HTTP/2
/// stream by extended `CONNECT`.
async fn https(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    handle: ConnHandle,
    app: Router,
    draining: CancellationToken,
    reserved: bool,
    limits: Limits,
) {
    let kill = handle.token();
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let in_progress = Arc::new(InProgress::default());
    let requests = in_progress.clone();
    let tasks = StreamTasks::default();
    let next_task = tasks.next.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let subscriber = matches!(req.uri().path(), "/stream" | "/ws");
        let mut refused = (reserved && subscriber).then(|| refusal_response(Refusal::Full));
        req.extensions_mut().insert(ConnectInfo(peer));
        let h2 = req.version() == axum::http::Version::HTTP_2;
        let mut request = None;
        if h2 {
            // HTTP/2 names the host in `:authority`; the checks on `Host` (DNS rebinding, the
            // page's own origin) see it there as over HTTP/1.1.
            let authority = req.uri().authority().and_then(|a| axum::http::HeaderValue::from_str(a.as_str()).ok());
            if let Some(host) = authority {
                req.headers_mut().entry(axum::http::header::HOST).or_insert(host);
            }
            match Request2::start(&requests, &limits, subscriber) {
                Ok(started) => {
                    let started = Arc::new(started);
                    // The stream's own handle: cutting it aborts this stream's task only. The
                    // session of a WebSocket holds the handle, and so the request.
                    let task = StreamTask::default();
                    *next_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.clone());
                    let slot: Arc<dyn std::any::Any + Send + Sync> = Arc::new((started.clone(), handle.clone()));
                    req.extensions_mut().insert(ConnHandle::for_stream(handle.token().child_token(), slot, task));
                    request = Some(started);
                }
                Err(why) => refused = Some(refusal_response(why)),
            }
        } else {
            req.extensions_mut().insert(handle.clone());
        }
        let app = app.clone();
        async move {
            let mut response = match refused {
                Some(refused) => refused,
                None => app.oneshot(req.map(Body::new)).await?,
            };
            if h2 {
                // Connection-specific headers are not HTTP/2 (RFC 9113 section 8.2.2).
                response.headers_mut().remove(axum::http::header::CONNECTION);
            }
            Ok::<_, std::convert::Infallible>(response.map(|body| Held { body, _request: request }))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(tasks);
    builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
    // WebSockets over HTTP/2 streams (RFC 8441's extended CONNECT).
    builder.http2().timer(TokioTimer::new()).enable_connect_protocol();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = async {
        if h2 {
            idle(in_progress).await
        } else {
            std::future::pending().await
        }
    };
    // Why the connection would stop before it ends: polled only when one of them wakes it, not
    // on every wake of the connection (each event written), as a select over all would.
    let stop = async {
        tokio::select! {
            _ = draining.cancelled() => Stop::Drain,
            _ = idle => Stop::Idle,
            _ = kill.cancelled() => Stop::Kill,
        }
    };
    tokio::pin!(stop);
    let stop = OnWake::new(stop);
    tokio::select! {
        biased;
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        why = stop => match why {
            Stop::Drain => {}
            Stop::Idle => tracing::debug!(%peer, "idle HTTP/2 connection closed"),
            Stop::Kill => return,
        },
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = kill.cancelled() => {}
        // A peer that does not take its GOAWAY.
        _ = tokio::time::sleep(LINGER_TIME), if !draining.is_cancelled() => {}
    }
}

/// Runs hyper on `io` until the connection ends, is cut (`Err`), or drains.
async fn serve_http(
    io: Shared,
    peer: SocketAddr,
    handle: ConnHandle,
    app: Router,
    draining: CancellationToken,
) -> Result<(), Cut> {
    let kill = handle.token();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(handle.clone());
        app.clone().oneshot(req.map(Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return Ok(());
        }
        _ = draining.cancelled() => {}
        _ = kill.cancelled() => return Err(Cut),
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => Ok(()),
        _ = kill.cancelled() => Err(Cut),
    }
}

/// The connection's socket as hyper's transport, shared with [`http`], which lingers on it once
/// hyper lets go. Shutting it down shuts down writing only; reading goes on, to the end.
struct Shared {
    stream: Arc<TcpStream>,
    /// Dropped with the transport (by hyper, or by the WebSocket session that took it over):
    /// tells [`http`] that the socket is its own again.
    _held: oneshot::Sender<()>,
}

impl Shared {
    /// The transport, and what completes when it is dropped.
    fn new(stream: TcpStream) -> (Self, oneshot::Receiver<()>) {
        let (held, released) = oneshot::channel();
        (Shared { stream: Arc::new(stream), _held: held }, released)
    }
}

impl AsyncRead for Shared {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write))
    }
}

/// Which limit a refused connection met.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// `--max-connections` (for event streams) or the reserve on top of it (for everything).
    Full,
    /// `--max-per-address`.
    Address,
}

/// Answers a connection over a limit with `503` in a task of its own, unless too many such
/// answers are being written already: then the connection is dropped at once.
fn refuse_soon(tracker: &TaskTracker, open: &Arc<Open>, stream: TcpStream, why: Refusal) {
    if open.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        open.refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let open = open.clone();
    tracker.spawn(async move {
        refuse(stream, why).await;
        open.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// How long a refused connection is kept at most, lingering included: refusals happen during
/// floods, so the bounds are tight.
const REFUSE_TIME: Duration = Duration::from_secs(2);
/// How much of a refused connection's input is read and discarded at most after the answer.
const REFUSE_LINGER_BYTES: usize = 64 * 1024;

/// Answers a connection over a limit with `503` and `Retry-After`, then closes it with a
/// lingering close bounded by [`REFUSE_TIME`] and [`REFUSE_LINGER_BYTES`].
async fn refuse(mut stream: TcpStream, why: Refusal) {
    let body = refusal(why);
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        // Read the request head first: a response before the request confuses clients.
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while !crate::edge::direct::head_complete(&head, 0) && head.len() < crate::edge::direct::MAX_HEAD {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        if stream.write_all(response.as_bytes()).await.is_ok() {
            linger(&stream, REFUSE_TIME, REFUSE_LINGER_BYTES).await;
        }
    };
    let _ = tokio::time::timeout(REFUSE_TIME, answer).await;
}

/// The body of a `503` for a connection over a limit.
fn refusal(why: Refusal) -> &'static str {
    match why {
        Refusal::Full => {
            r#"{"error":{"code":"too_many_connections","message":"the gateway is at its connection limit; retry later"}}"#
        }
        Refusal::Address => {
            r#"{"error":{"code":"too_many_connections","message":"too many connections from your address; retry later"}}"#
        }
    }
}

/// As [`refuse_soon`], over TLS: the handshake, then `503` to each request (HTTP/2 or
/// HTTP/1.1), all within [`REFUSE_TIME`].
fn refuse_tls_soon(tracker: &TaskTracker, open: &Arc<Open>, stream: TcpStream, acceptor: TlsAcceptor, why: Refusal) {
    if open.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        open.refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let open = open.clone();
    tracker.spawn(async move {
        let answer = async {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let service = hyper::service::service_fn(move |_: Request<Incoming>| async move {
                let mut res =
                    hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(refusal(why).as_bytes())));
                *res.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
                let h = res.headers_mut();
                h.insert("content-type", axum::http::HeaderValue::from_static("application/json"));
                h.insert("retry-after", axum::http::HeaderValue::from_static("1"));
                Ok::<_, std::convert::Infallible>(res)
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http1().keep_alive(false);
            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
        };
        let _ = tokio::time::timeout(REFUSE_TIME, answer).await;
        open.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// A `503` for a request over a limit, as the router's responses are typed.
fn refusal_response(why: Refusal) -> axum::response::Response {
    let mut res = axum::response::Response::new(Body::from(refusal(why)));
    *res.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    let h = res.headers_mut();
    h.insert("content-type", axum::http::HeaderValue::from_static("application/json"));
    h.insert("retry-after", axum::http::HeaderValue::from_static("1"));
    res
}
