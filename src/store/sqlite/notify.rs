//! Cross-process change notification: one background thread per store that sleeps on inotify
//! and wakes the store's watchers when another process (or this one) commits.
//!
//! SQLite has no cross-process notification, but every commit writes frames to the `-wal` file
//! and every checkpoint writes the main file, and our writers additionally touch the main file's
//! timestamps *after* each commit (see `poke`) — a WAL frame write is seen by inotify a moment
//! before the commit becomes visible to readers, so waking on it alone could read too early and
//! then sleep until the fallback poll. The `-shm` file is deliberately ignored: readers write to
//! it too, and reacting to it would make 50 agents wake each other forever.
//!
//! One inotify instance per store (not per watch) keeps us far below the default limit of 128
//! instances per user with 50 agents on one machine.

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest sleep without a notification: the fallback for missed wake-ups (e.g. a writer that
/// is not weft) and the pace at which expired keys are noticed when none is due sooner.
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// The files whose changes mean "the database changed".
struct DbFiles {
    dir: PathBuf,
    db: OsString,
    wal: OsString,
}

impl DbFiles {
    fn new(db_path: &Path) -> Self {
        let dir = match db_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let db = db_path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let mut wal = db.clone();
        wal.push("-wal");
        DbFiles { dir, db, wal }
    }

    fn is_relevant(&self, mask: AddWatchFlags, name: Option<&OsString>) -> bool {
        match name {
            // Queue overflow: we may have lost a relevant event.
            None => mask.contains(AddWatchFlags::IN_Q_OVERFLOW),
            Some(n) if *n == self.wal => mask.contains(AddWatchFlags::IN_MODIFY),
            Some(n) => *n == self.db,
        }
    }
}

/// Starts the notifier thread for the database at `db_path`. The returned receiver's value
/// changes after every relevant file event and at least every `FALLBACK_POLL`.
///
/// `tick` runs before every sleep (purging expired keys) and returns how soon the thread must
/// wake up again regardless of notifications (capped at `FALLBACK_POLL`). The thread ends when
/// `stop` is set or every receiver is gone, which drops the sender and so ends the watchers.
pub fn spawn(
    db_path: &Path,
    mut tick: impl FnMut() -> Duration + Send + 'static,
    stop: Arc<AtomicBool>,
) -> io::Result<watch::Receiver<u64>> {
    let files = DbFiles::new(db_path);
    // Without inotify (e.g. the per-user instance limit is reached) watches still work, only
    // at the pace of the fallback poll.
    let inotify = watch_dir(&files.dir)
        .inspect_err(|e| {
            tracing::warn!(error = %e, dir = %files.dir.display(),
                "store: inotify unavailable, watchers fall back to polling every second")
        })
        .ok();
    let (tx, rx) = watch::channel(0u64);
    std::thread::Builder::new()
        .name("weft-store-notify".into())
        .spawn(move || loop {
            if stop.load(Ordering::Relaxed) || tx.is_closed() {
                return;
            }
            let timeout = tick().min(FALLBACK_POLL);
            match &inotify {
                Some(inotify) => wait(inotify, &files, timeout),
                None => std::thread::sleep(timeout),
            }
            tx.send_modify(|generation| *generation = generation.wrapping_add(1));
        })?;
    Ok(rx)
}

fn watch_dir(dir: &Path) -> nix::Result<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(dir, AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_ATTRIB)?;
    Ok(inotify)
}

/// Sleeps until a relevant file event or `timeout`, whichever comes first.
fn wait(inotify: &Inotify, files: &DbFiles, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match poll_readable(inotify, left) {
            Ok(true) => {
                if drain(inotify, files) {
                    return;
                }
            }
            Ok(false) => return,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "store notifier: poll on inotify failed");
                std::thread::sleep(left);
                return;
            }
        }
    }
}

/// Reads every queued event; true if any of them concerns the database.
fn drain(inotify: &Inotify, files: &DbFiles) -> bool {
    let mut relevant = false;
    loop {
        match inotify.read_events() {
            Ok(events) if events.is_empty() => return relevant,
            Ok(events) => {
                relevant |= events.iter().any(|e| files.is_relevant(e.mask, e.name.as_ref()));
            }
            Err(Errno::EAGAIN) => return relevant,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "store notifier: reading inotify failed");
                return true;
            }
        }
    }
}

/// poll(2) on one fd (nix's `poll` feature is not enabled in this crate).
fn poll_readable(fd: &impl AsFd, timeout: Duration) -> nix::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so we never wake a hair before an expiry and spin.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is a valid, initialised pollfd that outlives the call; nfds is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    Errno::result(n).map(|n| n > 0)
}

/// Tells other processes' notifiers that we just committed (IN_ATTRIB on the database file).
/// Uses utimensat on the path: opening and closing the database file ourselves would silently
/// drop SQLite's POSIX locks held by this process.
pub fn poke(db_path: &Path) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let now = TimeSpec::UTIME_NOW;
    if let Err(e) = utimensat(nix::fcntl::AT_FDCWD, db_path, &now, &now, UtimensatFlags::FollowSymlink) {
        // Watchers still see the commit through the WAL write or the fallback poll.
        tracing::debug!(error = %e, path = %db_path.display(), "store: cannot touch database file");
    }
}
