//! A pool of warm instances of one runtime.
//!
//! The pool has `capacity` slots (a semaphore); a [`Reservation`] holds one.
//! Warm instances wait in `idle`. A job runs on an idle instance of the same
//! owner if there is one, else on a fresh one: an instance that ran one
//! owner's code never runs another's (it is stopped and a fresh one started
//! instead). Instances are also replaced after `max_uses` jobs, when they
//! break, and stopped after `idle_timeout` without work; a slot without a
//! warm instance starts one on demand. Broken instances are replaced in the
//! background, with backoff when starting fails.

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

/// How a pool keeps its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Jobs run at once, and warm instances kept at most.
    pub capacity: usize,
    /// Warm instances started with the pool.
    pub prewarm: usize,
    /// Jobs an instance runs before it is replaced by a fresh one.
    pub max_uses: u64,
    /// An instance idle this long is stopped (and started again on demand).
    pub idle_timeout: Duration,
}

impl PoolPolicy {
    /// `capacity` slots, all prewarmed, recycled after 10,000 jobs, idle
    /// instances stopped after 5 minutes.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            prewarm: capacity,
            max_uses: 10_000,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// What a pool did since it started: instances started, and instances
/// stopped by why they were stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Instances started: prewarmed, on demand, or replacing others.
    pub started: u64,
    /// Stopped after running `max_uses` jobs.
    pub recycled: u64,
    /// Stopped because they broke or were killed (a timeout, the memory
    /// limit, a job cut short).
    pub replaced: u64,
    /// Stopped because the next job was another owner's.
    pub owner_changed: u64,
    /// Stopped after `idle_timeout` without work.
    pub idle: u64,
    /// Stopped at once when warmed, because the pool already kept as many
    /// as it has slots (a replacement that lost the race to an on-demand start).
    pub surplus: u64,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    recycled: AtomicU64,
    replaced: AtomicU64,
    owner_changed: AtomicU64,
    idle: AtomicU64,
    surplus: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Warm instances of one language; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    launcher: Box<dyn Launcher>,
    policy: PoolPolicy,
    idle: Mutex<Vec<Member>>,
    slots: Arc<Semaphore>,
    busy: AtomicUsize,
    /// Instances that exist: idle, running a job, or just started.
    live: AtomicUsize,
    pids: Mutex<BTreeMap<u64, u32>>,
    next_member: AtomicU64,
    counters: Counters,
    background: TaskTracker,
    closing: CancellationToken,
}

struct Member {
    id: u64,
    instance: Box<dyn Instance>,
    /// The owner whose code this instance has run, if any yet.
    owner: Option<String>,
    uses: u64,
    last_used: Instant,
}

impl Pool {
    /// Starts a pool of `capacity` prewarmed instances with the default policy.
    pub async fn start(launcher: Box<dyn Launcher>, capacity: usize) -> Result<Self, LaunchError> {
        Self::start_with(launcher, PoolPolicy::new(capacity)).await
    }

    /// Starts a pool; returns once the prewarmed instances are ready.
    pub async fn start_with(
        launcher: Box<dyn Launcher>,
        policy: PoolPolicy,
    ) -> Result<Self, LaunchError> {
        let pool = Self {
            inner: Arc::new(Inner {
                launcher,
                policy,
                idle: Mutex::default(),
                slots: Arc::new(Semaphore::new(policy.capacity)),
                busy: AtomicUsize::new(0),
                live: AtomicUsize::new(0),
                pids: Mutex::default(),
                next_member: AtomicU64::new(0),
                counters: Counters::default(),
                background: TaskTracker::new(),
                closing: CancellationToken::new(),
            }),
        };
        let prewarm = policy.prewarm.min(policy.capacity);
        let members =
            futures::future::try_join_all((0..prewarm).map(|_| pool.launch_member())).await?;
        lock(&pool.inner.idle).extend(members);
        pool.spawn_idle_reaper();
        Ok(pool)
    }

    pub fn language(&self) -> Language {
        self.inner.launcher.language()
    }

