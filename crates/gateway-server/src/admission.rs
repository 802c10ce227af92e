//! Who gets a socket: the bounds that keep a flood of half-open or slow connections from
//! locking everyone else out.
//!
//! - [`Handshakes`]: connections that have not finished their request head (or TLS handshake)
//!   yet. A well-behaved client finishes in a round trip; a slowloris peer takes as long as the
//!   deadline lets it. When the pool is full, the *oldest* is closed to make room, so a flood of
//!   slow peers cannot keep a fast one out. A connection younger than `timeouts.evict_after_ms`
//!   is never closed for room: while the pool is full of young ones, accepting pauses and new
//!   connections wait in the kernel's backlog (a burst of real clients is slowed, not cut).
//! - [`PushBodies`]: the bytes of push bodies being received, bounded in total; the same rule
//!   makes room, so backends that stall in their bodies cannot starve the others.
//! - [`PerAddress`]: an optional bound on the sockets one IP address holds (off by default:
//!   users behind a NAT share an address).
//! - [`fit_to_open_file_limit`]: lowers `max_connections` and `max_handshakes` so that, whatever
//!   clients do, `limits.fd_reserve` descriptors stay free for `/push`, `/stat` and the auth
//!   backend.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Limits;
use crate::counters::Counters;

/// The connections of one listener that are still in their handshake.
#[derive(Debug)]
pub(crate) struct Handshakes {
    max: usize,
    /// `timeouts.evict_after`: how long a connection may take over its head before it can be
    /// closed to make room; a real client's head follows within a round trip or two.
    min_age: Duration,
    state: Mutex<Pool>,
    counters: Arc<Counters>,
    /// Wakes the accept loop waiting in [`Handshakes::room`] when a place frees.
    freed: Notify,
}

#[derive(Debug, Default)]
struct Pool {
    next: u64,
    /// By arrival: the first entry is the oldest.
    waiting: BTreeMap<u64, (Instant, CancellationToken)>,
}

/// A place in [`Handshakes`], released on drop. `evicted` is cancelled when the pool needed
/// the place for a newer connection.
#[derive(Debug)]
pub(crate) struct Ticket {
    pool: Arc<Handshakes>,
    id: u64,
    pub(crate) evicted: CancellationToken,
}

impl Handshakes {
    pub(crate) fn new(max: usize, min_age: Duration, counters: Arc<Counters>) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            max: max.max(1),
            min_age,
            state: Mutex::new(Pool::default()),
            counters,
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        // Every statement leaves the pool consistent; a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves once [`Handshakes::enter`] has a place to give: a free one, or that of a
    /// connection in its handshake for at least `min_age`. Called by the accept
    /// loop before it accepts.
    pub(crate) async fn room(&self) {
        loop {
            let oldest_since = {
                let pool = self.lock();
                match pool.waiting.first_key_value() {
                    Some((_, (since, _))) if pool.waiting.len() >= self.max => *since,
                    _ => return,
                }
            };
            let evictable_at = oldest_since + self.min_age;
            if Instant::now() >= evictable_at {
                return;
            }
            // `notify_one` keeps a permit, so a place freed since the check is not missed.
            tokio::select! {
                () = self.freed.notified() => {}
                () = tokio::time::sleep_until(evictable_at) => {}
            }
        }
    }

    /// Takes a place for a new connection, closing the oldest one in its handshake if the
    /// pool is full (see [`Handshakes::room`]).
    pub(crate) fn enter(self: &Arc<Self>) -> Ticket {
        let evicted = CancellationToken::new();
        let now = Instant::now();
        let mut pool = self.lock();
        let id = pool.next;
        pool.next += 1;
        if pool.waiting.len() >= self.max
            && let Some((_, (_, oldest))) = pool.waiting.pop_first()
        {
            oldest.cancel();
            self.counters.handshake_evicted();
        }
        pool.waiting.insert(id, (now, evicted.clone()));
        drop(pool);
        self.counters.handshake_started();
        Ticket {
            pool: self.clone(),
            id,
            evicted,
        }
    }

    /// Connections now in their handshake.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().waiting.len()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pool.lock().waiting.remove(&self.id);
        self.pool.counters.handshake_ended();
        self.pool.freed.notify_one();
    }
}

