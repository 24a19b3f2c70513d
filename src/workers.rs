//! Scoped worker threads that degrade instead of panicking: where the system refuses a
//! thread (`ulimit -u`, memory), the work runs on the threads that did start, or inline.

/// Runs `work` on up to `n` scoped threads (each pulls from whatever shared queue `work`
/// uses) and returns their results. Never panics for want of threads.
pub fn run<T: Send>(n: usize, work: impl Fn() -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n.max(1))
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, &work).ok())
            .collect();
        if handles.is_empty() {
            return vec![work()];
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}
