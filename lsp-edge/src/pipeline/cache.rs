//! The answer cache: temperature-0 answers kept in memory, least recently used
//! first out, bounded by bytes (keys included). Nothing is written to disk.
//!
//! At temperature 0 vps-infer decodes greedily, so the same assembled prompt, model
//! and parameters give the same text: a script that asks twice gets the first answer
//! back without spending the backend's time.

use std::collections::{BTreeMap, HashMap};

/// Bookkeeping per entry on top of its key and value, so that many tiny entries
/// still count against the bound.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug)]
pub struct AnswerCache<V> {
    max_bytes: usize,
    used_bytes: usize,
    tick: u64,
    entries: HashMap<String, Slot<V>>,
    /// Last use → key; the first entry is the least recently used.
    order: BTreeMap<u64, String>,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    bytes: usize,
    tick: u64,
}

impl<V: Clone> AnswerCache<V> {
    pub fn new(max_bytes: usize) -> AnswerCache<V> {
        AnswerCache {
            max_bytes,
            used_bytes: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The value for `key`, which becomes the most recently used.
    pub fn get(&mut self, key: &str) -> Option<V> {
        let tick = self.next_tick();
        let slot = self.entries.get_mut(key)?;
        let old = std::mem::replace(&mut slot.tick, tick);
        let value = slot.value.clone();
        if let Some(key) = self.order.remove(&old) {
            self.order.insert(tick, key);
        }
        Some(value)
    }

    /// Stores `value` (whose own size is `value_bytes`), evicting the least recently
    /// used entries to make room. An entry larger than the whole cache is not kept.
    pub fn insert(&mut self, key: String, value: V, value_bytes: usize) {
        self.remove(&key);
        // The key is held twice: in the map and in the recency order.
        let bytes = 2 * key.len() + value_bytes + ENTRY_OVERHEAD;
        if bytes > self.max_bytes {
            return;
        }
        while self.used_bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.entries.remove(&oldest) {
                self.used_bytes -= slot.bytes;
            }
        }
        let tick = self.next_tick();
        self.order.insert(tick, key.clone());
        self.entries.insert(key, Slot { value, bytes, tick });
        self.used_bytes += bytes;
    }

    fn remove(&mut self, key: &str) {
        if let Some(slot) = self.entries.remove(key) {
            self.order.remove(&slot.tick);
            self.used_bytes -= slot.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_bytes(key: &str, value: &str) -> usize {
        2 * key.len() + value.len() + ENTRY_OVERHEAD
    }

    fn put(cache: &mut AnswerCache<String>, key: &str, value: &str) {
        cache.insert(key.to_owned(), value.to_owned(), value.len());
    }

    #[test]
    fn cache_evicts_the_least_recently_used_first() {
        let mut cache = AnswerCache::new(3 * entry_bytes("k1", "v1"));
        put(&mut cache, "k1", "v1");
        put(&mut cache, "k2", "v2");
        put(&mut cache, "k3", "v3");
        assert_eq!(cache.len(), 3);
        // Touch k1: k2 is now the oldest.
        assert_eq!(cache.get("k1").as_deref(), Some("v1"));
        put(&mut cache, "k4", "v4");
        assert_eq!(cache.get("k2"), None);
        assert!(cache.get("k1").is_some() && cache.get("k3").is_some());
        assert!(cache.get("k4").is_some());
        assert!(cache.used_bytes() <= cache.max_bytes());
    }

    #[test]
    fn cache_is_bounded_by_bytes_not_entries() {
        let mut cache =
            AnswerCache::new(entry_bytes("a", "x") + entry_bytes("big", &"y".repeat(500)));
        put(&mut cache, "a", "x");
        put(&mut cache, "big", &"y".repeat(500));
        assert_eq!(cache.len(), 2);
        // A second large value pushes out both older entries.
        put(&mut cache, "big2", &"z".repeat(520));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("big2").map(|v| v.len()), Some(520));
        assert_eq!(cache.used_bytes(), entry_bytes("big2", &"z".repeat(520)));
    }

    #[test]
    fn cache_skips_values_larger_than_itself_and_replaces_in_place() {
        let mut cache = AnswerCache::new(200);
        put(&mut cache, "k", &"v".repeat(500));
        assert!(cache.is_empty());
        assert_eq!(cache.used_bytes(), 0);
        put(&mut cache, "k", "one");
        put(&mut cache, "k", "two");
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("k").as_deref(), Some("two"));
        assert_eq!(cache.used_bytes(), entry_bytes("k", "two"));
    }

    #[test]
    fn cache_of_size_zero_keeps_nothing() {
        let mut cache = AnswerCache::new(0);
        put(&mut cache, "k", "v");
        assert_eq!(cache.get("k"), None);
    }
}