    /// How many jobs the pool runs at once.
    pub fn capacity(&self) -> usize {
        self.inner.policy.capacity
    }

    /// How many instances are running a job now.
    pub fn busy(&self) -> usize {
        self.inner.busy.load(Ordering::Relaxed)
    }

    /// Process ids of the live instances, busy or idle.
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.inner.pids).values().copied().collect()
    }

    /// How many warm instances wait for a job.
    pub fn warm(&self) -> usize {
        lock(&self.inner.idle).len()
    }

    /// Instances started and stopped so far.
    pub fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PoolStats {
            started: read(&c.started),
            recycled: read(&c.recycled),
            replaced: read(&c.replaced),
            owner_changed: read(&c.owner_changed),
            idle: read(&c.idle),
            surplus: read(&c.surplus),
        }
    }

    /// Waits until a slot is free and reserves it.
    pub async fn reserve(&self) -> Result<Reservation, RuntimeError> {
        let permit = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .map_err(|_| RuntimeError::ShuttingDown(self.language()))?;
        Ok(Reservation {
            pool: self.clone(),
            permit,
        })
    }

    /// Reserves a free slot if there is one right now.
    pub fn try_reserve(&self) -> Option<Reservation> {
        let permit = Arc::clone(&self.inner.slots).try_acquire_owned().ok()?;
        Some(Reservation {
            pool: self.clone(),
            permit,
        })
    }

    /// Runs one job on the next free slot.
    pub async fn execute(&self, invocation: &Invocation) -> Result<Execution, RuntimeError> {
        self.reserve().await?.execute(invocation).await
    }

    /// Stops taking jobs and stops the idle instances, waiting up to `grace`
    /// for each. Instances still running a job are stopped when it ends.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closing.cancel();
        self.inner.slots.close();
        let idle = std::mem::take(&mut *lock(&self.inner.idle));
        futures::future::join_all(idle.into_iter().map(|m| self.retire(m).stop(grace))).await;
        self.inner.background.close();
        self.inner.background.wait().await;
    }

    async fn launch_member(&self) -> Result<Member, LaunchError> {
        let instance = self.inner.launcher.launch().await?;
        bump(&self.inner.counters.started, 1);
        self.inner.live.fetch_add(1, Ordering::Relaxed);
        let id = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        if let Some(pid) = instance.pid() {
            lock(&self.inner.pids).insert(id, pid);
        }
        Ok(Member {
            id,
            instance,
            owner: None,
            uses: 0,
            last_used: Instant::now(),
        })
    }

    /// Takes the idle instance that may run `owner`'s code: one that already
    /// ran it (most recently used first), else a fresh one. An instance of
    /// another owner is handed out only to be stopped (`Err`).
    fn take_idle(&self, owner: &str) -> Option<Result<Member, Member>> {
        let mut idle = lock(&self.inner.idle);
        let same = idle.iter().rposition(|m| m.owner.as_deref() == Some(owner));
        let fresh = || idle.iter().rposition(|m| m.owner.is_none());
        if let Some(i) = same.or_else(fresh) {
            return Some(Ok(idle.remove(i)));
        }
        idle.pop().map(Err)
    }

    fn retire(&self, member: Member) -> Box<dyn Instance> {
        self.inner.live.fetch_sub(1, Ordering::Relaxed);
        lock(&self.inner.pids).remove(&member.id);
        member.instance
    }

    /// Stops an instance in the background.
    fn stop_later(&self, member: Member) {
        let instance = self.retire(member);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.inner
                .background
                .spawn_on(instance.stop(Duration::ZERO), &runtime);
        }
    }

    /// Returns a warm instance to `idle`, unless the pool is closing or
    /// more instances exist than it has slots (a replacement that lost the
    /// race to an on-demand start). Counting the instances that exist, not
    /// the jobs running, keeps a job that has just taken a slot but not yet
    /// an instance from making a good instance look surplus.
    fn put_back(&self, member: Member) {
        let mut idle = lock(&self.inner.idle);
        let closing = self.inner.closing.is_cancelled();
        if closing || self.inner.live.load(Ordering::Relaxed) > self.capacity() {
            // Retired under the lock, so two instances put back at once
            // are not both taken for the one too many.
            let instance = self.retire(member);
            drop(idle);
            if !closing {
                bump(&self.inner.counters.surplus, 1);
            }
            // Dropping kills the process (`kill_on_drop`).
            drop(instance);
            return;
        }
        idle.push(member);
    }

    /// Stops a used-up or broken instance and warms a fresh one in the background.
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
        self.inner.background.spawn_on(task, &runtime);
    }

    /// Stops instances idle for longer than the policy allows.
    fn spawn_idle_reaper(&self) {
        let timeout = self.inner.policy.idle_timeout;
        let every = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(30));
        let pool = Arc::downgrade(&self.inner);
        let closing = self.inner.closing.clone();
        self.inner.background.spawn(async move {
            loop {
                tokio::select! {
                    () = closing.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
                let Some(inner) = pool.upgrade() else { return };
                let pool = Pool { inner };
                let expired: Vec<Member> = {
                    let mut idle = lock(&pool.inner.idle);
                    let (old, keep) = std::mem::take(&mut *idle)
                        .into_iter()
                        .partition(|m| m.last_used.elapsed() >= timeout);
                    *idle = keep;
                    old
                };
                bump(&pool.inner.counters.idle, expired.len() as u64);
                if !expired.is_empty() {
                    tracing::info!(language = %pool.language(), stopped = expired.len(), "stopping idle runtimes");
                }
                for member in expired {
                    pool.stop_later(member);
                }
            }
        });
    }
}

