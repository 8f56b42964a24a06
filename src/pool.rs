//! Parallel calls on rayon's pool in which the calling thread takes a share.
//!
//! A parallel iterator started from a thread outside the pool (the usual
//! case: an engine's own thread calls `gemm`) hands all the work to the
//! pool and puts the caller to sleep on a lock until the last item is
//! done, then wakes it. That wake-up is a fixed cost of every call, paid
//! after the work, and on the virtual machines this crate is measured on
//! it was the largest part of a parallel call with little work in it
//! (`gemm_probes pool_latency`; BENCHMARKS.md, sixth session).
//! [`sum_over_threads`] instead runs share 0 on the caller, the others on the pool, and waits
//! for them by spinning, then yielding, and only sleeps once they have
//! taken much longer than a wake-up costs.
//!
//! Called from a thread of a pool (a user's `par_iter`, or
//! `ThreadPool::install`), the shares go to that pool and the caller waits
//! as rayon workers do, running queued work.

use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long the calling thread spins for the pool's shares before it
/// yields its core between checks.
const SPIN_FOR: Duration = Duration::from_micros(20);

/// How long the calling thread waits without sleeping: past this it lets
/// the scope's blocking wait take over, whose wake-up is small next to a
/// wait this long.
const SLEEP_AFTER: Duration = Duration::from_millis(1);

/// `work(0) + .. + work(shares - 1)`: share 0 on this thread, the others
/// on rayon's pool (this thread's, if it is a worker). One share runs
/// here without touching the pool. A panic in any share is resumed here
/// once all of them have finished.
pub(crate) fn sum_over_threads(
    shares: usize,
    work: impl Fn(usize) -> usize + Sync + Send,
) -> usize {
    if shares <= 1 {
        return if shares == 1 { work(0) } else { 0 };
    }
    let total = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let in_pool = rayon::current_thread_index().is_some();
    let share = |s: usize| {
        total.fetch_add(work(s), Ordering::Relaxed);
        done.fetch_add(1, Ordering::Release);
    };
    rayon::in_place_scope(|scope| {
        // One job for all the pool's shares, which rayon's workers split
        // among themselves as they wake (a tree, as `into_par_iter` fans
        // out), where one spawn per share would have this thread queue
        // them and wake a worker for each before its own share starts.
        scope.spawn(|_| (1..shares).into_par_iter().for_each(share));
        total.fetch_add(work(0), Ordering::Relaxed);
        if !in_pool {
            wait_for(&done, shares - 1);
        }
    });
    total.into_inner()
}

/// `f(i, chunk)` for the `i`-th chunk of `chunk_len` elements of `data`
/// (the last one may be shorter), each chunk one share of
/// [`sum_over_threads`].
pub(crate) fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    for_each_part_mut(data.chunks_mut(chunk_len.max(1)).collect(), f);
}

/// `f(i, part)` for each of `parts` (disjoint pieces of the caller's
/// data, of any lengths), each part one share of [`sum_over_threads`].
pub(crate) fn for_each_part_mut<T: Send>(
    parts: Vec<&mut [T]>,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    // One lock per part, each taken by its one share only: never waited
    // on, it only hands the `&mut` across threads without `unsafe`.
    let parts: Vec<Mutex<&mut [T]>> = parts.into_iter().map(Mutex::new).collect();
    sum_over_threads(parts.len(), |i| {
        let mut part = parts[i].lock().unwrap_or_else(PoisonError::into_inner);
        f(i, &mut part);
        0
    });
}

/// Returns once `done` reaches `count` or [`SLEEP_AFTER`] has passed.
fn wait_for(done: &AtomicUsize, count: usize) {
    let start = Instant::now();
    let mut checks = 0u32;
    while done.load(Ordering::Acquire) < count {
        checks = checks.wrapping_add(1);
        if !checks.is_multiple_of(64) {
            core::hint::spin_loop();
            continue;
        }
        let waited = start.elapsed();
        if waited >= SLEEP_AFTER {
            return;
        }
        if waited >= SPIN_FOR {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_and_the_sum_is_theirs() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for shares in 0..=9 {
            let expect: usize = (0..shares).map(|s| 1 << s).sum();
            let runs: Vec<AtomicUsize> = (0..shares).map(|_| AtomicUsize::new(0)).collect();
            let work = |s: usize| {
                runs[s].fetch_add(1, Ordering::Relaxed);
                1 << s
            };
            // From outside any pool (rayon's global one takes the shares)
            // and from inside one.
            assert_eq!(sum_over_threads(shares, work), expect, "{shares} shares");
            assert_eq!(pool.install(|| sum_over_threads(shares, work)), expect);
            for (s, r) in runs.iter().enumerate() {
                assert_eq!(r.load(Ordering::Relaxed), 2, "share {s} of {shares}");
            }
        }
    }

    #[test]
    fn every_chunk_is_handed_out_once() {
        for (len, chunk) in [(0, 3), (1, 3), (7, 3), (9, 3), (5, 8), (4, 0)] {
            let mut data = vec![usize::MAX; len];
            for_each_chunk_mut(&mut data, chunk, |i, c| {
                for (j, x) in c.iter_mut().enumerate() {
                    *x = i * chunk.max(1) + j;
                }
            });
            assert_eq!(data, (0..len).collect::<Vec<_>>(), "{len} by {chunk}");
        }
    }

    #[test]
    fn a_slow_share_is_waited_for_past_the_spin() {
        let total = sum_over_threads(2, |s| {
            if s == 1 {
                std::thread::sleep(SLEEP_AFTER * 3);
            }
            s + 1
        });
        assert_eq!(total, 3);
    }

    #[test]
    fn a_panicking_share_panics_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            sum_over_threads(4, |s| if s == 2 { panic!("share 2") } else { s })
        });
        assert!(caught.is_err());
    }
}
