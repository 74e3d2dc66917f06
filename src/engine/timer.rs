//! A hashed timer wheel for one worker.
//!
//! Owns deadlines for sessions (handshake, connect, idle) and for the worker itself (accept
//! back-off). Entries are never cancelled: an entry that fires carries the session's serial,
//! and the session decides whether the deadline still holds (idle timers re-arm from the last
//! activity), so a busy tunnel costs nothing per byte. Resolution is one tick (10 ms).

use std::time::{Duration, Instant};

/// Resolution of the wheel.
pub const TICK: Duration = Duration::from_millis(10);
const SLOTS: usize = 1024;

/// What a timer entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerEntry {
    /// The tick at which it fires.
    pub tick: u64,
    /// Slab key of the session (or a worker-reserved key).
    pub key: usize,
    /// The session's serial, so an entry for a recycled slab slot is ignored.
    pub serial: u64,
}

/// The wheel.
pub struct TimerWheel {
    origin: Instant,
    slots: Vec<Vec<TimerEntry>>,
    /// Earliest tick held by each slot (`u64::MAX` when empty): a slot may hold entries of
    /// later turns of the wheel, which must not count as due this turn.
    slot_min: Vec<u64>,
    /// Earliest tick of all entries (`u64::MAX` when empty); the poll timeout comes from it.
    next: u64,
    current: u64,
    len: usize,
}

impl TimerWheel {
    /// A wheel whose tick 0 is `origin`.
    pub fn new(origin: Instant) -> Self {
        TimerWheel {
            origin,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            slot_min: vec![u64::MAX; SLOTS],
            next: u64::MAX,
            current: 0,
            len: 0,
        }
    }

    /// The tick a deadline falls in (rounded up, so a timer never fires early).
    pub fn tick_of(&self, deadline: Instant) -> u64 {
        let d = deadline.saturating_duration_since(self.origin);
        d.as_nanos().div_ceil(TICK.as_nanos()) as u64
    }

    fn at(&self, tick: u64) -> Instant {
        let d = Duration::from_millis(tick.saturating_mul(TICK.as_millis() as u64));
        self.origin
            .checked_add(d)
            .unwrap_or(self.origin + Duration::from_secs(86_400 * 365 * 30))
    }

    /// Schedules an entry; returns its tick.
    pub fn insert(&mut self, deadline: Instant, key: usize, serial: u64) -> u64 {
        let tick = self.tick_of(deadline).max(self.current);
        let slot = (tick as usize) % SLOTS;
        self.slots[slot].push(TimerEntry { tick, key, serial });
        self.slot_min[slot] = self.slot_min[slot].min(tick);
        self.next = self.next.min(tick);
        self.len += 1;
        tick
    }

    /// Entries scheduled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves the wheel to `now`, appending every due entry to `due`.
    pub fn advance(&mut self, now: Instant, due: &mut Vec<TimerEntry>) {
        // `tick_of` rounds up; an entry at tick t is due once now >= origin + t*TICK.
        let mut target = self.tick_of(now);
        if self.at(target) > now {
            target = target.saturating_sub(1);
        }
        if self.next > target {
            self.current = target.max(self.current);
            return;
        }
        let steps = (target.saturating_sub(self.current) as usize + 1).min(SLOTS);
        for i in 0..steps {
            let slot = ((self.current + i as u64) as usize) % SLOTS;
            if self.slot_min[slot] > target {
                continue;
            }
            let entries = &mut self.slots[slot];
            let before = entries.len();
            let mut min = u64::MAX;
            let mut j = 0;
            while j < entries.len() {
                if entries[j].tick <= target {
                    due.push(entries.swap_remove(j));
                } else {
                    min = min.min(entries[j].tick);
                    j += 1;
                }
            }
            self.slot_min[slot] = min;
            self.len -= before - entries.len();
        }
        self.current = target.max(self.current);
        self.next = self.slot_min.iter().copied().min().unwrap_or(u64::MAX);
    }

    /// How long the event loop may sleep before the earliest entry comes due.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.next == u64::MAX {
            return None;
        }
        Some(self.at(self.next).saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_or_after_deadline_never_before() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        w.insert(t0 + Duration::from_millis(25), 1, 7);
        w.insert(t0 + Duration::from_secs(30), 2, 8);
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_millis(20), &mut due);
        assert!(due.is_empty());
        w.advance(t0 + Duration::from_millis(30), &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].key, due[0].serial), (1, 7));
        due.clear();
        // Far entry survives many revolutions of the wheel.
        w.advance(t0 + Duration::from_secs(29), &mut due);
        assert!(due.is_empty());
        w.advance(t0 + Duration::from_secs(31), &mut due);
        assert_eq!(due.len(), 1);
        assert!(w.is_empty());
    }

    #[test]
    fn timeout_points_at_next_entry() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        assert_eq!(w.timeout(t0), None);
        w.insert(t0 + Duration::from_millis(100), 1, 1);
        let t = w.timeout(t0).unwrap();
        assert!(
            t >= Duration::from_millis(90) && t <= Duration::from_millis(110),
            "{t:?}"
        );
    }

    #[test]
    fn far_entries_do_not_make_the_loop_spin() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        // An idle timer hours away shares its slot with the current tick.
        w.insert(t0 + TICK * SLOTS as u32 * 3, 1, 1);
        let t = w.timeout(t0).unwrap();
        assert!(t >= TICK * SLOTS as u32 * 3 - TICK, "{t:?}");
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_millis(5), &mut due);
        assert!(due.is_empty());
        assert!(w.timeout(t0 + Duration::from_millis(5)).unwrap() > Duration::from_secs(30));
    }

    #[test]
    fn late_advance_collects_everything_due() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        for i in 0..100 {
            w.insert(t0 + Duration::from_millis(i * 37), i as usize, 0);
        }
        let mut due = Vec::new();
        w.advance(t0 + Duration::from_secs(60), &mut due);
        assert_eq!(due.len(), 100);
    }
}
