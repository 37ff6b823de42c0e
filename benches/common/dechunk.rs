//! Shared by the load generator (`benches/loadgen.rs`) and the attack harness
//! (`benches/attack.rs`), which read event streams over raw sockets.

/// Undoes `Transfer-Encoding: chunked` on a byte stream that arrives in arbitrary pieces.
#[derive(Default)]
pub struct Dechunker {
    /// Bytes received but not yet decoded (an incomplete size line or chunk end).
    raw: Vec<u8>,
    /// Bytes of the current chunk still to come; `None` while a size line is expected.
    left: Option<usize>,
}

impl Dechunker {
    /// Appends the payload found in `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.raw.extend_from_slice(input);
        let mut at = 0;
        loop {
            match self.left {
                Some(0) => {
                    // Each chunk's data is followed by CRLF.
                    if self.raw.len() - at < 2 {
                        break;
                    }
                    at += 2;
                    self.left = None;
                }
                Some(n) => {
                    let take = n.min(self.raw.len() - at);
                    if take == 0 {
                        break;
                    }
                    out.extend_from_slice(&self.raw[at..at + take]);
                    at += take;
                    self.left = Some(n - take);
                }
                None => {
                    let Some(eol) = self.raw[at..].windows(2).position(|w| w == b"\r\n") else { break };
                    let line = String::from_utf8_lossy(&self.raw[at..at + eol]);
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
                    at += eol + 2;
                    self.left = Some(size);
                }
            }
        }
        self.raw.drain(..at);
        Ok(())
    }
}
