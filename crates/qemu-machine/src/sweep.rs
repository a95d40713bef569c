//! Removing the temporary directories of machines whose process died.
//!
//! A process killed by SIGKILL cannot remove its machines' directories. Every
//! launch therefore makes sure that a sweep of its base directory runs after the
//! launch began (so that it sees every directory left by a process that died before)
//! and waits for it before it succeeds. Launches at the same time share sweeps: a
//! launch that finds a sweep of its base directory running asks for one more, which
//! starts when the running one ends and serves every launch that asked meanwhile. So
//! 100 launches at once cost two sweeps, not 100: with one sweep per launch (each on
//! a blocking thread, each listing the base directory and reading `/proc/<pid>/stat`
//! for every machine directory in it, the 99 others of this process included) the
//! sweeps took about 2.5% of the CPU time of `benches/launch.rs`'s 100 launches at
//! once, and their blocking threads made every later fork dearer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tracing::debug;

use crate::process;

/// How the names of machines' temporary directories start. The rest is
/// `<owner>-<random>`, the owner being [`process::owner_tag`] of the process that
/// launched the machine.
pub(crate) const TEMP_DIR_PREFIX: &str = "qemu-machine-";

/// How long a launch waits for the sweep it asked for. A sweep lists one directory;
/// past this the launch goes on without it (it is housekeeping) and says so.
const SWEEP_WAIT: Duration = Duration::from_secs(30);

/// The sweeps of one base directory.
#[derive(Debug)]
struct Sweeps {
    state: Mutex<State>,
    /// The number of the last sweep that finished.
    finished: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// The number of the last sweep started (sweeps are numbered from 1).
    started: u64,
    /// The highest sweep number a launch waits for.
    wanted: u64,
    /// Whether a sweep runs (on a thread of its own).
    running: bool,
}

impl Sweeps {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sweeps of `base`, one entry per base directory this process launched in.
fn sweeps_of(base: &Path) -> Arc<Sweeps> {
    static ALL: OnceLock<Mutex<HashMap<PathBuf, Arc<Sweeps>>>> = OnceLock::new();
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.entry(base.to_owned())
        .or_insert_with(|| {
            Arc::new(Sweeps {
                state: Mutex::new(State::default()),
                finished: watch::channel(0).0,
            })
        })
        .clone()
}

/// Make sure that a sweep of `base` starts from now on, and return a future that
/// resolves once it has finished (or after [`SWEEP_WAIT`], or at once if no thread
/// could be started for it).
///
/// The sweep runs on a thread of its own, not on tokio's blocking pool: a runtime
/// that shuts down drops the blocking tasks that have not started, and one dropped
/// here would leave the sweeps of `base` marked as running for good, for the
/// launches of every other runtime.
pub(crate) fn sweep(base: &Path) -> impl std::future::Future<Output = ()> + Send + 'static {
    let sweeps = sweeps_of(base);
    let mut finished = sweeps.finished.subscribe();
    let target = {
        let mut state = sweeps.lock();
        // A running sweep may have listed the directory already: the next one.
        let target = state.started + 1;
        state.wanted = state.wanted.max(target);
        if !state.running {
            let (sweeps2, base2) = (sweeps.clone(), base.to_owned());
            let started = std::thread::Builder::new()
                .name("qemu-machine-sweep".into())
                .stack_size(256 * 1024)
                .spawn(move || run(&sweeps2, &base2));
            match started {
                Ok(_) => {
                    state.running = true;
                    state.started = target;
                }
                Err(e) => {
                    debug!("cannot start a thread to sweep stale machine directories: {e}");
                    state.wanted = state.started;
                }
            }
        }
        // Nothing to wait for if no sweep runs (its thread could not start).
        state.running.then_some(target)
    };
    async move {
        let Some(target) = target else { return };
        let done = tokio::time::timeout(SWEEP_WAIT, finished.wait_for(|&n| n >= target)).await;
        if !matches!(done, Ok(Ok(_))) {
            debug!("the sweep for stale machine directories did not finish in time");
        }
    }
}

