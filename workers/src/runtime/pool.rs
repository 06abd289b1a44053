//! A pool of warm instances of one runtime.
//!
//! The pool has `capacity` slots (a semaphore); a [`Reservation`] holds one.
//! Warm instances wait in `idle`. An instance belongs to one function, the
//! pair (owner, script hash), from its first job on, as a warm Lambda
//! execution environment belongs to one function version: it never runs
//! another script, so no realm, module, builtin or file of one function is
//! ever seen by another. A job runs on an idle instance of its function if
//! there is one (most recently used first), else on a fresh one (never used;
//! the pool keeps `spare` of them ready beside the slots, started in the
//! background), else on one started for it. At most `capacity + spare`
//! instances exist: past that, the least recently used idle instance of
//! another function is stopped. Instances are also replaced after
//! `max_uses` jobs, when they break, and stopped after `idle_timeout`
//! without work. Broken instances are replaced in the background, with
//! backoff when starting fails.

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
    /// Fresh instances kept ready (beyond the `capacity` that run jobs), so
    /// that a function without a warm instance seldom waits for a start.
    pub spare: usize,
    /// Jobs an instance runs before it is replaced by a fresh one.
    pub max_uses: u64,
    /// An instance idle this long is stopped (and started again on demand).
    pub idle_timeout: Duration,
}

