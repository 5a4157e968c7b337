//! [`ClassifierCache`]: analyses remembered by statement text, so a repeated statement costs
//! one hash, one shard lock, one comparison and an `Arc` clone instead of a lexer pass; a
//! statement repeated with other integers (`… WHERE aid = 42`) costs one scan more and a copy
//! of the analysis with its spans moved (see `template.rs`), or for routing the key's own
//! analysis, shared ([`ClassifierCache::analyze_for_routing`]). It
//! holds the lexical analysis only: the router's verdict on functions changes when `pg_proc`
//! is reloaded, so it is never stored here. Owned by the `App`, not a global.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;

use super::template::{is_literal_free, Key, Template};
use super::{analyze, Analysis, OwnedAnalysis};

/// Limits of a [`ClassifierCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most analyses kept, by exact text and by literal-free key each.
    pub max_entries: usize,
    /// Most bytes kept (texts plus analyses, approximately), by exact text and by literal-free
    /// key each.
    pub max_bytes: usize,
    /// Longer texts are analysed every time and never stored: one huge generated statement
    /// must not push out thousands of small ones.
    pub max_text_len: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_entries: 10_000,
            max_bytes: 32 << 20,
            max_text_len: 16 << 10,
        }
    }
}

/// Counters of a [`ClassifierCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that analysed the text.
    pub misses: u64,
    /// Analyses held now.
    pub entries: usize,
    /// Approximate bytes held now.
    pub bytes: usize,
}

/// Number of independently locked parts; a power of two.
pub(super) const SHARDS: usize = 16;

/// A bounded, thread-safe cache of analyses keyed by the statement text.
///
/// The text is hashed with a per-cache random seed; the hash picks one of 16 shards (each
/// behind its own `parking_lot::Mutex`, held only for a map lookup, so contention is low) and
/// a slot in it. A hit is confirmed by comparing the whole text, so a hash collision costs a
/// miss, never a wrong answer, and a flood of colliding texts cannot grow a chain. Eviction is
/// CLOCK (second chance) per shard, by entry count and by bytes. Analysis runs outside the
/// lock.
///
/// A second set of shards holds analyses by literal-free key, for texts that differ only in
/// integer literals: a text that misses by its exact bytes is looked up there before it is
/// analysed, and its analysis is stored there instead when it is one every such text shares
/// (see `template.rs`).
#[derive(Debug)]
pub struct ClassifierCache {
    /// The shards by exact text; a text's hash picks one.
    shards: Box<[Mutex<Shard>]>,
    /// The shards by literal-free key; the key's hash picks one.
    templates: Box<[Mutex<Shard>]>,
    /// Seed of the text hash, random per cache.
    seed: u64,
    /// The limits, as configured.
    limits: CacheLimits,
    /// Hits so far.
    hits: AtomicU64,
    /// Misses so far.
    misses: AtomicU64,
}

/// One part of the cache.
#[derive(Debug, Default)]
struct Shard {
    /// Text hash → index in `slots`.
    index: HashMap<u64, usize, BuildHasherDefault<PrehashedHasher>>,
    /// The entries, in CLOCK order.
    slots: Vec<Slot>,
    /// The CLOCK hand: the next slot considered for eviction.
    hand: usize,
    /// Sum of the slots' footprints.
    bytes: usize,
}

/// One cached analysis.
#[derive(Debug)]
struct Slot {
    /// Hash of the text (the key in `Shard::index`).
    hash: u64,
    /// The analysis, which also holds the text.
    value: Arc<OwnedAnalysis>,
    /// Its footprint, counted in `Shard::bytes`.
    bytes: usize,
    /// Used since the hand last passed (CLOCK's second chance).
    referenced: bool,
}

impl Default for ClassifierCache {
    fn default() -> Self {
        ClassifierCache::new(CacheLimits::default())
    }
}

