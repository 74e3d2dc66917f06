//! Login throttling: failed guesses counted per user name and per client address; after N
//! failures within a window the user is locked out (or the address throttled) for a while.
//!
//! Sans-IO: time is passed in. The broker asks [`LoginThrottle::admit`] *before* any
//! password is checked, so an attempt during a lock-out costs no hash, and reports each
//! outcome afterwards. Both tables are bounded (`max_tracked`); see [`LoginThrottle`].

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::farm::LoginPolicy;

/// Whether a login attempt may go on to the password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check the password.
    Allowed,
    /// Too many failures from this address; refuse until `until`.
    AddressThrottled {
        /// When the throttle ends.
        until: Instant,
    },
    /// Too many failures for this user; refuse until `until`.
    UserLocked {
        /// When the lock-out ends.
        until: Instant,
    },
}

/// What a recorded failure changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureEffect {
    /// This failure started a lock-out of the user.
    pub user_locked: bool,
    /// This failure started a throttle of the address.
    pub address_throttled: bool,
}

/// The client address as throttling counts it: an IPv4 address, or the /64 of an IPv6
/// address (one customer link usually holds a whole /64, and hopping inside it is free).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The key for `addr`; IPv4-mapped IPv6 counts as the IPv4 address.
    pub fn of(addr: IpAddr) -> Self {
        match addr.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(bits.into()))
            }
        }
    }
}

/// Failure counters for users and addresses.
///
/// Memory: each table holds at most `max_tracked` entries. When one is full, entries whose
/// window and lock-out are over are dropped; if it is still full, the unlocked entry with the
/// fewest failures is evicted, and if every entry is locked the new key is not tracked (its
/// attempt is still checked, and existing lock-outs stay).
#[derive(Debug)]
pub struct LoginThrottle {
    policy: LoginPolicy,
    users: HashMap<String, Counter>,
    addresses: HashMap<AddressKey, Counter>,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

impl LoginThrottle {
    /// An empty throttle under `policy` (the farm file's `[login]`).
    pub fn new(policy: LoginPolicy) -> Self {
        Self {
            policy,
            users: HashMap::new(),
            addresses: HashMap::new(),
        }
    }

    /// Applies a new `[login]` policy (farm reload) keeping the counts and lock-outs so far:
    /// reloading must not be a way to clear a lock-out.
    pub fn set_policy(&mut self, policy: LoginPolicy) {
        self.policy = policy;
    }

    /// Decides whether an attempt for `user` from `addr` may check its password. The address
    /// is checked first: a throttled address learns nothing about the user.
    pub fn admit(&self, user: &str, addr: IpAddr, now: Instant) -> Admission {
        if let Some(until) = locked(self.addresses.get(&AddressKey::of(addr)), now) {
            return Admission::AddressThrottled { until };
        }
        if let Some(until) = locked(self.users.get(user), now) {
            return Admission::UserLocked { until };
        }
        Admission::Allowed
    }

    /// Counts a failed guess (wrong password or unknown user) against both.
    pub fn record_failure(&mut self, user: &str, addr: IpAddr, now: Instant) -> FailureEffect {
        let p = &self.policy;
        let (window, lockout, max_tracked) = (p.failure_window, p.lockout, p.max_tracked);
        let user_locked = bump(
            &mut self.users,
            user.to_string(),
            p.user_max_failures,
            window,
            lockout,
            max_tracked,
            now,
        );
        let address_throttled = bump(
            &mut self.addresses,
            AddressKey::of(addr),
            p.address_max_failures,
            window,
            lockout,
            max_tracked,
            now,
        );
        FailureEffect {
            user_locked,
            address_throttled,
        }
    }

    /// A successful login clears the user's count. The address keeps its count: a valid
    /// account must not let an address reset its own throttle between guesses.
    pub fn record_success(&mut self, user: &str) {
        self.users.remove(user);
    }

    /// Drops entries whose window and lock-out are over; the broker's timer calls it.
    pub fn purge(&mut self, now: Instant) {
        let window = self.policy.failure_window;
        self.users.retain(|_, c| live(c, window, now));
        self.addresses.retain(|_, c| live(c, window, now));
    }

