//! Rendered job views, kept per replica by job id and version. A dashboard polls a job
//! far more often than the job changes, and the version moves whenever anything the view
//! shows changes (the invariant the ETags rest on), so a view rendered at version `v` is the
//! answer for as long as the job row still says `v`. A hit costs the version read (one
//! point select on PostgreSQL, memory on SQLite) and a copy of the bytes, instead of the
//! job row, its shards and the JSON serialisation. Across replicas nothing is shared and
//! nothing can go stale: each replica checks the version in the database first.
//!
//! Bounded by bytes (`server.job_view_cache_bytes`; 0 turns it off). When an insert would
//! pass the bound, the oldest-inserted entries go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::body::Bytes;
use uuid::Uuid;

/// The cache of rendered `GET /v1/jobs/{id}` bodies.
pub struct ViewCache {
    limit: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    views: HashMap<Uuid, (i64, Bytes)>,
    /// Insertion order, for eviction; an id may appear more than once (re-rendered at a
    /// newer version): only the entry whose turn matches its current insertion is evicted.
    order: VecDeque<(Uuid, i64)>,
    bytes: usize,
}

impl ViewCache {
    /// A cache holding at most `limit` bytes of views (0: none).
    pub fn new(limit: usize) -> Self {
        ViewCache {
            limit,
            inner: Mutex::default(),
        }
    }

    /// Whether views are kept at all (`server.job_view_cache_bytes` above 0).
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// The view of job `id` rendered at `version`, if one is kept.
    pub fn get(&self, id: Uuid, version: i64) -> Option<Bytes> {
        if self.limit == 0 {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.views.get(&id) {
            Some((v, body)) if *v == version => Some(body.clone()),
            _ => None,
        }
    }

    /// Keeps `body` as the view of job `id` at `version`, unless a newer one is kept already
    /// (two requests may render concurrently, the older read arriving last).
    pub fn put(&self, id: Uuid, version: i64, body: Bytes) {
        if self.limit == 0 || body.len() > self.limit / 4 {
            // Nothing larger than a quarter of the bound: one job must not flush the rest.
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((kept, old)) = inner.views.get(&id) {
            if *kept >= version {
                return;
            }
            let freed = old.len();
            inner.bytes -= freed;
        }
        inner.bytes += body.len();
        inner.views.insert(id, (version, body));
        inner.order.push_back((id, version));
        while inner.bytes > self.limit {
            let Some((old_id, old_version)) = inner.order.pop_front() else {
                break;
            };
            let current = matches!(inner.views.get(&old_id), Some((v, _)) if *v == old_version);
            if current {
                if let Some((_, gone)) = inner.views.remove(&old_id) {
                    inner.bytes -= gone.len();
                }
            }
        }
        // Superseded versions leave stale turns behind; drop them once they outnumber
        // the entries, so the queue stays proportional to the cache.
        if inner.order.len() > 2 * inner.views.len() + 16 {
            let Inner { views, order, .. } = &mut *inner;
            order.retain(|(id, v)| matches!(views.get(id), Some((kept, _)) if kept == v));
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn a_view_is_answered_for_its_version_only() {
        let cache = ViewCache::new(1_000);
        let id = Uuid::new_v4();
        cache.put(id, 3, Bytes::from_static(b"v3"));
        assert_eq!(cache.get(id, 3).as_deref(), Some(&b"v3"[..]));
        assert_eq!(
            cache.get(id, 4),
            None,
            "a newer version is not the kept view"
        );
        assert_eq!(cache.get(id, 2), None);
        assert_eq!(cache.get(Uuid::new_v4(), 3), None);
        cache.put(id, 4, Bytes::from_static(b"v4!"));
        assert_eq!(cache.get(id, 3), None);
        assert_eq!(cache.get(id, 4).as_deref(), Some(&b"v4!"[..]));
        assert_eq!(cache.bytes(), 3);
    }

    #[test]
    fn an_older_render_arriving_late_does_not_replace_a_newer_one() {
        let cache = ViewCache::new(1_000);
        let id = Uuid::new_v4();
        cache.put(id, 5, Bytes::from_static(b"v5"));
        cache.put(id, 4, Bytes::from_static(b"v4"));
        assert_eq!(cache.get(id, 5).as_deref(), Some(&b"v5"[..]));
        assert_eq!(cache.get(id, 4), None);
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_first() {
        let cache = ViewCache::new(1_000);
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            cache.put(*id, 1, body(240));
        }
        // 5 × 240 > 1,000: the first went.
        assert_eq!(cache.get(ids[0], 1), None);
        for id in &ids[1..] {
            assert!(cache.get(*id, 1).is_some());
        }
        assert_eq!(cache.bytes(), 960);
        // Re-rendering one moves it to the back of the queue: the next eviction skips it.
        cache.put(ids[1], 2, body(240));
        cache.put(Uuid::new_v4(), 1, body(240));
        assert!(cache.get(ids[1], 2).is_some());
        assert_eq!(cache.get(ids[2], 1), None);
        assert!(cache.bytes() <= 1_000);
    }

    #[test]
    fn views_over_a_quarter_of_the_bound_and_a_zero_bound_keep_nothing() {
        let cache = ViewCache::new(1_000);
        let id = Uuid::new_v4();
        cache.put(id, 1, body(251));
        assert_eq!(cache.get(id, 1), None);
        let off = ViewCache::new(0);
        off.put(id, 1, Bytes::new());
        assert_eq!(off.get(id, 1), None);
    }

    #[test]
    fn the_queue_stays_proportional_to_the_entries() {
        let cache = ViewCache::new(1_000_000);
        let id = Uuid::new_v4();
        for v in 0..10_000 {
            cache.put(id, v, body(10));
        }
        let inner = cache.inner.lock().unwrap();
        assert!(inner.order.len() <= 2 * inner.views.len() + 17);
        assert_eq!(inner.bytes, 10);
    }
}
