//! What every service binary does the same way: logging, the shutdown signal
//! and Prometheus metrics ([`metrics`]).

pub mod metrics;

/// Logs as JSON when stdout is not a terminal (human-readable when it is),
/// filtered by `RUST_LOG` (default `info`). Every line is written through
/// [`crate::redact::text`], so no secret reaches the log whoever logged it.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingStdout);
    if std::io::stdout().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

/// Standard output that masks secrets. The formatter hands over each event
/// whole in one `write`, so a secret is never split between two calls.
struct RedactingStdout;

impl std::io::Write for RedactingStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        std::io::stdout()
            .lock()
            .write_all(crate::redact::text(&line).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Resolves at the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}

/// A token cancelled at the first SIGINT or SIGTERM: what a binary hands to
/// its `App::run`.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}