impl PoolPolicy {
    /// `capacity` slots, all prewarmed, one spare, recycled after 10,000
    /// jobs, idle instances stopped after 5 minutes.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            prewarm: capacity,
            spare: 1,
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
    /// Stopped to make room for an instance of another function.
    pub evicted: u64,
    /// Stopped after `idle_timeout` without work.
    pub idle: u64,
    /// Stopped at once when warmed, because the pool already kept as many
    /// as it may (a replacement that lost the race to an on-demand start).
    pub surplus: u64,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    recycled: AtomicU64,
    replaced: AtomicU64,
    evicted: AtomicU64,
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
    /// The function (owner, script hash) whose code this instance has run,
    /// if any yet.
    function: Option<String>,
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
            evicted: read(&c.evicted),
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
        Ok(self.adopt(instance))
    }

    /// Counts a started instance in.
    fn adopt(&self, instance: Box<dyn Instance>) -> Member {
        bump(&self.inner.counters.started, 1);
        self.inner.live.fetch_add(1, Ordering::Relaxed);
        let id = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        if let Some(pid) = instance.pid() {
            lock(&self.inner.pids).insert(id, pid);
        }
        Member {
            id,
            instance,
            function: None,
            uses: 0,
            last_used: Instant::now(),
        }
    }

    /// Most instances that may exist: the slots and the spares.
    fn limit(&self) -> usize {
        self.inner.policy.capacity + self.inner.policy.spare
    }

    /// Takes the idle instance that may run `function`: one that already ran
    /// it (most recently used first), else a fresh one.
    fn take_idle(&self, function: &str) -> Option<Member> {
        let mut idle = lock(&self.inner.idle);
        self.replace_doomed(&mut idle);
        let same = idle
            .iter()
            .rposition(|m| m.function.as_deref() == Some(function));
        let fresh = || idle.iter().rposition(|m| m.function.is_none());
        let taken = same.or_else(fresh).map(|i| idle.remove(i));
        let spares = idle.iter().filter(|m| m.function.is_none()).count();
        if spares < self.inner.policy.spare {
            // A spare is worth more than the least recently used idle
            // process of another function: it serves whichever comes next.
            let victim = if self.inner.live.load(Ordering::Relaxed) >= self.limit() {
                let others = idle
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| {
                        m.function.is_some() && m.function.as_deref() != Some(function)
                    })
                    .min_by_key(|(_, m)| m.last_used)
                    .map(|(i, _)| i);
                others.map(|i| idle.remove(i))
            } else {
                None
            };
            drop(idle);
            if let Some(victim) = victim {
                bump(&self.inner.counters.evicted, 1);
                self.stop_later(victim);
            }
            if self.inner.live.load(Ordering::Relaxed) < self.limit() {
                self.start_spare();
            }
        }
        taken
    }

    /// Stops the least recently used idle instance of another function
    /// than `keep`, if there is one; fresh ones go last.
    fn evict_one(idle: &mut Vec<Member>, keep: Option<&str>) -> Option<Member> {
        let victim = idle
            .iter()
            .enumerate()
            .filter(|(_, m)| m.function.is_some() && m.function.as_deref() != keep)
            .min_by_key(|(_, m)| m.last_used)
            .map(|(i, _)| i)
            .or_else(|| idle.iter().position(|m| m.function.is_none()))?;
        Some(idle.remove(victim))
    }

    /// Starts a fresh instance in the background, kept as a spare.
    fn start_spare(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Counted as live from now, so that concurrent jobs do not start
        // more spares than the policy keeps.
        self.inner.live.fetch_add(1, Ordering::Relaxed);
        let pool = self.clone();
        let task = async move {
            let launched = tokio::select! {
                () = pool.inner.closing.cancelled() => None,
                launched = pool.inner.launcher.launch() => Some(launched),
            };
            pool.inner.live.fetch_sub(1, Ordering::Relaxed);
            match launched {
                Some(Ok(instance)) => {
                    let member = pool.adopt(instance);
                    pool.put_back(member);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "starting a spare runtime"),
                None => {}
            }
        };
        self.inner.background.spawn_on(task, &runtime);
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

    /// Returns a warm instance to `idle`, unless the pool is closing; then,
    /// while more instances exist than the pool may keep, stops the least
    /// recently used idle instance of another function (or, failing that,
    /// a fresh one, or this one: a replacement that lost the race to an
    /// on-demand start). Counting the instances that exist, not the jobs
    /// running, keeps a job that has just taken a slot but not yet an
    /// instance from making a good instance look surplus.
    fn put_back(&self, member: Member) {
        let mut idle = lock(&self.inner.idle);
        if self.inner.closing.is_cancelled() {
            let instance = self.retire(member);
            drop(idle);
            drop(instance);
            return;
        }
        let function = member.function.clone();
        idle.push(member);
        let mut stopped = Vec::new();
        while self.inner.live.load(Ordering::Relaxed) > self.limit() {
            let Some(victim) =
                Self::evict_one(&mut idle, function.as_deref()).or_else(|| idle.pop())
            else {
                break;
            };
            // Retired under the lock, so two instances put back at once
            // are not both taken for the one too many.
            let counter = if victim.function.is_some() && victim.function != function {
                &self.inner.counters.evicted
            } else {
                &self.inner.counters.surplus
            };
            bump(counter, 1);
            stopped.push(self.retire(victim));
        }
        drop(idle);
        // Dropping kills the process (`kill_on_drop`).
        drop(stopped);
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
    /// Replaces the idle instances that were killed while they waited.
    fn replace_doomed(&self, idle: &mut Vec<Member>) {
        let (dead, alive): (Vec<Member>, Vec<Member>) =
            std::mem::take(idle).into_iter().partition(doomed);
        *idle = alive;
        for member in dead {
            bump(&self.inner.counters.replaced, 1);
            self.replace(member);
        }
    }

    fn spawn_idle_reaper(&self) {
        let timeout = self.inner.policy.idle_timeout;
        // Often enough that a killed idle process is replaced within a second.
        let every = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
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
                    pool.replace_doomed(&mut idle);
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
    /// Runs one job on an instance of its function, or a fresh one,
    /// starting one if neither is warm.
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
        let function = format!("{}\n{}", invocation.owner, invocation.script_hash);
        let mut member = match pool.take_idle(&function) {
            Some(member) => member,
            None => {
                // Room first, so the pool never holds more than it may.
                if pool.inner.live.load(Ordering::Relaxed) >= pool.limit() {
                    let victim = Pool::evict_one(&mut lock(&pool.inner.idle), None);
                    if let Some(victim) = victim {
                        bump(&pool.inner.counters.evicted, 1);
                        pool.stop_later(victim);
                    }
                }
                pool.launch_member()
                    .await
                    .map_err(RuntimeError::NotLaunched)?
            }
        };
        member.function = Some(function);
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

/// A process that is gone, or that has a SIGKILL pending: a frozen task
/// (cgroup v1) keeps a kill pending until it is thawed, looking alive.
fn doomed(member: &Member) -> bool {
    let Some(pid) = member.instance.pid() else {
        return false;
    };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ShdPnd:")
                .or_else(|| l.strip_prefix("SigPnd:"))
        })
        .filter_map(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .any(|pending| pending & (1 << 8) != 0)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
