//! SQLite's job versions kept in memory, so a conditional GET that matches costs no
//! statement. A SQLite database has one writer process (this one: `batchlens keys` writes
//! only keys), and every write of the store ends in a commit this module counts; a version
//! read is kept only while no commit began since it was read, and for at most [`TTL`], so a
//! row changed from outside (a `sqlite3` shell) still shows within a second. PostgreSQL has
//! replicas writing the same rows and keeps no such cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How long a kept version is trusted without a commit of this process moving it.
pub const TTL: Duration = Duration::from_secs(1);

/// Commits to one database file by every store of this process: `began` moves just before
/// a COMMIT is sent, `settled` once it returned (or failed, or was dropped).
#[derive(Debug, Default)]
pub(crate) struct Commits {
    began: AtomicU64,
    settled: AtomicU64,
}

/// Held around one COMMIT (see [`Commits::begin`]).
pub(crate) struct Committing(Arc<Commits>);

impl Drop for Committing {
    fn drop(&mut self) {
        self.0.settled.fetch_add(1, SeqCst);
    }
}

impl Commits {
    /// The counter of the database file `path`, shared by every store of this process
    /// that opens it.
    pub fn of_file(path: &Path) -> Arc<Commits> {
        static FILES: LazyLock<Mutex<HashMap<PathBuf, Arc<Commits>>>> =
            LazyLock::new(Default::default);
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        FILES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }

    /// Counts a COMMIT about to be sent; drop the guard when it has returned.
    pub fn begin(self: &Arc<Self>) -> Committing {
        self.began.fetch_add(1, SeqCst);
        Committing(self.clone())
    }

    /// The count of commits begun, when none is in flight: a read that starts after this
    /// sees every commit counted, and stays current while the count does not move.
    fn quiet(&self) -> Option<u64> {
        let began = self.began.load(SeqCst);
        (self.settled.load(SeqCst) == began).then_some(began)
    }
}

/// The versions read since the last commit, by job (with its tenant).
#[derive(Debug)]
pub(crate) struct VersionCache {
    commits: Arc<Commits>,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    /// The commit count every entry was read at.
    at: u64,
    versions: HashMap<Uuid, (String, i64, Instant)>,
}

/// What [`VersionCache::before_read`] saw: the commit count a version read now is valid at.
pub(crate) struct ReadAt(Option<u64>);

impl VersionCache {
    pub fn new(commits: Arc<Commits>) -> Self {
        Self {
            commits,
            kept: Mutex::new(Kept::default()),
        }
    }

    /// The tenant's job's version, when one read since the last commit is kept.
    pub fn get(&self, tenant: &str, id: Uuid) -> Option<i64> {
        let now = self.commits.began.load(SeqCst);
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.at != now {
            return None;
        }
        let (owner, version, read_at) = kept.versions.get(&id)?;
        (owner == tenant && read_at.elapsed() < TTL).then_some(*version)
    }

    /// Call before reading a version from the database.
    pub fn before_read(&self) -> ReadAt {
        ReadAt(self.commits.quiet())
    }

    /// Keeps the version read after `at`, unless a commit began in between.
    pub fn keep(&self, at: ReadAt, tenant: &str, id: Uuid, version: i64) {
        let Some(at) = at.0 else { return };
        if self.commits.began.load(SeqCst) != at {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.at < at {
            kept.at = at;
            kept.versions.clear();
        }
        if kept.at == at {
            kept.versions
                .insert(id, (tenant.to_string(), version, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_forgets_every_version_and_one_in_flight_keeps_none() {
        let cache = VersionCache::new(Arc::new(Commits::default()));
        let job = Uuid::new_v4();
        let at = cache.before_read();
        cache.keep(at, "acme", job, 3);
        assert_eq!(cache.get("acme", job), Some(3));
        assert_eq!(cache.get("globex", job), None, "another tenant's job");

        let committing = cache.commits.begin();
        assert_eq!(cache.get("acme", job), None, "a commit began");
        let at = cache.before_read();
        cache.keep(at, "acme", job, 4);
        assert_eq!(
            cache.get("acme", job),
            None,
            "read while a commit was in flight"
        );
        drop(committing);

        let at = cache.before_read();
        let _late = cache.commits.begin();
        cache.keep(at, "acme", job, 4);
        assert_eq!(
            cache.get("acme", job),
            None,
            "a commit began during the read"
        );
    }
}
