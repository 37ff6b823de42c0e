//! The transports: each renders a client's queue in its wire format. `/stream` (SSE), `/ws`
//! (WebSocket), `/poll` (long-polling), `/snapshot` (plain polling) and `/negotiate`.

pub mod negotiate;
pub mod poll;
pub mod snapshot;
pub mod sse;
pub mod ws;
