//! One thread that notices when children exit: an epoll set of their pidfds.
//!
//! A pidfd becomes readable when its process exits, so one thread blocked in
//! `epoll_wait` on all of them learns of every exit at once, whichever runtime (if
//! any) is running, and without polling. It used to be one waiter thread per child,
//! blocked in `waitid(P_PIDFD, WEXITED | WNOWAIT)`: with 100 machines launched at
//! once, 100 thread creations on the spawner thread, and 100 more stacks (about 200
//! more mappings) in the address space that every later fork copies and every
//! forked child tears down at exec (450 to 670 mappings during a round, 66 without
//! them and the sweeps' blocking threads). Profiled with `perf` over
//! `benches/launch.rs`'s rounds of 100 at once, the spawner thread's CPU time fell
//! by a quarter to two thirds (two profiles, the shared sweep included), and the
//! waiter threads' own time went away.

use std::collections::HashMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use tracing::warn;

/// What the reaper calls when a watched child has exited.
pub(crate) trait Exited: Send + Sync {
    /// The child has exited (it is a zombie, or something else reaped it). Called
    /// once, on the reaper thread.
    fn exited(&self);
}

/// The epoll set and who is waiting for what.
struct Reaper {
    epoll: OwnedFd,
    /// By the key registered with the pidfd.
    watched: Mutex<HashMap<u64, Weak<dyn Exited>>>,
    next_key: AtomicU64,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Weak<dyn Exited>>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The reaper, its thread started on first use.
fn reaper() -> io::Result<&'static Reaper> {
    static REAPER: OnceLock<Result<Reaper, String>> = OnceLock::new();
    let slot = REAPER.get_or_init(|| {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("qemu-reaper".into())
            .stack_size(256 * 1024)
            .spawn(|| {
                // The `OnceLock` holds the reaper once this closure has returned.
                if let Ok(r) = reaper() {
                    run(r);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Reaper {
            epoll,
            watched: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(0),
        })
    });
    slot.as_ref().map_err(|e| {
        io::Error::other(format!(
            "cannot start the thread that waits for QEMU to exit: {e}"
        ))
    })
}

fn run(reaper: &Reaper) {
    let mut events = Vec::with_capacity(64);
    loop {
        events.clear();
        match epoll::wait(&reaper.epoll, spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                // Cannot happen with a valid epoll descriptor and buffer. Every child
                // is still killed and reaped when its `Process` is dropped.
                warn!("cannot wait for QEMU processes to exit any more: {e}");
                return;
            }
        }
        for event in &events {
            let key = event.data.u64();
            // Not under the lock: `exited` takes the child's reap lock, which a
            // `Process` being dropped holds before its `Watch` takes this one.
            let target = reaper.lock().remove(&key);
            if let Some(target) = target.and_then(|t| t.upgrade()) {
                // A panic must not end this thread: no later exit would be noticed.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| target.exited()));
            }
        }
    }
}

/// A child watched by the reaper; dropping it stops watching.
#[derive(Debug)]
pub(crate) struct Watch {
    key: u64,
}

/// Call `target.exited()` on the reaper thread once the process of `pidfd` has
/// exited (at once if it has already). `pidfd` must stay open until the returned
/// [`Watch`] is dropped (closing it removes it from the epoll set).
pub(crate) fn watch(pidfd: BorrowedFd<'_>, target: Weak<dyn Exited>) -> io::Result<Watch> {
    let reaper = reaper()?;
    let key = reaper.next_key.fetch_add(1, Ordering::Relaxed);
    // Before the descriptor is added, so that an exit that has happened already
    // finds it.
    reaper.lock().insert(key, target);
    let flags = epoll::EventFlags::IN | epoll::EventFlags::ONESHOT;
    if let Err(e) = epoll::add(&reaper.epoll, pidfd, epoll::EventData::new_u64(key), flags) {
        reaper.lock().remove(&key);
        return Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot watch QEMU's pidfd: {e}"),
        ));
    }
    Ok(Watch { key })
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Ok(r) = reaper() {
            r.lock().remove(&self.key);
        }
    }
}

/// `target` as the `Weak` that [`watch`] takes.
pub(crate) fn weak<T: Exited + 'static>(target: &Arc<T>) -> Weak<dyn Exited> {
    let weak: Weak<T> = Arc::downgrade(target);
    weak
}
