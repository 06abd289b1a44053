//! Publishing the submissions: requests answered by the dispatcher, or
//! fire-and-forget publishes under `--no-reply`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use futures::StreamExt as _;
use schemas::submit::{SubmitReply, SubmitRequest};
use uuid::Uuid;

use super::{NatsArgs, Pending, Shared};
use crate::report::{ErrorKind, Recorder};
use crate::script;

/// Job `n`'s id, its submission as JSON (running `session` if given, else
/// the subject's function), and its expected result.
pub fn submission(n: u64, same: bool, session: Option<Uuid>) -> (Uuid, Vec<u8>, u64) {
    let (params, expected) = script::params(n, same);
    let job_id = Uuid::now_v7();
    let request = SubmitRequest {
        params: Some(params),
        job_id: Some(job_id),
        request_id: session,
        script_content: None,
        callback_url: None,
        context: None,
    };
    let payload = serde_json::to_vec(&request).expect("a submission serialises");
    (job_id, payload, expected)
}

/// Publishes every job; returns the submissions that failed.
pub(super) async fn publish_all(
    nats: async_nats::Client,
    subject: String,
    args: NatsArgs,
    session: Option<Uuid>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Recorder {
    let recorder = Mutex::new(Recorder::new());
    let fail = |job_id: Uuid, kind: ErrorKind| {
        // A job whose record already came was accepted whatever the reply said.
        if shared.pending().remove(&job_id).is_some() {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            let mut recorder = recorder.lock().unwrap_or_else(|e| e.into_inner());
            recorder.record(Err(kind), Duration::ZERO);
        } else {
            shared.accepted.fetch_add(1, Ordering::Relaxed);
        }
    };
    let same = args.cache;
    let jobs = futures::stream::iter(0..args.jobs)
        .take_while(|_| std::future::ready(!stop.load(Ordering::Relaxed)));
    if args.no_reply {
        futures::pin_mut!(jobs);
        while let Some(n) = jobs.next().await {
            let (job_id, payload, expected) = submission(n, same, session);
            let sent = Instant::now();
            shared.pending().insert(job_id, Pending { sent, expected });
            shared.published.fetch_add(1, Ordering::Relaxed);
            match nats.publish(subject.clone(), payload.into()).await {
                Ok(()) => {
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => fail(job_id, ErrorKind::Transport),
            }
        }
        if let Err(e) = nats.flush().await {
            eprintln!("nats: flushing the publishes: {e}");
        }
    } else {
        jobs.for_each_concurrent(usize::from(args.concurrency), |n| {
            let (nats, subject, shared, fail) = (&nats, &subject, &shared, &fail);
            async move {
                let (job_id, payload, expected) = submission(n, same, session);
                let sent = Instant::now();
                shared.pending().insert(job_id, Pending { sent, expected });
                shared.published.fetch_add(1, Ordering::Relaxed);
                match request(nats, subject, payload).await {
                    Ok(()) => {
                        shared.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(kind) => fail(job_id, kind),
                }
            }
        })
        .await;
    }
    recorder.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// One submission as a request; `Ok` when the dispatcher accepted it.
async fn request(
    nats: &async_nats::Client,
    subject: &str,
    payload: Vec<u8>,
) -> Result<(), ErrorKind> {
    let reply = nats
        .request(subject.to_owned(), payload.into())
        .await
        .map_err(|e| match e.kind() {
            RequestErrorKind::TimedOut => ErrorKind::Timeout,
            RequestErrorKind::NoResponders => ErrorKind::NoResponders,
            RequestErrorKind::Other => ErrorKind::Transport,
        })?;
    match serde_json::from_slice::<SubmitReply>(&reply.payload) {
        Ok(SubmitReply::Accepted { .. }) => Ok(()),
        Ok(SubmitReply::Refused { error }) => Err(ErrorKind::Refused(error.code)),
        Err(_) => Err(ErrorKind::BadBody),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_follow_the_contract_and_name_their_job() {
        let (job_id, payload, expected) = submission(5, false, None);
        let request: SubmitRequest = serde_json::from_slice(&payload).unwrap();
        assert_eq!(request.job_id, Some(job_id));
        assert_eq!(Some(script::params(5, false).0), request.params);
        assert_eq!(request.request_id, None);
        assert_eq!(request.script_content, None);
        assert_eq!(expected, 6);
        assert_ne!(submission(5, false, None).0, job_id, "job ids are unique");

        let session = Uuid::now_v7();
        let (_, payload, _) = submission(5, true, Some(session));
        let request: SubmitRequest = serde_json::from_slice(&payload).unwrap();
        assert_eq!(request.request_id, Some(session));
        assert_eq!(Some(script::params(5, true).0), request.params);
    }
}
