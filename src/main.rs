//! The `ssegate` binary: parses configuration, sets up logging, binds, and runs the library.

use std::collections::HashMap;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// Exit status for unusable configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = match ssegate::Config::from_sources(std::env::args_os().skip(1), &env) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("ssegate=info,warn")))
        .init();
    if let Err(e) = ssegate::check_tls(&config) {
        eprintln!("ssegate: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let listener = match listen(config.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ssegate: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match serve(listener, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ssegate: {e:#}");
            ExitCode::from(match e.downcast_ref::<ssegate::RunError>() {
                Some(ssegate::RunError::Hub(_) | ssegate::RunError::Tls(_)) => EXIT_CONFIG,
                _ => 1,
            })
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, config: ssegate::Config) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let scheme = if config.tls_cert.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    ssegate::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Listens on `addr` with a long accept queue: thousands of clients reconnecting at once (after
/// a restart) would overflow the usual 128 and wait a second for their SYN to be retried.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
