//! The threads that run the forward pass's parallel loops: the calling thread and a team of
//! helpers that wait for work by spinning instead of sleeping.
//!
//! Why not rayon's pool: a 128-token prefill runs a few hundred parallel loops, separated by
//! serial steps of tens of microseconds. Rayon's idle workers go to sleep after a few
//! microseconds, and waking one (a futex call, then the kernel scheduling a halted virtual CPU)
//! costs 35-80 us on the 2-core VMs this tool is measured on: more than many of the loops
//! themselves. Here a helper spins for [`SPIN`] after its last task before it parks, so a loop
//! that follows within that time starts on every thread at once (`cargo bench --bench
//! team_probe` measures both). OpenMP runtimes, which PyTorch and llama.cpp use, wait the same
//! way.
//!
//! A loop is `for_each(n, task)`: tasks 0..n, handed out one at a time from a shared counter to
//! whichever thread asks next. The caller works too, and returns when every task is done. A
//! loop started from inside a task, or while another thread's loop holds the team (tests run in
//! parallel), runs on the calling thread alone.

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a helper spins for the next loop before it parks.
pub const SPIN: Duration = Duration::from_millis(2);

/// The number of threads a loop runs on: rayon's global pool size (`--threads`,
/// `RAYON_NUM_THREADS`, else one per core), fixed at the first loop.
pub fn threads() -> usize {
    team().map_or(1, |t| t.helpers.len() + 1)
}