/// Sweep `base` until no launch waits for another sweep.
fn run(sweeps: &Sweeps, base: &Path) {
    /// Marks the sweeps as not running if a sweep panics, so that the next launch
    /// starts one (those waiting meanwhile time out).
    struct OnPanic<'a>(&'a Sweeps);
    impl Drop for OnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.lock().running = false;
            }
        }
    }
    let _on_panic = OnPanic(sweeps);
    loop {
        remove_stale_dirs(base);
        let mut state = sweeps.lock();
        sweeps.finished.send_replace(state.started);
        if state.wanted <= state.started {
            // Under the lock: a launch from now on starts a sweep of its own.
            state.running = false;
            return;
        }
        state.started += 1;
    }
}

/// Remove the temporary directories under `base` whose owner process has died
/// (e.g. by SIGKILL, when nothing of ours could run): named
/// `qemu-machine-<owner>-<random>`, a real directory (not a symlink) of our user, and
/// an owner that no longer runs (see [`process::owner_state`]). A directory whose
/// owner is this process, alive, unknown (another pid namespace) or not in its name
/// (made by an older version) is left alone. Errors are only logged: this is
/// housekeeping.
fn remove_stale_dirs(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(base) {
        Ok(e) => e,
        Err(e) => {
            debug!(
                "cannot look for stale machine directories in {}: {e}",
                base.display()
            );
            return;
        }
    };
    let me = process::owner_tag().ok();
    let uid = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_DIR_PREFIX))
            .and_then(|rest| rest.rsplit_once('-'))
            .map(|(owner, _random)| owner)
        else {
            continue;
        };
        // Ours, without reading our own `/proc/<pid>/stat` (which sums the times of
        // all our threads).
        if me.as_deref() == Some(owner) {
            continue;
        }
        if process::owner_state(owner) != process::Owner::Dead {
            continue;
        }
        let path = entry.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && m.uid() == uid => {}
            _ => continue,
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => debug!("removed {}, left by a process that died", path.display()),
            // Another launch removed it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => debug!("cannot remove the stale {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory as a process that died would leave it (pid above any pid_max,
    /// our pid namespace), made in `staging` (on the same file system) and renamed
    /// into `base`: a sweep running meanwhile may remove it, but not while it is
    /// being filled.
    fn stale_dir(base: &Path, staging: &Path, n: u32) -> PathBuf {
        let me = process::owner_tag().unwrap();
        let ns = me.rsplit('.').next().unwrap();
        let name = format!("{TEMP_DIR_PREFIX}999999999.1.{ns}-stale{n}");
        std::fs::create_dir(staging.join(&name)).unwrap();
        std::fs::write(staging.join(&name).join("file"), b"x").unwrap();
        std::fs::rename(staging.join(&name), base.join(&name)).unwrap();
        base.join(name)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_caller_waits_for_a_sweep_that_started_after_it_asked() {
        let base = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        let mine = base.path().join(format!(
            "{TEMP_DIR_PREFIX}{}-x",
            process::owner_tag().unwrap()
        ));
        std::fs::create_dir(&mine).unwrap();
        for round in 0..20 {
            let first = stale_dir(base.path(), staging.path(), 2 * round);
            let a = sweep(base.path());
            // Made after the first call: only a later sweep can see it.
            let second = stale_dir(base.path(), staging.path(), 2 * round + 1);
            let waiting: Vec<_> = (0..10).map(|_| tokio::spawn(sweep(base.path()))).collect();
            a.await;
            assert!(!first.exists(), "round {round}");
            for w in waiting {
                w.await.unwrap();
            }
            assert!(!second.exists(), "round {round}");
        }
        assert!(mine.is_dir(), "a directory of this process was removed");
    }
}
