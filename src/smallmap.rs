//! A map sized for the writer's per-account tables: a vector searched in order while small, with a hash index of positions once it grows.
//!
//! The writer keeps three maps per account (pool ids, ledgers, burn-window cursors) and most
//! accounts have one to three pools. A hash map's smallest table has four buckets plus sixteen
//! control bytes, so for two pools those three maps took about 830 bytes of heap, most of it
//! empty (heap profile at 1,000 accounts). A vector grown one entry at a time holds exactly
//! what it needs; the index ([`hashbrown::HashTable`] of positions, as `indexmap` builds) is
//! added only past [`LINEAR`] entries, so an account with 10,000 keys still finds each in
//! constant time.

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hash};

/// Up to this many entries a lookup compares keys in order, which for so few is as fast as
/// hashing one; past it the map keeps a hash index.
pub const LINEAR: usize = 16;

pub struct SmallMap<K, V> {
    entries: Vec<(K, V)>,
    /// Positions in `entries`, once there are more than [`LINEAR`]. Boxed: a small map pays one
    /// pointer for it.
    index: Option<Box<Index>>,
}

struct Index {
    table: HashTable<u32>,
    hasher: RandomState,
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap {
            entries: Vec::new(),
            index: None,
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for SmallMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Eq + Hash, V> SmallMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            None => self.entries.iter().position(|(k, _)| k == key),
            Some(ix) => ix
                .table
                .find(ix.hasher.hash_one(key), |&i| {
                    self.entries[i as usize].0 == *key
                })
                .map(|&i| i as usize),
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.position(key).map(|i| &mut self.entries[i].1)
    }

    /// Sets `key` to `value`; the value it replaces, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.position(&key) {
            Some(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            None => {
                self.push(key, value);
                None
            }
        }
    }

    /// The value of `key`, inserted from `make` first when absent.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.position(&key) {
            Some(i) => i,
            None => self.push(key, make()),
        };
        &mut self.entries[i].1
    }

    /// Appends an entry whose key is absent; its position.
    fn push(&mut self, key: K, value: V) -> usize {
        // Exactly sized while small (most maps never grow past a few entries); doubling past
        // that, so a large map is not copied on every insert.
        if self.entries.len() < LINEAR {
            self.entries.reserve_exact(1);
        } else {
            self.entries.reserve(1);
        }
        let i = self.entries.len();
        match &mut self.index {
            Some(ix) => {
                let entries = &self.entries;
                let hasher = &ix.hasher;
                ix.table
                    .insert_unique(hasher.hash_one(&key), i as u32, |&j| {
                        hasher.hash_one(&entries[j as usize].0)
                    });
                self.entries.push((key, value));
            }
            None => {
                self.entries.push((key, value));
                if self.entries.len() > LINEAR {
                    self.build_index();
                }
            }
        }
        i
    }

    fn build_index(&mut self) {
        let hasher = RandomState::default();
        let mut table = HashTable::with_capacity(self.entries.len());
        for (i, (k, _)) in self.entries.iter().enumerate() {
            let entries = &self.entries;
            table.insert_unique(hasher.hash_one(k), i as u32, |&j| {
                hasher.hash_one(&entries[j as usize].0)
            });
        }
        self.index = Some(Box::new(Index { table, hasher }));
    }

    /// Removes `key`; its value, if it was there. The last entry takes its place.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.position(key)?;
        let last = self.entries.len() - 1;
        if let Some(ix) = &mut self.index {
            let h = ix.hasher.hash_one(key);
            if let Ok(found) = ix.table.find_entry(h, |&j| j as usize == i) {
                found.remove();
            }
            if i != last {
                let moved = ix.hasher.hash_one(&self.entries[last].0);
                if let Some(slot) = ix.table.find_mut(moved, |&j| j as usize == last) {
                    *slot = i as u32;
                }
            }
        }
        let (_, value) = self.entries.swap_remove(i);
        if self.entries.len() <= LINEAR / 2 {
            self.index = None;
        }
        Some(value)
    }

    /// Empties the map and gives its memory back: a map is cleared when what it held no longer
    /// mirrors the store, and it is filled again only when the account is next polled.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        GetOrInsert(u16, u32),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Keys from a range a little past twice LINEAR, so maps cross the index threshold both
        // ways; clears are rare so they do.
        let key = 0u16..40;
        prop_oneof![
            6 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => key.clone().prop_map(Op::Remove),
            3 => (key, any::<u32>()).prop_map(|(k, v)| Op::GetOrInsert(k, v)),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Whatever the sequence of changes, the map answers as a `HashMap` does.
        #[test]
        fn behaves_as_a_hash_map(ops in proptest::collection::vec(op(), 0..300)) {
            let mut small = SmallMap::new();
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(small.insert(k, v), model.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(small.remove(&k), model.remove(&k)),
                    Op::GetOrInsert(k, v) => prop_assert_eq!(
                        *small.get_or_insert_with(k, || v),
                        *model.entry(k).or_insert(v)
                    ),
                    Op::Clear => {
                        small.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(small.len(), model.len());
                // Indexed past LINEAR entries, and not once down to half of that.
                if small.len() > LINEAR {
                    prop_assert!(small.index.is_some());
                }
                if small.len() <= LINEAR / 2 {
                    prop_assert!(small.index.is_none());
                }
                for k in 0u16..40 {
                    prop_assert_eq!(small.get(&k), model.get(&k), "key {}", k);
                }
                let mut keys: Vec<_> = small.keys().copied().collect();
                keys.sort();
                let mut want: Vec<_> = model.keys().copied().collect();
                want.sort();
                prop_assert_eq!(keys, want);
            }
        }
    }

    /// A small map holds exactly its entries; a large one is indexed.
    #[test]
    fn small_maps_are_exactly_sized_and_large_ones_indexed() {
        let mut m = SmallMap::new();
        for k in 0..3u64 {
            m.insert(k, k * 10);
        }
        assert_eq!(m.entries.capacity(), 3);
        assert!(m.index.is_none());
        for k in 3..10_000u64 {
            m.insert(k, k * 10);
        }
        assert!(m.index.is_some());
        assert_eq!(m.get(&9_999), Some(&99_990));
        assert_eq!(m.remove(&0), Some(0));
        // The last entry moved into the removed one's place, and the index followed it.
        assert_eq!(m.get(&9_999), Some(&99_990));
        assert_eq!(m.len(), 9_999);
        m.clear();
        assert_eq!(m.entries.capacity(), 0);
        assert!(m.index.is_none());
    }
}