/// Runs `task(i)` for every i in 0..n on the team's threads; returns when all are done. A panic
/// in a task is re-raised here once no task is running.
pub fn for_each(n: usize, task: impl Fn(usize) + Sync) {
    let team = match team() {
        Some(team) if n > 1 && !IN_LOOP.get() && !BACKOFF.solo() => team,
        _ => return (0..n).for_each(task),
    };
    let Some(_hold) = team.hold() else {
        return (0..n).for_each(task);
    };
    assert!(n < u32::MAX as usize, "{n} tasks in one loop");
    let job = Job { task: &task, panic: Mutex::new(None) };
    // Close the last loop first. A helper on its way out of it may have read its final claim
    // word and be about to read the task count: were the count already this loop's, it could
    // claim a task of this loop under the last loop's number, and the task would run twice.
    // With the next task at u32::MAX no claim under the old number succeeds, and a helper that
    // reads the new count or job (Release here, Acquire there) sees the closed word.
    let last = (team.claim.load(Ordering::Relaxed) >> 32) as u32;
    team.claim.store(u64::from(last) << 32 | u64::from(u32::MAX), Ordering::Relaxed);
    team.completed.store(0, Ordering::Relaxed);
    team.tasks.store(n, Ordering::Release);
    // The helpers read the job only while the loop is open (see `Team::work`), so its lifetime
    // may be forgotten here: this function does not return before the loop is finished.
    team.job.store(&job as *const Job as *mut Job<'static>, Ordering::Release);
    let epoch = last.wrapping_add(1);
    // SeqCst, paired with the helpers' `sleeping` flag: either a helper sees the new loop before
    // it parks, or this thread sees it parked and wakes it.
    team.claim.store(u64::from(epoch) << 32, Ordering::SeqCst);
    for helper in &team.helpers {
        if helper.sleeping.load(Ordering::SeqCst) {
            helper.thread.unpark();
        }
    }
    team.work(epoch);
    let waiting = Instant::now();
    let mut spins = 0u32;
    while team.completed.load(Ordering::Acquire) < n {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(256) {
            // A helper with a task may be waiting for this core (more threads than cores).
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    BACKOFF.after_loop(waiting.elapsed());
    let panic = job.panic.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(payload) = panic {
        resume_unwind(payload);
    }
}

/// A wait this long for the helpers' last tasks, once the caller has run out of tasks, means a
/// helper was not running: its core went to another process. A loop's tasks are a small
/// fraction of it, so on cores of its own a helper finishes its last one within tens of
/// microseconds of the caller.
const LATE: Duration = Duration::from_millis(1);
/// The first time the loops run on the caller alone after a late helper; doubled each time the
/// team is late again right after, up to [`SOLO_MAX`].
const SOLO_MIN: Duration = Duration::from_millis(20);
const SOLO_MAX: Duration = Duration::from_secs(1);

/// When the machine is busy (another process on a core the helpers need), waiting for a helper
/// that the operating system has descheduled costs a time slice per loop, far more than the
/// loop. Then the loops run on the calling thread alone for a while (the helpers park), which is
/// never slower than `--threads 1`, and the team is tried again; a team that is late again at
/// once backs off for twice as long.
static BACKOFF: Backoff = Backoff {
    solo_until: AtomicU64::new(0),
    solo_for: AtomicU64::new(0),
    tried_at: AtomicU64::new(0),
};

struct Backoff {
    /// Until when (nanoseconds since `epoch()`) loops run on the caller alone.
    solo_until: AtomicU64,
    /// The length of the last solo period, in nanoseconds (0: none yet, or the team was on time
    /// long enough to forget it).
    solo_for: AtomicU64,
    /// When the team was last tried again after a solo period.
    tried_at: AtomicU64,
}

impl Backoff {
    fn solo(&self) -> bool {
        let until = self.solo_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        let now = since_start();
        if now < until {
            return true;
        }
        // The period is over: the team gets another try.
        if self.solo_until.swap(0, Ordering::Relaxed) != 0 {
            self.tried_at.store(now, Ordering::Relaxed);
        }
        false
    }

    fn after_loop(&self, waited: Duration) {
        let now = since_start();
        let last = self.solo_for.load(Ordering::Relaxed);
        if waited < LATE {
            // On time for a while after the last try: forget the backoff.
            let tried = self.tried_at.load(Ordering::Relaxed);
            if last != 0 && now.saturating_sub(tried) > 4 * last {
                self.solo_for.store(0, Ordering::Relaxed);
            }
            return;
        }
        let next = if last == 0 { SOLO_MIN.as_nanos() as u64 } else { 2 * last };
        let next = next.min(SOLO_MAX.as_nanos() as u64);
        self.solo_for.store(next, Ordering::Relaxed);
        self.solo_until.store(now + next, Ordering::Relaxed);
    }
}

/// Nanoseconds since the first call (at least 1).
fn since_start() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// Runs `task(i, chunk)` for every `chunk`-long piece of `data` (the last may be shorter), the
/// pieces in parallel.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk: usize,
    task: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "chunks of 0 values");
    let (len, parts) = (data.len(), Parts::new(data));
    for_each(len.div_ceil(chunk), |i| {
        // SAFETY: each task takes its own piece.
        task(i, unsafe { parts.get(i * chunk..((i + 1) * chunk).min(len)) })
    });
}

/// A vector of `len` values, made by `task(i, chunk)` for every `chunk`-long piece (the last may
/// be shorter), the pieces in parallel; each piece is zeroed by its task first (see [`Fresh`]).
pub fn chunks_f32(len: usize, chunk: usize, task: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    assert!(chunk > 0, "chunks of 0 values");
    let mut out = Fresh::new(len);
    let parts = out.parts();
    for_each(len.div_ceil(chunk), |i| {
        // SAFETY: each task takes its own piece.
        task(i, unsafe { parts.zeroed(i * chunk..((i + 1) * chunk).min(len)) })
    });
    // SAFETY: the pieces cover every value.
    unsafe { out.finish() }
}

/// Runs `task(item)` for every item, in parallel.
pub fn for_each_item<T: Send>(items: &mut [T], task: impl Fn(&mut T) + Sync) {
    for_each_chunk(items, 1, |_, item| task(&mut item[0]));
}

/// A slice that parallel tasks write in disjoint pieces.
pub struct Parts<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: PhantomData<&'a mut [T]>,
}

// SAFETY: a piece is handed to one task only (the promise `get`'s caller makes), so sharing the
// slice between threads is like sending its pieces to them.
unsafe impl<T: Send> Sync for Parts<'_, T> {}

impl<'a, T> Parts<'a, T> {
    pub fn new(slice: &'a mut [T]) -> Self {
        Parts { ptr: slice.as_mut_ptr(), len: slice.len(), _slice: PhantomData }
    }