    /// Users and addresses tracked (for metrics).
    pub fn tracked(&self) -> (usize, usize) {
        (self.users.len(), self.addresses.len())
    }
}

fn locked(counter: Option<&Counter>, now: Instant) -> Option<Instant> {
    counter.and_then(|c| c.locked_until).filter(|&until| now < until)
}

fn live(c: &Counter, window: Duration, now: Instant) -> bool {
    match c.locked_until {
        Some(until) => now < until,
        None => now.saturating_duration_since(c.window_start) < window,
    }
}

/// Adds one failure to `key`'s counter; returns whether this failure started a lock-out.
fn bump<K: Eq + Hash + Clone>(
    table: &mut HashMap<K, Counter>,
    key: K,
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    max_tracked: usize,
    now: Instant,
) -> bool {
    if !table.contains_key(&key) && !make_room(table, window, max_tracked, now) {
        return false;
    }
    let counter = table.entry(key).or_insert(Counter {
        failures: 0,
        window_start: now,
        locked_until: None,
    });
    if let Some(until) = counter.locked_until {
        if now < until {
            // Failures during a lock-out do not happen (admit refuses first) but must not
            // extend it either, or a stranger could keep a user locked forever for free.
            return false;
        }
        *counter = Counter {
            failures: 0,
            window_start: now,
            locked_until: None,
        };
    }
    if now.saturating_duration_since(counter.window_start) >= window {
        counter.failures = 0;
        counter.window_start = now;
    }
    counter.failures = counter.failures.saturating_add(1);
    if counter.failures >= max_failures {
        counter.locked_until = Some(now + lockout);
        return true;
    }
    false
}

/// Makes room for one more entry; false if every entry is locked.
fn make_room<K: Eq + Hash + Clone>(
    table: &mut HashMap<K, Counter>,
    window: Duration,
    max: usize,
    now: Instant,
) -> bool {
    if table.len() < max {
        return true;
    }
    table.retain(|_, c| live(c, window, now));
    if table.len() < max {
        return true;
    }
    let victim = table
        .iter()
        .filter(|(_, c)| locked(Some(c), now).is_none())
        .min_by_key(|(_, c)| c.failures)
        .map(|(k, _)| k.clone());
    match victim {
        Some(key) => {
            table.remove(&key);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn policy() -> LoginPolicy {
        LoginPolicy {
            user_max_failures: 3,
            address_max_failures: 5,
            failure_window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            max_tracked: 100,
            ..LoginPolicy::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, last))
    }

    #[test]
    fn user_locked_after_n_failures_until_lockout_ends() {
        let mut t = LoginThrottle::new(policy());
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(t.admit("alice", ip(1), t0), Admission::Allowed);
            let effect = t.record_failure("alice", ip(i + 1), t0);
            assert_eq!(effect.user_locked, i == 2);
        }
        let until = t0 + Duration::from_secs(300);
        // Locked from any address.
        assert_eq!(t.admit("alice", ip(9), t0), Admission::UserLocked { until });
        assert_eq!(t.admit("bob", ip(9), t0), Admission::Allowed);
        assert_eq!(
            t.admit("alice", ip(9), until - Duration::from_millis(1)),
            Admission::UserLocked { until }
        );
        assert_eq!(t.admit("alice", ip(9), until), Admission::Allowed);
        // After the lock-out the count starts over.
        assert!(!t.record_failure("alice", ip(1), until).user_locked);
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut t = LoginThrottle::new(policy());
        let t0 = Instant::now();
        t.record_failure("alice", ip(1), t0);
        t.record_failure("alice", ip(1), t0 + Duration::from_secs(30));
        let later = t0 + Duration::from_secs(61);
        assert!(!t.record_failure("alice", ip(1), later).user_locked);
        assert_eq!(t.admit("alice", ip(1), later), Admission::Allowed);
    }

    #[test]
    fn success_clears_the_user_but_not_the_address() {
        let mut t = LoginThrottle::new(policy());
        let t0 = Instant::now();
        for _ in 0..2 {
            t.record_failure("alice", ip(1), t0);
        }
        t.record_success("alice");
        assert!(!t.record_failure("alice", ip(1), t0).user_locked);
        // Address: 3 failures so far; 2 more throttle it, whatever the user names.
        t.record_failure("bob", ip(1), t0);
        assert!(t.record_failure("carol", ip(1), t0).address_throttled);
        let until = t0 + Duration::from_secs(300);
        assert_eq!(t.admit("dave", ip(1), t0), Admission::AddressThrottled { until });
        assert_eq!(t.admit("dave", ip(2), t0), Admission::Allowed);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddressKey::of(a), AddressKey::of(b));
        assert_ne!(AddressKey::of(a), AddressKey::of(c));
        let mapped: IpAddr = "::ffff:203.0.113.1".parse().unwrap();
        assert_eq!(AddressKey::of(mapped), AddressKey::of(ip(1)));
    }

    #[test]
    fn tables_stay_bounded_and_keep_lockouts() {
        let mut t = LoginThrottle::new(LoginPolicy {
            max_tracked: 4,
            ..policy()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            t.record_failure("alice", ip(1), t0);
        }
        for i in 0..50u8 {
            t.record_failure(&format!("user{i}"), ip(10 + i), t0);
        }
        let (users, addrs) = t.tracked();
        assert!(users <= 4 && addrs <= 4, "{users} {addrs}");
        assert!(matches!(
            t.admit("alice", ip(200), t0),
            Admission::UserLocked { .. }
        ));
        t.purge(t0 + Duration::from_secs(301));
        assert_eq!(t.tracked(), (0, 0));
    }
}