/// Sockets per IP address on the main listener, when `limits.max_connections_per_ip` is set.
#[derive(Debug)]
pub(crate) struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One socket's share of its address's count, released on drop.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// `None` when the limit is off (`0`).
    pub(crate) fn new(max: usize) -> Option<Arc<PerAddress>> {
        (max > 0).then(|| {
            Arc::new(PerAddress {
                max,
                open: Mutex::new(HashMap::new()),
            })
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more socket from `ip`, or `None` if it already holds the maximum.
    /// IPv6 addresses count per /64: one host usually has a whole /64 to pick from.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        };
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.owner.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
        // A map that held a flood of addresses gives its memory back once they are gone.
        if open.capacity() > 1024 && open.len() < open.capacity() / 8 {
            open.shrink_to_fit();
        }
    }
}

/// The bytes of push bodies being received at once (`limits.max_buffered_push_bytes`).
/// Without a bound, senders that each stop just short of `max_push_body_bytes` would hold that
/// much each; with a plain bound, they would starve every other push until their deadline.
/// So when a body needs room, the oldest bodies still arriving after `min_age` are evicted
/// (their pushes answered `408`): stalled senders give way to live ones.
#[derive(Debug)]
pub(crate) struct PushBodies {
    max: usize,
    min_age: Duration,
    state: Mutex<Receiving>,
}

#[derive(Debug, Default)]
struct Receiving {
    used: usize,
    next: u64,
    /// By arrival: the first entry is the oldest. (since, bytes held, evicted)
    bodies: BTreeMap<u64, (Instant, usize, CancellationToken)>,
}

/// One push body's share of [`PushBodies`], given back on drop.
#[derive(Debug)]
pub(crate) struct BodyCharge {
    owner: Arc<PushBodies>,
    id: u64,
    /// Cancelled when this body's bytes were taken back for newer pushes.
    pub(crate) evicted: CancellationToken,
}

impl PushBodies {
    pub(crate) fn new(max: usize, min_age: Duration) -> Arc<PushBodies> {
        Arc::new(PushBodies {
            max,
            min_age,
            state: Mutex::new(Receiving::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Receiving> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts counting the bytes of one body.
    pub(crate) fn start(self: &Arc<Self>) -> BodyCharge {
        let evicted = CancellationToken::new();
        let now = Instant::now();
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        state.bodies.insert(id, (now, 0, evicted.clone()));
        drop(state);
        BodyCharge {
            owner: self.clone(),
            id,
            evicted,
        }
    }
}

impl BodyCharge {
    /// Charges `bytes` more, evicting the oldest bodies that have been arriving for at least
    /// `min_age` if that is what it takes. `false` (nothing charged) if there is no room.
    pub(crate) fn add(&mut self, bytes: usize) -> bool {
        let owner = &self.owner;
        let now = Instant::now();
        let mut state = owner.lock();
        while state.used + bytes > owner.max {
            let oldest = state
                .bodies
                .iter()
                .find(|(id, _)| **id != self.id)
                .filter(|(_, (since, _, _))| now.saturating_duration_since(*since) >= owner.min_age)
                .map(|(id, _)| *id);
            let Some(oldest) = oldest else {
                return false;
            };
            if let Some((_, held, evicted)) = state.bodies.remove(&oldest) {
                state.used -= held;
                evicted.cancel();
            }
        }
        let Some((_, held, _)) = state.bodies.get_mut(&self.id) else {
            return false; // evicted meanwhile
        };
        *held += bytes;
        state.used += bytes;
        true
    }
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        let mut state = self.owner.lock();
        if let Some((_, held, _)) = state.bodies.remove(&self.id) {
            state.used -= held;
        }
    }
}

/// What [`fit_to_open_file_limit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdBudget {
    pub(crate) max_connections: usize,
    pub(crate) max_handshakes: usize,
}

/// Fits WebSocket connections and handshakes (of both listeners) under `open_file_limit`, with
/// `limits.fd_reserve` descriptors (and those already `in_use`) left over. A limit that fits
/// is kept as configured.
pub(crate) fn fit(limits: &Limits, open_file_limit: u64, in_use: u64) -> FdBudget {
    let configured = FdBudget {
        max_connections: limits.max_connections,
        max_handshakes: limits.max_handshakes,
    };
    let limit = usize::try_from(open_file_limit).unwrap_or(usize::MAX);
    let in_use = usize::try_from(in_use).unwrap_or(usize::MAX);
    // A tiny limit keeps at most a quarter of itself in reserve.
    let reserve = limits.fd_reserve.min(limit / 4);
    let available = limit.saturating_sub(in_use).saturating_sub(reserve);
    let wanted = limits
        .max_connections
        .saturating_add(limits.max_handshakes.saturating_mul(2));
    if wanted <= available {
        return configured;
    }
    // Handshakes (two listeners' pools) get at most a quarter of what is available; the rest
    // goes to connections.
    let max_handshakes = limits.max_handshakes.min(available / 8).max(1);
    let max_connections = available.saturating_sub(2 * max_handshakes).max(1);
    FdBudget {
        max_connections: max_connections.min(limits.max_connections),
        max_handshakes,
    }
}

/// Reads this process's open-file limit and applies [`fit`] to `limits`, logging what changed.
pub(crate) fn fit_to_open_file_limit(limits: &mut Limits) {
    let Some(soft) = open_file_limit() else {
        return;
    };
    let budget = fit(limits, soft, open_files().unwrap_or(32));
    if budget.max_connections != limits.max_connections
        || budget.max_handshakes != limits.max_handshakes
    {
        warn!(
            open_file_limit = soft,
            fd_reserve = limits.fd_reserve,
            "the open-file limit is too low for limits.max_connections = {} and \
             limits.max_handshakes = {}; using {} and {} so that /push and /stat keep working \
             (raise `ulimit -n` to serve more)",
            limits.max_connections,
            limits.max_handshakes,
            budget.max_connections,
            budget.max_handshakes,
        );
        limits.max_connections = budget.max_connections;
        limits.max_handshakes = budget.max_handshakes;
    }
}

/// The soft open-file limit of this process, where the platform has one.
pub(crate) fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Descriptors open in this process now (Linux), for the budget's starting point.
fn open_files() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count() as u64)
}

/// Raises this process's soft open-file limit to its hard limit, as servers do: the common
/// default of 1024 would stop the gateway near a thousand clients. Logs the outcome.
pub(crate) fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let before = open_file_limit();
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(now) => info!(
                "open files: soft limit {} (was {}; the hard limit bounds it)",
                now,
                before.map_or_else(|| "unknown".to_owned(), |b| b.to_string())
            ),
            Err(err) => warn!(%err, "open files: cannot raise the soft limit"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_pool_waits_until_its_oldest_may_give_way() {
        const AGE: Duration = Duration::from_millis(500);
        let pool = Handshakes::new(1, AGE, Arc::new(Counters::default()));
        pool.room().await; // empty: at once
        let first = pool.enter();
        let started = Instant::now();
        pool.room().await; // full of a young one: waits until it may be evicted
        assert_eq!(started.elapsed(), AGE);
        let second = pool.enter();
        assert!(first.evicted.is_cancelled());
        // A place freed wakes the waiter at once.
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.room().await }
        });
        tokio::task::yield_now().await;
        drop(second);
        drop(first);
        waiting.await.unwrap();
        assert!(started.elapsed() < AGE * 2);
    }

    #[test]
    fn the_oldest_handshake_makes_room_for_a_new_one() {
        let counters = Arc::new(Counters::default());
        let pool = Handshakes::new(2, Duration::ZERO, counters.clone());
        let first = pool.enter();
        let second = pool.enter();
        assert!(!first.evicted.is_cancelled() && !second.evicted.is_cancelled());
        let third = pool.enter();
        assert!(first.evicted.is_cancelled(), "the oldest gave way");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert_eq!((pool.len(), counters.handshakes_evicted()), (2, 1));
        // The evicted one's socket stays open until its task drops the ticket.
        assert_eq!(counters.open_handshakes(), 3);
        drop(second);
        let _fourth = pool.enter();
        assert!(!third.evicted.is_cancelled(), "a place was free");
        drop(first);
        assert_eq!(pool.len(), 2);
        assert_eq!(counters.open_handshakes(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_bodies_give_way_once_they_are_old_enough() {
        let bodies = PushBodies::new(100, Duration::from_millis(500));
        let mut stalled = bodies.start();
        assert!(stalled.add(90));
        let mut fresh = bodies.start();
        assert!(fresh.add(10));
        // No room, and the stalled body is still young: refused, nothing evicted.
        let mut live = bodies.start();
        assert!(!live.add(20));
        assert!(!stalled.evicted.is_cancelled());
        tokio::time::advance(Duration::from_millis(500)).await;
        // Now the oldest gives way (only as many as needed: the fresh one stays).
        assert!(live.add(20));
        assert!(stalled.evicted.is_cancelled() && !fresh.evicted.is_cancelled());
        assert!(!stalled.add(1), "an evicted body holds nothing more");
        drop(stalled);
        drop(fresh);
        drop(live);
        let mut all = bodies.start();
        assert!(all.add(100), "every byte was given back");
    }

    #[test]
    fn an_address_holds_at_most_its_share() {
        let per = PerAddress::new(2).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let one = per.take(a).unwrap();
        let _two = per.take(mapped).expect("the same address, counted once");
        assert!(per.take(a).is_none());
        assert!(per.take("10.0.0.2".parse().unwrap()).is_some());
        let host: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let _three = per.take(host).unwrap();
        let _four = per.take("2001:db8:1:2:ffff::9".parse().unwrap()).unwrap();
        assert!(per.take(host).is_none(), "one /64 is one address");
        assert!(per.take("2001:db8:1:3::1".parse().unwrap()).is_some());
        drop(one);
        assert!(per.take(a).is_some());
        assert!(PerAddress::new(0).is_none());
    }

    #[test]
    fn limits_that_fit_are_kept_and_others_leave_the_reserve() {
        let limits = Limits::default(); // 10000 connections, 1024 handshakes, 128 reserve
        let kept = fit(&limits, 20_000, 20);
        assert_eq!((kept.max_connections, kept.max_handshakes), (10_000, 1024));

        let low = fit(&limits, 4096, 20);
        assert_eq!(low.max_handshakes, (4096 - 20 - 128) / 8);
        assert_eq!(
            low.max_connections + 2 * low.max_handshakes + 128 + 20,
            4096
        );

        let tiny = fit(&limits, 256, 20);
        // 64 in reserve (a quarter), 172 available: 21 per handshake pool, 130 connections.
        assert_eq!((tiny.max_connections, tiny.max_handshakes), (130, 21));
    }
}
