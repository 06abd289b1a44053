//! A fixed-size pool of warm instances of one runtime.
//!
//! Free instances sit in `idle`; the semaphore has one permit per idle
//! instance, so a [`Reservation`] (a permit) guarantees an instance to run on.
//! An instance that breaks is stopped and replaced in the background, with
//! backoff when starting fails, so the pool returns to full size by itself.

use super::{Execution, Instance, Invocation, LaunchError, Launcher, RuntimeError};
use schemas::Language;
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Warm instances of one language; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    launcher: Box<dyn Launcher>,
    capacity: usize,
    idle: Mutex<Vec<Member>>,
    available: Arc<Semaphore>,
    busy: AtomicUsize,
    pids: Mutex<BTreeMap<u64, u32>>,
    next_member: AtomicU64,
    replacements: TaskTracker,
    closing: CancellationToken,
}

struct Member {
    id: u64,
    instance: Box<dyn Instance>,
}

impl Pool {
    /// Starts `capacity` instances and returns once all of them are ready.
    pub async fn start(launcher: Box<dyn Launcher>, capacity: usize) -> Result<Self, LaunchError> {
        let pool = Self {
            inner: Arc::new(Inner {
                launcher,
                capacity,
                idle: Mutex::default(),
                available: Arc::new(Semaphore::new(0)),
                busy: AtomicUsize::new(0),
                pids: Mutex::default(),
                next_member: AtomicU64::new(0),
                replacements: TaskTracker::new(),
                closing: CancellationToken::new(),
            }),
        };
        let members =
            futures::future::try_join_all((0..capacity).map(|_| pool.launch_member())).await?;
        for member in members {
            pool.put_back(member);
        }
        Ok(pool)
    }

    pub fn language(&self) -> Language {
        self.inner.launcher.language()
    }

    /// How many instances the pool keeps.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// How many instances are running a job now.
    pub fn busy(&self) -> usize {
        self.inner.busy.load(Ordering::Relaxed)
    }

    /// Process ids of the live instances, busy or idle.
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.inner.pids).values().copied().collect()
    }

    /// Waits until an instance is free and reserves it.
    pub async fn reserve(&self) -> Result<Reservation, RuntimeError> {
        let permit = Arc::clone(&self.inner.available)
            .acquire_owned()
            .await
            .map_err(|_| RuntimeError::ShuttingDown(self.language()))?;
        Ok(Reservation {
            pool: self.clone(),
            permit,
        })
    }

    /// Reserves a free instance if there is one right now.
    pub fn try_reserve(&self) -> Option<Reservation> {
        let permit = Arc::clone(&self.inner.available).try_acquire_owned().ok()?;
        Some(Reservation {
            pool: self.clone(),
            permit,
        })
    }

    /// Runs one job on the next free instance.
    pub async fn execute(&self, invocation: &Invocation) -> Result<Execution, RuntimeError> {
        self.reserve().await?.execute(invocation).await
    }

    /// Stops taking jobs and stops the idle instances, waiting up to `grace`
    /// for each. Instances still running a job are stopped when it ends.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closing.cancel();
        self.inner.available.close();
        let idle = std::mem::take(&mut *lock(&self.inner.idle));
        futures::future::join_all(idle.into_iter().map(|m| self.retire(m).stop(grace))).await;
        self.inner.replacements.close();
        self.inner.replacements.wait().await;
    }

    async fn launch_member(&self) -> Result<Member, LaunchError> {
        let instance = self.inner.launcher.launch().await?;
        let id = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        if let Some(pid) = instance.pid() {
            lock(&self.inner.pids).insert(id, pid);
        }
        Ok(Member { id, instance })
    }

    fn retire(&self, member: Member) -> Box<dyn Instance> {
        lock(&self.inner.pids).remove(&member.id);
        member.instance
    }

    fn put_back(&self, member: Member) {
        if self.inner.closing.is_cancelled() {
            // Dropping kills the process (`kill_on_drop`).
            drop(self.retire(member));
            return;
        }
        lock(&self.inner.idle).push(member);
        self.inner.available.add_permits(1);
    }

    /// Stops a broken instance and starts its successor in the background.
    fn replace(&self, member: Member) {
        let old = self.retire(member);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime left to start one on: the process is ending.
        };
        let pool = self.clone();
        let task = async move {
            old.stop(Duration::ZERO).await;
            let closing = pool.inner.closing.clone();
            let mut backoff = FIRST_BACKOFF;
            loop {
                let launched = tokio::select! {
                    () = closing.cancelled() => return,
                    launched = pool.launch_member() => launched,
                };
                match launched {
                    Ok(member) => return pool.put_back(member),
                    Err(e) => {
                        tracing::error!(error = %e, retry_in = ?backoff, "replacing a runtime")
                    }
                }
                tokio::select! {
                    () = closing.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        };
        self.inner.replacements.spawn_on(task, &runtime);
    }
}

/// A free instance set aside for one job; dropping it unused frees it again.
pub struct Reservation {
    pool: Pool,
    permit: OwnedSemaphorePermit,
}

impl Reservation {
    /// Runs one job on the reserved instance.
    pub async fn execute(self, invocation: &Invocation) -> Result<Execution, RuntimeError> {
        let Self { pool, permit } = self;
        let member = lock(&pool.inner.idle).pop();
        let Some(member) = member else {
            return Err(RuntimeError::ShuttingDown(pool.language()));
        };
        permit.forget();
        pool.inner.busy.fetch_add(1, Ordering::Relaxed);
        let mut lease = Lease {
            pool,
            member: Some(member),
            reusable: false,
        };
        let instance = &mut lease.member.as_mut().expect("leased").instance;
        let started = Instant::now();
        let report = instance.run(invocation).await?;
        let elapsed = started.elapsed();
        lease.reusable = report.reusable;
        Ok(Execution {
            outcome: report.outcome,
            logs: report.logs,
            elapsed,
        })
    }
}

/// An instance out of the pool. However the job ends (even if its future is
/// dropped half-way), the instance goes back or gets replaced.
struct Lease {
    pool: Pool,
    member: Option<Member>,
    reusable: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.inner.busy.fetch_sub(1, Ordering::Relaxed);
        if let Some(member) = self.member.take() {
            if self.reusable {
                self.pool.put_back(member);
            } else {
                self.pool.replace(member);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
