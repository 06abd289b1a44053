//! Prometheus metrics as every process exposes them: a [`Registrar`] that
//! registers series under the `lambda_` prefix and remembers their names,
//! the text exposition ([`encode`]), and a [`MetricsEndpoint`] that serves
//! `GET /metrics` for the processes whose only HTTP is their metrics
//! (dispatcher, workers; the API serves it on its own router).

use axum::{http::header, response::IntoResponse, routing::get, Router};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The prefix of every series of every process.
pub const PREFIX: &str = "lambda";

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Histogram buckets for durations, in seconds: 100 µs to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Registers series in one registry under [`PREFIX`] and keeps their full
/// names, so that a process can say which series it exports before any
/// of them has a value.
#[derive(Clone)]
pub struct Registrar {
    registry: Registry,
    names: Arc<Mutex<Vec<String>>>,
}

impl Registrar {
    pub fn new() -> Self {
        Self {
            registry: Registry::new_custom(Some(PREFIX.into()), None).expect("valid prefix"),
            names: Arc::default(),
        }
    }

    /// The registry, for [`encode`].
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Full names (`lambda_…`) of every series registered so far, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        names.sort();
        names
    }

    /// A counter family; `name` should end in `_total`.
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
        self.add(name, Box::new(counter.clone()));
        counter
    }

    /// A counter without labels; `name` should end in `_total`.
    pub fn single_counter(&self, name: &str, help: &str) -> IntCounter {
        let counter = IntCounter::new(name, help).expect("valid counter");
        self.add(name, Box::new(counter.clone()));
        counter
    }

    /// A gauge family.
    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
        self.add(name, Box::new(gauge.clone()));
        gauge
    }

    /// A gauge without labels.
    pub fn single_gauge(&self, name: &str, help: &str) -> IntGauge {
        let gauge = IntGauge::new(name, help).expect("valid gauge");
        self.add(name, Box::new(gauge.clone()));
        gauge
    }

    /// A histogram family of durations in seconds ([`SECONDS_BUCKETS`]).
    pub fn seconds(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec());
        let histogram = HistogramVec::new(opts, labels).expect("valid histogram");
        self.add(name, Box::new(histogram.clone()));
        histogram
    }

    fn add(&self, name: &str, collector: Box<dyn prometheus::core::Collector>) {
        self.registry
            .register(collector)
            .unwrap_or_else(|e| panic!("registering {name}: {e}"));
        self.names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{PREFIX}_{name}"));
    }
}

impl Default for Registrar {
    fn default() -> Self {
        Self::new()
    }
}

/// The text exposition of everything in `registry`.
pub fn encode(registry: &Registry) -> String {
    TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_default()
}

/// A bound `/metrics` listener, not yet serving.
pub struct MetricsEndpoint {
    listener: TcpListener,
}

impl MetricsEndpoint {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves `GET /metrics` with what `render` returns at each scrape, until
    /// `shutdown`. Every other path is a 404.
    pub async fn serve<F>(self, render: F, shutdown: CancellationToken)
    where
        F: Fn() -> String + Clone + Send + Sync + 'static,
    {
        let addr = self.listener.local_addr().ok();
        let router = Router::new().route(
            "/metrics",
            get(move || {
                let body = render();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response() }
            }),
        );
        tracing::info!(?addr, "metrics listening");
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrar_names_every_series_with_the_prefix() {
        let r = Registrar::new();
        r.counter("things_total", "Things", &["kind"]);
        r.single_gauge("level", "Level");
        r.seconds("wait_seconds", "Waits", &[]);
        assert_eq!(
            r.names(),
            ["lambda_level", "lambda_things_total", "lambda_wait_seconds"]
        );
    }

    #[tokio::test]
    async fn endpoint_serves_the_rendered_text() {
        let r = Registrar::new();
        let things = r.counter("things_total", "Things", &["kind"]);
        things.with_label_values(&["a"]).inc_by(3);
        let endpoint = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let port = endpoint.port();
        let shutdown = CancellationToken::new();
        let registry = r.registry().clone();
        let server = tokio::spawn(endpoint.serve(move || encode(&registry), shutdown.clone()));

        let text = http_get(port, "/metrics").await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(CONTENT_TYPE), "{text}");
        assert!(text.contains("lambda_things_total{kind=\"a\"} 3"), "{text}");
        assert!(http_get(port, "/other").await.starts_with("HTTP/1.1 404"));

        shutdown.cancel();
        server.await.unwrap();
    }

    async fn http_get(port: u16, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }
}
