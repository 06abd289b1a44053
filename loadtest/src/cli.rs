//! The command line: one subcommand per user flow.

use clap::{Parser, Subcommand};

/// Drives one of lambda-microservice's user flows and reports throughput,
/// latency percentiles and errors.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub flow: Flow,
}

/// The three user flows.
#[derive(Debug, Subcommand)]
pub enum Flow {
    /// Initialize one session, then POST /api/v1/execute/{id} in a closed loop.
    Sync(crate::sync::SyncArgs),
    /// Submit jobs with POST /api/v1/jobs/batch, then poll until all are terminal.
    Batch(crate::batch::BatchArgs),
    /// Publish jobs straight onto NATS and collect their terminal records.
    Nats(crate::nats::NatsArgs),
}

impl Cli {
    /// Runs the chosen flow; its summary is printed (and written with `--json`).
    pub async fn run(self) -> anyhow::Result<()> {
        match self.flow {
            Flow::Sync(args) => drop(crate::sync::run(args).await?),
            Flow::Batch(args) => drop(crate::batch::run(args).await?),
            Flow::Nats(args) => drop(crate::nats::run(args).await?),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Lang;
    use std::time::Duration;

    fn parse(line: &str) -> Result<Flow, clap::Error> {
        Cli::try_parse_from(line.split_whitespace()).map(|cli| cli.flow)
    }

    #[test]
    fn the_documented_commands_parse() {
        let Flow::Sync(sync) =
            parse("loadtest sync --lang nodejs --concurrency 64 --duration 30s").unwrap()
        else {
            panic!("not sync")
        };
        assert_eq!(sync.lang, Lang::Nodejs);
        assert_eq!(sync.load.concurrency, 64);
        assert_eq!(sync.load.duration, Duration::from_secs(30));
        assert!(!sync.cache);

        let Flow::Batch(batch) =
            parse("loadtest batch --lang wasm --jobs 100000 --batch-size 10000").unwrap()
        else {
            panic!("not batch")
        };
        assert_eq!(
            (batch.lang, batch.jobs, batch.batch_size),
            (Lang::Wasm, 100_000, 10_000)
        );
        assert_eq!(batch.concurrency, 1);
        assert_eq!(batch.timeout, Duration::from_secs(120));

        let Flow::Nats(nats) = parse("loadtest nats --lang python --jobs 50000").unwrap() else {
            panic!("not nats")
        };
        assert_eq!((nats.lang, nats.jobs), (Lang::Python, 50_000));
        assert_eq!(nats.nats_prefix, "lambda");
        assert_eq!(nats.concurrency, 64);
        assert!(!nats.no_reply && !nats.session);
    }

    #[test]
    fn every_flow_takes_the_shared_options() {
        for flow in ["sync", "batch", "nats"] {
            let line = format!(
                "loadtest {flow} --url http://h:9 --token t --api-key k --json out.json --cache"
            );
            let parsed = parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let (common, cache) = match parsed {
                Flow::Sync(a) => (a.common, a.cache),
                Flow::Batch(a) => (a.common, a.cache),
                Flow::Nats(a) => (a.common, a.cache),
            };
            assert_eq!(common.url, "http://h:9");
            assert_eq!(common.token.as_deref(), Some("t"));
            assert_eq!(common.api_key.as_deref(), Some("k"));
            assert_eq!(common.json.unwrap().to_str(), Some("out.json"));
            assert!(cache, "{flow} --cache");
        }
        let Flow::Sync(sync) = parse("loadtest sync --same-params").unwrap() else {
            panic!("not sync")
        };
        assert!(sync.cache, "--same-params is still accepted");
    }

    #[test]
    fn bad_values_are_refused() {
        for line in [
            "loadtest sync --duration 30",
            "loadtest sync --concurrency 0",
            "loadtest sync --lang cobol",
            "loadtest batch --batch-size 10001",
            "loadtest batch --jobs 0",
            "loadtest batch --poll-interval 1",
            "loadtest nats --timeout soon",
            "loadtest nats --concurrency 70000",
            "loadtest",
        ] {
            assert!(parse(line).is_err(), "{line} should be refused");
        }
    }
}
