//! Hand-written HTTP/1.1 request heads and WebSocket frames, for tests that speak to the gateway
//! byte by byte on a plain TCP socket (`edge`, `attacks`, `ws_close`): they send what a real
//! client would refuse to, or must control each byte and frame.

/// RFC 6455 §1.3's example `Sec-WebSocket-Key`; its answer is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The headers of a valid WebSocket handshake (RFC 6455 §4.1), in the order the tests send them.
pub const WS_HEADERS: [(&str, &str); 4] = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", WS_KEY),
];

/// A request head: `GET {target}` with `Host` and `headers`, lines ended by `eol`.
pub fn request_head(version: &str, target: &str, headers: &[(&str, &str)], eol: &str) -> Vec<u8> {
    let mut head = format!("GET {target} {version}{eol}Host: 127.0.0.1{eol}");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}{eol}"));
    }
    head.push_str(eol);
    head.into_bytes()
}

/// An HTTP/1.1 `GET` request head with extra header lines.
pub fn get_request(target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    request_head("HTTP/1.1", target, headers, "\r\n")
}

/// The WebSocket upgrade request for `path` (RFC 6455 §4.1).
pub fn ws_request(path: &str) -> Vec<u8> {
    get_request(path, &WS_HEADERS)
}

/// WebSocket opcodes (RFC 6455 §5.2).
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A frame's bytes (RFC 6455 §5.2): the FIN bit, the three `rsv` bits, `opcode` and `payload`,
/// masked with `mask` as a client must (§5.3), or not (to check that the gateway refuses it).
pub fn encode_frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let flag = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(flag | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(flag | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(flag | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A client-to-server frame: the FIN bit, `opcode`, and `payload` masked as clients must
/// (RFC 6455 §5.3; the key need not be unpredictable for a test).
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x1f, 0x2e, 0x3d, 0x4c];
    encode_frame(fin, 0, opcode, payload, Some(MASK))
}
