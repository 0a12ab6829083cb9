//! A small time-to-live cache with a hard bound on entries, for review answers.
//!
//! Reviews are cached so that a busy client costs kube-apiserver one TokenReview and one
//! SubjectAccessReview per few seconds rather than one per request. The bound matters as much as
//! the TTL: the keys come from clients (tokens, paths, names), so without it a client could grow
//! the server's memory at will. When the cache is full, expired entries go first and then the
//! oldest.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A bounded map whose entries expire.
pub struct TtlCache<K, V> {
    /// Most entries held at once.
    capacity: usize,
    /// Entries and their expiry, plus insertion order for eviction.
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    entries: HashMap<K, (Instant, V)>,
    /// Keys in insertion order; may hold keys already replaced or removed (skipped on eviction).
    order: VecDeque<(K, Instant)>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner { entries: HashMap::new(), order: VecDeque::new() }),
        }
    }

    /// The value of `key`, if present and not expired at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let inner = self.lock();
        inner.entries.get(key).filter(|(expires, _)| *expires > now).map(|(_, v)| v.clone())
    }

    /// Stores `value` under `key` until `now + ttl`. A zero TTL stores nothing.
    pub fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let expires = now + ttl;
        let mut inner = self.lock();
        if !inner.entries.contains_key(&key) && inner.entries.len() >= self.capacity {
            inner.entries.retain(|_, (expires, _)| *expires > now);
            while inner.entries.len() >= self.capacity {
                let Some((oldest, recorded_expiry)) = inner.order.pop_front() else { break };
                // Only evict the entry this order record belongs to, not a later replacement.
                if inner.entries.get(&oldest).is_some_and(|(e, _)| *e == recorded_expiry) {
                    inner.entries.remove(&oldest);
                }
            }
        }
        inner.entries.insert(key.clone(), (expires, value));
        inner.order.push_back((key, expires));
        // The order queue may collect records of replaced entries; keep it proportionate.
        if inner.order.len() > self.capacity * 2 {
            let Inner { entries, order } = &mut *inner;
            order.retain(|(k, e)| entries.get(k).is_some_and(|(current, _)| current == e));
        }
    }

    /// Number of entries held (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn entries_expire_after_their_ttl() {
        let cache = TtlCache::new(4);
        let t0 = Instant::now();
        cache.insert("a", 1, TTL, t0);
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(cache.get(&"a", t0 + TTL), None);
        cache.insert("b", 2, Duration::ZERO, t0);
        assert_eq!(cache.get(&"b", t0), None);
    }

    #[test]
    fn the_bound_holds_and_evicts_expired_then_oldest() {
        let cache = TtlCache::new(3);
        let t0 = Instant::now();
        cache.insert(1, "one", Duration::from_secs(1), t0);
        cache.insert(2, "two", TTL, t0);
        cache.insert(3, "three", TTL, t0);
        // 1 has expired by then: it goes, the others stay.
        cache.insert(4, "four", TTL, t0 + Duration::from_secs(2));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&2, t0), Some("two"));
        // Nothing expired: the oldest (2) goes.
        cache.insert(5, "five", TTL, t0 + Duration::from_secs(3));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&2, t0 + Duration::from_secs(3)), None);
        assert_eq!(cache.get(&5, t0 + Duration::from_secs(3)), Some("five"));
        for i in 0..10_000 {
            cache.insert(100 + i, "many", TTL, t0 + Duration::from_secs(4));
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn replacing_an_entry_keeps_the_newer_value_through_eviction() {
        let cache = TtlCache::new(2);
        let t0 = Instant::now();
        cache.insert("a", 1, TTL, t0);
        cache.insert("b", 2, TTL, t0 + Duration::from_secs(1));
        cache.insert("a", 3, TTL, t0 + Duration::from_secs(2));
        // "a"'s first record is the oldest, but it was replaced: "b" is evicted instead.
        cache.insert("c", 4, TTL, t0 + Duration::from_secs(3));
        let now = t0 + Duration::from_secs(3);
        assert_eq!(
            (cache.get(&"a", now), cache.get(&"b", now), cache.get(&"c", now)),
            (Some(3), None, Some(4))
        );
    }
}