    /// The values at `range`.
    ///
    /// # Safety
    /// No other reference to any of them may be alive at the same time: ranges handed out
    /// concurrently must not overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self, range: Range<usize>) -> &'a mut [T] {
        assert!(range.start <= range.end && range.end <= self.len, "{range:?} of {}", self.len);
        // SAFETY: in bounds (asserted); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

impl<'a> Parts<'a, f32> {
    /// The values at `range`, set to zero first (they may be uninitialized before: see
    /// [`Fresh`]).
    ///
    /// # Safety
    /// As for [`Parts::get`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn zeroed(&self, range: Range<usize>) -> &'a mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len, "{range:?} of {}", self.len);
        // SAFETY: in bounds (asserted); exclusive by the caller's promise; zero bytes are 0.0.
        unsafe {
            let first = self.ptr.add(range.start);
            std::ptr::write_bytes(first, 0, range.len());
            std::slice::from_raw_parts_mut(first, range.len())
        }
    }
}

/// A new f32 vector that parallel tasks write in pieces taken with [`Parts::zeroed`]: each
/// piece is zeroed by the task that writes it, just before, while its cache lines come in
/// anyway, instead of the whole vector by one thread in a pass of its own before the loop
/// (`vec![0.0; len]`: a few percent of a prefill's time, serial).
pub struct Fresh {
    vec: Vec<f32>,
    len: usize,
}

impl Fresh {
    pub fn new(len: usize) -> Self {
        Fresh { vec: Vec::with_capacity(len), len }
    }

    /// The vector's `len` values, to be taken with [`Parts::zeroed`] only (they are
    /// uninitialized until then).
    pub fn parts(&mut self) -> Parts<'_, f32> {
        let spare = &mut self.vec.spare_capacity_mut()[..self.len];
        Parts { ptr: spare.as_mut_ptr().cast(), len: self.len, _slice: PhantomData }
    }

    /// The vector.
    ///
    /// # Safety
    /// Every value must have been handed out by [`Parts::zeroed`].
    pub unsafe fn finish(mut self) -> Vec<f32> {
        // SAFETY: every value is initialized (the caller's promise).
        unsafe { self.vec.set_len(self.len) };
        self.vec
    }
}

thread_local! {
    /// Whether this thread is running a task of a loop (helpers always are).
    static IN_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// One loop's work, on the stack of the thread that started it.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    /// The first panic of a task, re-raised by the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

struct Helper {
    thread: Thread,
    sleeping: AtomicBool,
}

struct Team {
    /// The open loop's number (high 32 bits) and its next unclaimed task (low 32 bits).
    claim: AtomicU64,
    /// The open loop's task count and job, valid while the loop is open.
    tasks: AtomicUsize,
    job: AtomicPtr<Job<'static>>,
    /// Tasks of the open loop finished.
    completed: AtomicUsize,
    /// Whether a thread's loop holds the team.
    held: AtomicBool,
    helpers: Vec<Helper>,
}

/// The team, started at the first loop; `None` with one thread.
fn team() -> Option<&'static Team> {
    static TEAM: OnceLock<Option<Team>> = OnceLock::new();
    TEAM.get_or_init(|| {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        let helpers = (0..helpers)
            .map(|i| {
                let spawned = thread::Builder::new()
                    .name(format!("lmscope-team-{}", i + 1))
                    .spawn(move || helper(i));
                spawned.map(|h| Helper { thread: h.thread().clone(), sleeping: false.into() })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .ok()?; // no threads to be had: loops run on the caller alone
        Some(Team {
            claim: AtomicU64::new(0),
            tasks: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            completed: AtomicUsize::new(0),
            held: AtomicBool::new(false),
            helpers,
        })
    })
    .as_ref()
}

/// Releases the team at the end of a loop.
struct Hold<'a>(&'a Team);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        IN_LOOP.set(false);
        self.0.held.store(false, Ordering::Release);
    }
}

