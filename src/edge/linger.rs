//! Closing a connection so that what was written to it arrives: a lingering close.
//!
//! Closing a socket while the peer's input is still unread makes the kernel reset the connection,
//! and a reset discards what the peer had not read yet, such as the error answer it is waiting
//! for, or the close frame that ends a WebSocket. So the gateway shuts down its side first (the
//! peer reads everything and then the end), then reads and discards whatever the peer still sends
//! until it closes too, for a bounded time and size, as nginx and Go's `net/http` do.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a closing connection waits for the peer to close its side.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(5);

/// How much of the peer's input a closing connection reads and discards at most (a whole
/// request body over the limit, sent before the client reads the answer, fits).
pub(crate) const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// How long a lingering close waits for the peer's next input on the gateway's own closes (as
/// nginx's `lingering_timeout`): a client still sending its body goes on sending, while one that
/// only keeps its connection open, not reading, does not hold the close for [`LINGER_TIME`].
pub(crate) const LINGER_IDLE: Duration = Duration::from_secs(1);

/// Shuts down writing on `stream` (everything written so far goes out, then the end), then
/// discards the peer's input until it closes, `time` passes or `bytes` have been read.
pub(crate) async fn linger(stream: &TcpStream, time: Duration, bytes: usize) {
    linger_idle(stream, time, time, bytes).await
}

/// As [`linger`], and stops as well once the peer has sent nothing for `idle` (with
/// `Duration::ZERO`, only what has arrived already is read).
pub(crate) async fn linger_idle(stream: &TcpStream, time: Duration, idle: Duration, bytes: usize) {
    // Errors here mean the connection is gone already: nothing left to wait for.
    if socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + time;
    let mut sink = vec![0u8; 16 * 1024];
    let mut left = bytes;
    while left > 0 {
        match tokio::time::timeout_at(deadline.min(Instant::now() + idle), stream.readable()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        match stream.try_read(&mut sink) {
            Ok(0) => return,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        // A peer that sends as fast as it can must not hold a runtime worker.
        tokio::task::consume_budget().await;
    }
}
