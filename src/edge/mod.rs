//! The socket edge: the accept loop, connection limits and graceful shutdown, and the serving of
//! fresh `/stream` and `/ws` connections straight on their sockets.

pub(crate) mod direct;
pub(crate) mod linger;
pub(crate) mod server;
pub(crate) mod socket;
pub(crate) mod tls;