impl Team {
    fn hold(&self) -> Option<Hold<'_>> {
        let free = self.held.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed);
        free.ok()?;
        IN_LOOP.set(true);
        Some(Hold(self))
    }

    /// Claims and runs tasks of loop `epoch` until none is left.
    fn work(&self, epoch: u32) {
        let mut claim = self.claim.load(Ordering::Acquire);
        loop {
            let (open, next) = ((claim >> 32) as u32, claim as u32 as usize);
            if open != epoch || next >= self.tasks.load(Ordering::Acquire) {
                return;
            }
            let job = self.job.load(Ordering::Acquire);
            // The claim succeeds only while task `next` of this loop is unclaimed, so the loop
            // is still open and `job` (read after this loop's claim word) is its job.
            match self.claim.compare_exchange_weak(
                claim,
                claim + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // SAFETY: the loop is open until this task is counted as completed.
                    let job = unsafe { &*job };
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (job.task)(next))) {
                        let mut first = job.panic.lock().unwrap_or_else(|e| e.into_inner());
                        first.get_or_insert(payload);
                    }
                    self.completed.fetch_add(1, Ordering::Release);
                    claim = self.claim.load(Ordering::Acquire);
                }
                Err(now) => claim = now,
            }
        }
    }
}

/// A helper thread: waits for a loop (spinning, then parked), works on it, waits again.
fn helper(index: usize) {
    IN_LOOP.set(true);
    let Some(team) = team() else { return };
    let me = &team.helpers[index];
    let mut seen = 0u32;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let open = (team.claim.load(Ordering::Acquire) >> 32) as u32;
            if open != seen {
                break open;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) {
                std::hint::spin_loop();
            } else if idle_since.elapsed() < SPIN {
                // Lets another thread of this process have the core (candle's GEMM on rayon's
                // pool, a test running beside): the spin is for when the core would idle.
                thread::yield_now();
            } else {
                me.sleeping.store(true, Ordering::SeqCst);
                if (team.claim.load(Ordering::SeqCst) >> 32) as u32 == seen {
                    thread::park();
                }
                me.sleeping.store(false, Ordering::SeqCst);
                idle_since = Instant::now();
            }
        };
        seen = epoch;
        team.work(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for n in [0, 1, 2, 3, 17, 1000] {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each(n, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "n = {n}");
        }
    }

    /// Loops of different sizes back to back, many times: a helper leaving one loop must never
    /// take a task of the next under the old loop's number (it did: task 3 of a 9-task loop
    /// after a 3-task one ran twice, within 10^5-10^6 loops; found in review).
    #[test]
    fn back_to_back_loops_run_each_task_once() {
        let counts: Vec<AtomicUsize> = (0..9).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..2_000_000 {
            let n = if round % 2 == 0 { 3 } else { 9 };
            for_each(n, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            for (i, c) in counts[..n].iter().enumerate() {
                assert_eq!(c.swap(0, Ordering::Relaxed), 1, "round {round}: task {i} of {n}");
            }
        }
    }

    #[test]
    fn chunks_cover_the_slice_and_nested_loops_run() {
        let mut data = vec![0usize; 1001];
        for_each_chunk(&mut data, 10, |c, chunk| {
            for_each_chunk(chunk, 3, |i, piece| piece.fill(c * 10 + i * 3));
        });
        for (i, v) in data.iter().enumerate() {
            assert_eq!(*v, i - i % 10 % 3, "value {i}");
        }
    }

    #[test]
    fn fresh_vectors_are_made_by_their_chunks() {
        for (len, chunk) in [(0, 3), (1, 3), (10, 3), (1000, 16)] {
            let v = chunks_f32(len, chunk, |i, c| {
                assert!(c.iter().all(|&x| x == 0.0), "zeroed before the task");
                for (j, x) in c.iter_mut().enumerate() {
                    *x = (i * chunk + j) as f32;
                }
            });
            assert_eq!(v, (0..len).map(|i| i as f32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let done = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            for_each(64, |i| {
                if i == 5 {
                    panic!("task 5");
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        }));
        let payload = result.expect_err("the panic comes back");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"task 5"));
        assert!(done.load(Ordering::Relaxed) >= 5);
        // The team is free again.
        let mut data = vec![0u8; 100];
        for_each_chunk(&mut data, 7, |_, c| c.fill(1));
        assert!(data.iter().all(|&v| v == 1));
    }

    #[test]
    fn loops_after_a_long_idle_wake_the_parked_helpers() {
        for _ in 0..3 {
            thread::sleep(SPIN * 2);
            let mut data = vec![0u32; 64];
            for_each_chunk(&mut data, 1, |i, v| v[0] = i as u32);
            assert!(data.iter().enumerate().all(|(i, &v)| v == i as u32));
        }
    }
}