/// A slot set aside for one job; dropping it unused frees it again.
pub struct Reservation {
    pool: Pool,
    permit: OwnedSemaphorePermit,
}

impl Reservation {
    /// Runs one job on an instance that may run its owner's code, starting
    /// one if no such instance is warm.
    pub async fn execute(self, invocation: &Invocation) -> Result<Execution, RuntimeError> {
        let Self { pool, permit } = self;
        if pool.inner.closing.is_cancelled() {
            return Err(RuntimeError::ShuttingDown(pool.language()));
        }
        pool.inner.busy.fetch_add(1, Ordering::Relaxed);
        let mut lease = Lease {
            pool: pool.clone(),
            member: None,
            reusable: false,
            worn_out: false,
            _permit: permit,
        };
        let mut member = match pool.take_idle(&invocation.owner) {
            Some(Ok(member)) => member,
            Some(Err(other_owner)) => {
                bump(&pool.inner.counters.owner_changed, 1);
                pool.stop_later(other_owner);
                pool.launch_member()
                    .await
                    .map_err(RuntimeError::NotLaunched)?
            }
            None => pool
                .launch_member()
                .await
                .map_err(RuntimeError::NotLaunched)?,
        };
        member.owner = Some(invocation.owner.clone());
        member.uses += 1;
        let instance = &mut lease.member.insert(member).instance;
        let started = Instant::now();
        let report = instance.run(invocation).await?;
        let elapsed = started.elapsed();
        let member = lease.member.as_mut().expect("leased");
        member.last_used = Instant::now();
        let worn_out = member.uses >= pool.inner.policy.max_uses;
        lease.reusable = report.reusable && !worn_out;
        lease.worn_out = report.reusable && worn_out;
        Ok(Execution {
            outcome: report.outcome,
            logs: report.logs,
            elapsed,
        })
    }
}

/// An instance out of the pool. However the job ends (even if its future is
/// dropped half-way), the instance goes back or gets replaced, then the slot
/// is freed.
struct Lease {
    pool: Pool,
    member: Option<Member>,
    reusable: bool,
    /// Fine, but it ran `max_uses` jobs.
    worn_out: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.inner.busy.fetch_sub(1, Ordering::Relaxed);
        if let Some(member) = self.member.take() {
            let counters = &self.pool.inner.counters;
            if self.reusable {
                self.pool.put_back(member);
            } else {
                bump(
                    if self.worn_out {
                        &counters.recycled
                    } else {
                        &counters.replaced
                    },
                    1,
                );
                self.pool.replace(member);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
