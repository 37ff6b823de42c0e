//! The socket I/O of a connection served on its socket: what a [`Pump`] renders written out, the
//! fan-out's own writes while the connection's task is idle ([`DirectSocket`]), and a
//! WebSocket peer's frames read and decoded by tungstenite.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::BytesMut;
use futures::Stream;
use tokio::net::TcpStream;

use crate::core::client::{Client, DirectSocket, Outbound};
use crate::core::hub::Hub;
use crate::transport::ws::UnfinishedOverBudget;
use crate::transport::{Flow, Pump};

/// How long the last bytes of a closed stream may take to go out.
const LAST_WRITE: Duration = Duration::from_secs(5);

impl DirectSocket for TcpStream {
    fn try_send(&self, frame: &[u8]) -> io::Result<usize> {
        // Straight to the kernel, without the runtime's readiness bookkeeping: a socket that
        // pushes back says so here, and its task then waits for it through the runtime.
        socket2::SockRef::from(self).send_with_flags(frame, libc::MSG_NOSIGNAL)
    }

    fn warm(&self) {
        std::hint::black_box(std::os::fd::AsRawFd::as_raw_fd(self));
    }
}

/// Writes all of `buf`, waiting while the socket pushes back.
pub(crate) async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `out`, then everything `pump` renders, to `socket` until the stream ends, one write per
/// wake-up. While nothing is queued for the client, pushes write to the socket themselves.
pub(crate) async fn pump_out(socket: &Arc<TcpStream>, pump: &mut Pump, mut out: BytesMut) -> io::Result<()> {
    pump.client().write_directly(socket.clone(), pump.wire());
    loop {
        write_all(socket, &out).await?;
        out.clear();
        // Until something is queued again, pushes write to the socket themselves.
        pump.idle();
        if let Flow::End = pump.fill(&mut out).await {
            // The last bytes (a `retry:` hint, a close frame) get a while to go out, even to a
            // client that stopped reading.
            return match tokio::time::timeout(LAST_WRITE, write_all(socket, &out)).await {
                Ok(written) => written,
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            };
        }
    }
}

/// The socket as tungstenite sees it when it only reads: what the protocol itself answers (a
/// pong, the reply to a close) is kept for the client's queue, so that it never lands in the
/// middle of a frame the hub is writing.
struct ReadSide {
    socket: Arc<TcpStream>,
    answers: Vec<u8>,
    /// Bytes read since the peer's last whole message: what tungstenite may be holding of an
    /// unfinished one.
    unfinished: usize,
    /// The same, summed over every connection of the gateway (see [`Hub::unfinished_input`]).
    total: Arc<std::sync::atomic::AtomicUsize>,
    /// Most `total` may reach; a read that would pass it fails.
    budget: usize,
}

impl ReadSide {
    /// A whole message came out: what was held for it is free again.
    fn finished(&mut self) {
        self.total.fetch_sub(std::mem::take(&mut self.unfinished), std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for ReadSide {
    fn drop(&mut self) {
        self.finished();
    }
}

impl std::io::Read for ReadSide {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering;
        // Each connection may hold up to the message size limit of an unfinished message, but
        // all of them together no more than the budget: past it, the peer that asks for more is
        // closed as sending too much (1009), and nobody else notices.
        if self.unfinished > 0 && self.total.load(Ordering::Relaxed) + buf.len() > self.budget {
            return Err(std::io::Error::other(UnfinishedOverBudget));
        }
        let n = self.socket.try_read(buf)?;
        self.unfinished += n;
        self.total.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

impl std::io::Write for ReadSide {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.answers.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The peer's messages on `socket`, decoded by tungstenite (masking, fragments, UTF-8, control
/// frames, size limits). Its automatic answers go to `client`'s queue.
pub(crate) fn ws_messages(
    hub: &Hub,
    socket: Arc<TcpStream>,
    client: Arc<Client>,
    early: Vec<u8>,
    limit: usize,
) -> impl Stream<Item = Result<Message, axum::Error>> {
    let (total, budget) = hub.unfinished_input();
    use tungstenite::protocol::{Role, WebSocketConfig};
    async_stream::stream! {
        // A small read buffer: clients send little, and it is allocated for every connection.
        let config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        let side = ReadSide { socket: socket.clone(), answers: Vec::new(), unfinished: 0, total, budget };
        // Frames the peer sent right behind its request head are read first.
        let mut ws = tungstenite::WebSocket::from_partially_read(side, early, Role::Server, Some(config));
        loop {
            // A peer that sends as fast as it can must not hold a runtime worker: each message
            // spends from the task's cooperative budget, which yields to other tasks when spent.
            tokio::task::consume_budget().await;
            let read = ws.read();
            if matches!(read, Ok(tungstenite::Message::Close(_))) {
                // The answer to a close is written on the next read or flush: now, so that it is
                // queued before the client is closed.
                let _ = ws.flush();
            }
            let answers = std::mem::take(&mut ws.get_mut().answers);
            if !answers.is_empty() {
                client.push(Outbound::Raw(answers.into()));
            }
            if matches!(read, Ok(tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) {
                ws.get_mut().finished();
            }
            match read {
                Ok(tungstenite::Message::Text(t)) => yield Ok(Message::Text(Utf8Bytes::from(t.as_str()))),
                Ok(tungstenite::Message::Binary(b)) => yield Ok(Message::Binary(b)),
                Ok(tungstenite::Message::Ping(p)) => yield Ok(Message::Ping(p)),
                Ok(tungstenite::Message::Pong(p)) => yield Ok(Message::Pong(p)),
                Ok(tungstenite::Message::Close(_)) => yield Ok(Message::Close(None)),
                Ok(tungstenite::Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if socket.readable().await.is_err() {
                        return;
                    }
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return,
                Err(e) => {
                    yield Err(axum::Error::new(e));
                    return;
                }
            }
        }
    }
}
