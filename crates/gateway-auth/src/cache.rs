//! A bounded TTL cache of accepted `(member, token)` pairs, around any authenticator.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use gateway_core::MemberId;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::{AuthError, Authenticator, Credentials, Decision, Grant, async_trait};

/// The member and a digest of the token: the cache never holds a token itself.
type Key = (MemberId, [u8; 32]);

#[derive(Default)]
struct State {
    entries: HashMap<Key, (Instant, Grant)>,
    /// Insertion order; with one TTL for all entries it is also expiry order.
    order: VecDeque<(Key, Instant)>,
}

/// Remembers accepted pairs for `ttl`, so a reconnect storm asks the inner authenticator once
/// per pair. Refusals and errors are not cached: a fixed token works at once, and a backend
/// that recovers is asked again. At most `max_entries` pairs are kept; when full, expired
/// entries go first, then the oldest.
pub struct Cached<A> {
    inner: A,
    ttl: Duration,
    max_entries: usize,
    state: Mutex<State>,
}

impl<A: fmt::Debug> fmt::Debug for Cached<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("inner", &self.inner)
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

fn key(creds: &Credentials<'_>) -> Key {
    (creds.member, Sha256::digest(creds.token.as_bytes()).into())
}

impl<A> Cached<A> {
    pub fn new(inner: A, ttl: Duration, max_entries: usize) -> Self {
        Cached {
            inner,
            ttl,
            max_entries: max_entries.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// The number of pairs held (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup(&self, key: &Key, now: Instant) -> Option<Grant> {
        let state = self.lock();
        match state.entries.get(key) {
            Some((expires, grant)) if *expires > now => Some(grant.clone()),
            _ => None,
        }
    }

    fn insert(&self, key: Key, grant: Grant, now: Instant) {
        let expires = now + self.ttl;
        let mut state = self.lock();
        let State { entries, order } = &mut *state;
        // Drop expired entries from the front, then the oldest while still full.
        while let Some(&(old, at)) = order.front() {
            let expired = at <= now;
            if !expired && entries.len() < self.max_entries {
                break;
            }
            order.pop_front();
            // Only if it is still that insertion (a key re-inserted later keeps its entry).
            if entries.get(&old).is_some_and(|(e, _)| *e == at) {
                entries.remove(&old);
            }
        }
        entries.insert(key, (expires, grant));
        order.push_back((key, expires));
    }
}

#[async_trait]
impl<A: Authenticator> Authenticator for Cached<A> {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        let key = key(&creds);
        if let Some(grant) = self.lookup(&key, Instant::now()) {
            return Ok(Decision::Accept(grant));
        }
        let decision = self.inner.authenticate(creds).await?;
        if let Decision::Accept(grant) = &decision {
            self.insert(key, grant.clone(), Instant::now());
        }
        Ok(decision)
    }

    fn describe(&self) -> String {
        format!(
            "{}, cached for {} s (at most {} pairs)",
            self.inner.describe(),
            self.ttl.as_secs(),
            self.max_entries
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Accepts tokens equal to "ok", counting calls.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    #[async_trait]
    impl Authenticator for Counting {
        async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(if creds.token == "ok" {
                Decision::accept()
            } else {
                Decision::Refuse
            })
        }
    }

    async fn ask(cache: &Cached<Counting>, member: i64, token: &str) -> Decision {
        cache
            .authenticate(Credentials::new(MemberId::new(member).unwrap(), token))
            .await
            .unwrap()
    }

    fn calls(cache: &Cached<Counting>) -> usize {
        cache.inner.0.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn accepted_pairs_are_served_from_the_cache_until_the_ttl() {
        let cache = Cached::new(Counting::default(), Duration::from_secs(60), 100);
        assert_eq!(ask(&cache, 1, "ok").await, Decision::accept());
        assert_eq!(ask(&cache, 1, "ok").await, Decision::accept());
        assert_eq!(calls(&cache), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(ask(&cache, 1, "ok").await, Decision::accept());
        assert_eq!(calls(&cache), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_not_cached_and_pairs_are_exact() {
        let cache = Cached::new(Counting::default(), Duration::from_secs(60), 100);
        assert_eq!(ask(&cache, 1, "bad").await, Decision::Refuse);
        assert_eq!(ask(&cache, 1, "bad").await, Decision::Refuse);
        assert_eq!(calls(&cache), 2);
        ask(&cache, 1, "ok").await;
        // Another member with the same token is a different pair.
        ask(&cache, 2, "ok").await;
        assert_eq!(calls(&cache), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded() {
        let cache = Cached::new(Counting::default(), Duration::from_secs(60), 3);
        for member in 1..=10 {
            ask(&cache, member, "ok").await;
            assert!(cache.len() <= 3);
        }
        // The newest three are cached; the oldest were evicted.
        let before = calls(&cache);
        ask(&cache, 10, "ok").await;
        assert_eq!(calls(&cache), before);
        ask(&cache, 1, "ok").await;
        assert_eq!(calls(&cache), before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_evicted_first() {
        let cache = Cached::new(Counting::default(), Duration::from_secs(10), 1000);
        for member in 1..=5 {
            ask(&cache, member, "ok").await;
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        ask(&cache, 6, "ok").await;
        assert_eq!(cache.len(), 1);
    }
}