impl ClassifierCache {
    /// An empty cache with these limits.
    pub fn new(limits: CacheLimits) -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        ClassifierCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            templates: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            seed,
            limits,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The analysis of `sql`, from the cache or freshly made (and then stored, if the text is
    /// not too long).
    pub fn analyze(&self, sql: &[u8]) -> Arc<OwnedAnalysis> {
        self.lookup(sql, true)
    }

    /// The analysis of `sql` for routing: as [`Self::analyze`], except that a text found by
    /// its literal-free key gets the analysis stored for the key itself, shared, instead of a
    /// copy over `sql` (~700 instructions of a `-M simple` query: the copy, its allocation and
    /// freeing it). Only its spans differ (they point into the key, where each integer literal
    /// is one byte): what routing reads, the statements' kinds, the route class, pins, hints
    /// and the functions' names, is the same (no name holds an integer literal). Not for
    /// reading a statement's text.
    pub fn analyze_for_routing(&self, sql: &[u8]) -> Arc<OwnedAnalysis> {
        self.lookup(sql, false)
    }

    /// [`Self::analyze`] (`apply`: a keyed hit is copied over `sql`) or
    /// [`Self::analyze_for_routing`].
    #[inline]
    fn lookup(&self, sql: &[u8], apply: bool) -> Arc<OwnedAnalysis> {
        if sql.len() > self.limits.max_text_len {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Arc::new(analyze(sql).to_owned_analysis());
        }
        let hash = hash_text(self.seed, sql);
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        if let Some(hit) = shard.lock().get(hash, sql) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return hit;
        }
        let template = Template::of(sql);
        let mut key = Key::new();
        let keyed = template.as_ref().map(|t| {
            t.key_into(sql, &mut key);
            let hash = hash_text(self.seed, &key);
            (t, hash, &self.templates[(hash >> 60) as usize % SHARDS])
        });
        if let Some((t, hash, shard)) = keyed {
            let stored = shard.lock().get(hash, &key);
            if let Some(k) = stored {
                if !apply {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return k;
                }
                if let Some(value) = t.applied(&k, sql) {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Arc::new(value);
                }
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let fresh = analyze(sql);
        let per_shard = |total: usize| total.div_ceil(SHARDS).max(1);
        let (entries, bytes) = (
            per_shard(self.limits.max_entries),
            per_shard(self.limits.max_bytes),
        );
        if let Some((t, hash, shard)) = keyed.filter(|_| is_literal_free(&fresh)) {
            if let Some(stored) = t.keyed(&fresh, &key) {
                shard.lock().insert(hash, Arc::new(stored), entries, bytes);
                return Arc::new(fresh.to_owned_analysis());
            }
        }
        let value = Arc::new(fresh.to_owned_analysis());
        shard
            .lock()
            .insert(hash, Arc::clone(&value), entries, bytes);
        value
    }

    /// The cached analysis of `sql`, if there is one (by its exact text or its literal-free
    /// key).
    pub fn get(&self, sql: &[u8]) -> Option<Arc<OwnedAnalysis>> {
        let hash = hash_text(self.seed, sql);
        let exact = self.shards[(hash >> 60) as usize % SHARDS]
            .lock()
            .get(hash, sql);
        exact.or_else(|| {
            let t = Template::of(sql)?;
            let mut key = Key::new();
            t.key_into(sql, &mut key);
            let hash = hash_text(self.seed, &key);
            let keyed = self.templates[(hash >> 60) as usize % SHARDS]
                .lock()
                .get(hash, &key)?;
            t.applied(&keyed, sql).map(Arc::new)
        })
    }

    /// Counters and current size.
    pub fn stats(&self) -> CacheStats {
        let all = self.shards.iter().chain(self.templates.iter());
        let (entries, bytes) = all.fold((0, 0), |(e, b), s| {
            let s = s.lock();
            (e + s.slots.len(), b + s.bytes)
        });
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        for shard in self.shards.iter().chain(self.templates.iter()) {
            *shard.lock() = Shard::default();
        }
    }
}

impl Shard {
    fn get(&mut self, hash: u64, sql: &[u8]) -> Option<Arc<OwnedAnalysis>> {
        let &i = self.index.get(&hash)?;
        let slot = &mut self.slots[i];
        if slot.value.sql() != sql {
            return None; // a hash collision
        }
        slot.referenced = true;
        Some(Arc::clone(&slot.value))
    }

    fn insert(
        &mut self,
        hash: u64,
        value: Arc<OwnedAnalysis>,
        max_entries: usize,
        max_bytes: usize,
    ) {
        let bytes = value.footprint();
        if bytes > max_bytes {
            return;
        }
        if let Some(&i) = self.index.get(&hash) {
            // Another thread stored the same text meanwhile, or a colliding text is there:
            // the newer one wins.
            let slot = &mut self.slots[i];
            self.bytes = self.bytes - slot.bytes + bytes;
            slot.value = value;
            slot.bytes = bytes;
            return;
        }
        while !self.slots.is_empty()
            && (self.slots.len() >= max_entries || self.bytes + bytes > max_bytes)
        {
            let victim = self.clock_victim();
            let removed = self.slots.swap_remove(victim);
            self.index.remove(&removed.hash);
            self.bytes -= removed.bytes;
            if let Some(moved) = self.slots.get(victim) {
                self.index.insert(moved.hash, victim);
            }
        }
        self.index.insert(hash, self.slots.len());
        self.slots.push(Slot {
            hash,
            value,
            bytes,
            referenced: false,
        });
        self.bytes += bytes;
    }

    /// CLOCK: the first slot from the hand that was not used since the hand last passed it,
    /// clearing the marks it passes. Ends within two turns. The shard must not be empty.
    fn clock_victim(&mut self) -> usize {
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let slot = &mut self.slots[self.hand];
            if !slot.referenced {
                return self.hand;
            }
            slot.referenced = false;
            self.hand += 1;
        }
    }
}

impl<S: AsRef<[u8]>> Analysis<S> {
    /// An approximate count of the bytes this analysis holds (for the cache's budget).
    fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.sql().len()
            + heap_bytes(&self.statements)
            + heap_bytes(&self.functions)
    }
}

/// The heap bytes of an inline list: none until it outgrows its inline part.
fn heap_bytes<A: smallvec::Array>(list: &SmallVec<A>) -> usize {
    if list.spilled() {
        list.capacity() * std::mem::size_of::<A::Item>()
    } else {
        0
    }
}

/// A fast keyed hash of the text: four independent multiply-rotate lanes over 32-byte blocks
/// (so the multiplications overlap), then the tail 8 bytes at a time, then murmur3's final
/// avalanche. Not cryptographic; collisions only cost misses (see [`ClassifierCache`]).
pub(super) fn hash_text(seed: u64, text: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let word = |bytes: &[u8]| {
        let mut w = [0u8; 8];
        w[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(w)
    };
    let step = |lane: u64, w: u64| (lane ^ w).wrapping_mul(K).rotate_left(29);
    let mut lanes = [
        seed,
        seed ^ K,
        seed.rotate_left(21),
        seed.rotate_left(42) ^ K,
    ];
    let mut blocks = text.chunks_exact(32);
    for block in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = step(*lane, word(w));
        }
    }
    let mut h = (text.len() as u64).wrapping_mul(K)
        ^ lanes[0]
        ^ lanes[1].rotate_left(17)
        ^ lanes[2].rotate_left(31)
        ^ lanes[3].rotate_left(47);
    for w in blocks.remainder().chunks(8) {
        h = step(h, word(w));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A hasher for keys that already are good hashes.
#[derive(Debug, Default, Clone, Copy)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
