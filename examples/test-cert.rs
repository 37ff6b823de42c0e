//! Writes a self-signed certificate for `localhost` and `127.0.0.1` and its private key, made with
//! `rcgen`, to `cert.pem` and `key.pem` in the directory given: a certificate for trying HTTPS
//! locally, and the one the browser tests (`web/test/`) serve with `--tls-cert`/`--tls-key`.
//!
//! ```sh
//! cargo run --release --example test-cert -- /tmp/ssegate-tls
//! ssegate serve --tls-cert /tmp/ssegate-tls/cert.pem --tls-key /tmp/ssegate-tls/key.pem
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: test-cert DIR (writes DIR/cert.pem and DIR/key.pem)");
        return ExitCode::from(64);
    };
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let made = match rcgen::generate_simple_self_signed(names) {
        Ok(made) => made,
        Err(e) => {
            eprintln!("cannot make a certificate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&cert, made.cert.pem()))
        .and_then(|()| std::fs::write(&key, made.key_pair.serialize_pem()));
    if let Err(e) = written {
        eprintln!("cannot write to {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    println!("{}\n{}", cert.display(), key.display());
    ExitCode::SUCCESS
}
