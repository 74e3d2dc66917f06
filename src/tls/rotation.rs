//! The session-ticket key timer: while the node runs, every offloading listener with a
//! `ticket_keys` file re-reads it, and the node configured with `ticket_key_rotation`
//! rotates it on that schedule, so that the gateways behind one HALB seal and open tickets
//! with the same keys.
//!
//! Owns when key files are refreshed and how a listener's settings map to a
//! [`TicketKeyFile`]. It does not own the file format or the rotation rule (both in
//! `super::ticket_keys`) and never touches sessions: it swaps the keys inside each
//! listener's [`SharedTicketer`], which a session consults only when it seals or opens a
//! ticket.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use super::ticket_keys::{KeyFileRole, RefreshOutcome, SharedTicketer, TicketKeyFile, TicketKeySchedule};
use crate::config::ListenerConfig;
use crate::shared::Shared;

/// How often the timer wakes: it then compares each key file's size, inode and mtime with
/// what it last read, so a follower picks up a rotation within this time.
pub const TICK: Duration = Duration::from_millis(500);

/// Longest time between two full refreshes (read, and rotate when due) of a key file, even
/// when the file looks unchanged. Well below the 60 s [`TicketKeySchedule::stage_ahead`].
pub const FULL_REFRESH_EVERY: Duration = Duration::from_secs(10);

/// Shortest rotation period accepted (a key must be staged well after the timer's tick).
pub const MIN_ROTATION: Duration = Duration::from_secs(2);

/// Longest stage-ahead time: a new key is written this long (or half the rotation period,
/// when shorter) before it starts sealing tickets.
const MAX_STAGE_AHEAD: Duration = Duration::from_secs(60);

/// Longest ticket lifetime (RFC 8446 §4.6.1: at most 7 days).
const MAX_TICKET_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The key file of a listener as this node uses it: `None` without `ticket_keys`; the
/// rotating role with `ticket_key_rotation`, the following role without.
pub fn key_file(l: &ListenerConfig) -> Option<TicketKeyFile> {
    let path = l.ticket_keys.clone()?;
    let rotation = l.ticket_key_rotation.map(|d| d.get());
    Some(TicketKeyFile {
        path,
        schedule: schedule(rotation),
        role: match rotation {
            Some(_) => KeyFileRole::Rotate,
            None => KeyFileRole::Follow,
        },
    })
}

/// The schedule for a rotation period: keys current for `rotate_every`, tickets living two
/// periods (6 h keys, 12 h tickets, as rustls' own ticketer), new keys staged a minute ahead
/// (half a period for periods under two minutes). Without a period (a follower): the
/// default schedule, which only sets the lifetime announced to clients.
pub fn schedule(rotate_every: Option<Duration>) -> TicketKeySchedule {
    let Some(rotate_every) = rotate_every else {
        return TicketKeySchedule::default();
    };
    TicketKeySchedule {
        rotate_every,
        ticket_lifetime: rotate_every.saturating_mul(2).min(MAX_TICKET_LIFETIME),
        stage_ahead: (rotate_every / 2).min(MAX_STAGE_AHEAD),
    }
}

/// How long a listener goes without a full refresh: [`FULL_REFRESH_EVERY`], or a third of
/// the stage-ahead time of a short schedule (so the rotating node writes a key in time).
pub fn full_refresh_interval(file: &TicketKeyFile) -> Duration {
    match file.role {
        KeyFileRole::Rotate => (file.schedule.stage_ahead / 3).clamp(TICK, FULL_REFRESH_EVERY),
        KeyFileRole::Follow => FULL_REFRESH_EVERY,
    }
}

/// The running timer; [`TicketRotation::stop`] ends it.
pub struct TicketRotation {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl TicketRotation {
    /// Starts the timer thread. Called once by `Node::start` after the TLS configurations
    /// are in place; it follows reloads by reading the current snapshot at every tick.
    pub fn start(shared: Arc<Shared>) -> Result<TicketRotation, String> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("ticket-keys".into())
            .spawn(move || run(&shared, &stopped))
            .map_err(|e| format!("ticket key timer: {e}"))?;
        Ok(TicketRotation { stop, thread })
    }

    /// Stops the timer and waits for it (at most one refresh in progress). Called by the
    /// drain; keys in the ticketers stay as they are.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// What the timer remembers about one listener's key file.
struct Watch {
    ticketer: Arc<SharedTicketer>,
    stamp: Option<FileStamp>,
    last_full: Instant,
    last_error: Option<String>,
}

/// What tells a changed file: rewriting is atomic (rename), so the inode changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            inode: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// Whether a listener's file is refreshed at this tick: when it changed on disk since the
/// last read, or when the full-refresh interval has passed.
fn refresh_due(
    last: Option<FileStamp>,
    seen: Option<FileStamp>,
    since_full: Duration,
    every: Duration,
) -> bool {
    last != seen || since_full >= every
}

fn run(shared: &Shared, stopped: &Receiver<()>) {
    let mut watches: HashMap<String, Watch> = HashMap::new();
    loop {
        tick(shared, &mut watches, Instant::now());
        if stopped.recv_timeout(TICK).is_ok() {
            return;
        }
    }
}

fn tick(shared: &Shared, watches: &mut HashMap<String, Watch>, now: Instant) {
    let snapshot = shared.snapshot();
    let mut present = Vec::new();
    for plan in &snapshot.listeners {
        let l = &plan.config;
        let Some(file) = key_file(l) else { continue };
        let Some(ticketer) = plan.tls.as_ref().and_then(|t| t.shared_tickets.clone()) else {
            continue;
        };
        present.push(l.name.clone());
        let watch = watches.entry(l.name.clone()).or_insert_with(|| Watch {
            ticketer: ticketer.clone(),
            stamp: FileStamp::of(&file.path),
            last_full: now,
            last_error: None,
        });
        if !Arc::ptr_eq(&watch.ticketer, &ticketer) {
            // A reload built a new ticketer (it read the file then): start over.
            *watch = Watch {
                ticketer,
                stamp: FileStamp::of(&file.path),
                last_full: now,
                last_error: None,
            };
            continue;
        }
        let seen = FileStamp::of(&file.path);
        if !refresh_due(
            watch.stamp,
            seen,
            now.saturating_duration_since(watch.last_full),
            full_refresh_interval(&file),
        ) {
            continue;
        }
        watch.last_full = now;
        match file.refresh(&watch.ticketer, SystemTime::now()) {
            Ok(outcome) => {
                // The stamp from before the read: a write racing with it is seen next tick.
                watch.stamp = match outcome {
                    RefreshOutcome::Rotated => FileStamp::of(&file.path),
                    RefreshOutcome::Unchanged | RefreshOutcome::Reloaded => seen,
                };
                watch.last_error = None;
                let keys = watch.ticketer.key_set().keys().len();
                match outcome {
                    RefreshOutcome::Unchanged => {}
                    RefreshOutcome::Reloaded => {
                        tracing::info!(listener = %l.name, keys, "ticket keys re-read from {}", file.path.display())
                    }
                    RefreshOutcome::Rotated => {
                        tracing::info!(listener = %l.name, keys, "ticket keys rotated in {}", file.path.display())
                    }
                }
            }
            Err(e) => {
                // The ticketer keeps its keys; say so once per distinct error.
                let text = e.to_string();
                if watch.last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(listener = %l.name, "ticket keys: {text}; keeping the keys in use");
                    watch.last_error = Some(text);
                }
                watch.stamp = seen;
            }
        }
    }
    watches.retain(|name, _| present.contains(name));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ticket_keys::TicketKeySet;

    #[test]
    fn schedules_follow_the_rotation_period() {
        assert_eq!(schedule(None), TicketKeySchedule::default());
        let six_hours = schedule(Some(Duration::from_secs(6 * 3600)));
        assert_eq!(
            six_hours,
            TicketKeySchedule::default(),
            "6h is the default schedule"
        );
        let short = schedule(Some(Duration::from_secs(4)));
        assert_eq!(short.stage_ahead, Duration::from_secs(2));
        assert_eq!(short.ticket_lifetime, Duration::from_secs(8));
        let long = schedule(Some(Duration::from_secs(30 * 24 * 3600)));
        assert_eq!(long.ticket_lifetime, MAX_TICKET_LIFETIME);
    }

    #[test]
    fn full_refresh_is_shorter_than_the_stage_ahead_time() {
        for secs in [2u64, 5, 60, 600, 6 * 3600] {
            let file = TicketKeyFile {
                path: "k".into(),
                schedule: schedule(Some(Duration::from_secs(secs))),
                role: KeyFileRole::Rotate,
            };
            let every = full_refresh_interval(&file);
            assert!(every <= FULL_REFRESH_EVERY);
            assert!(
                every < file.schedule.stage_ahead || every == TICK,
                "{secs}s: {every:?} vs {:?}",
                file.schedule.stage_ahead
            );
        }
    }

    #[test]
    fn a_changed_file_or_an_old_read_is_refreshed() {
        let a = FileStamp {
            inode: 1,
            len: 10,
            modified: None,
        };
        let b = FileStamp { inode: 2, ..a };
        let every = Duration::from_secs(10);
        assert!(!refresh_due(Some(a), Some(a), Duration::from_secs(1), every));
        assert!(refresh_due(Some(a), Some(b), Duration::ZERO, every));
        assert!(refresh_due(Some(a), None, Duration::ZERO, every), "file removed");
        assert!(refresh_due(Some(a), Some(a), every, every));
    }

    #[test]
    fn a_follower_picks_up_what_the_rotating_node_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys");
        let period = Duration::from_secs(10);
        let rotating = TicketKeyFile {
            path: path.clone(),
            schedule: schedule(Some(period)),
            role: KeyFileRole::Rotate,
        };
        let following = TicketKeyFile {
            role: KeyFileRole::Follow,
            ..rotating.clone()
        };
        let t0 = SystemTime::now();
        let a = rotating.open(t0).expect("created");
        let b = following.open(t0).expect("read");
        assert_eq!(a.key_set().keys().len(), 1);
        let before = FileStamp::of(&path);
        // Past `rotate_every - stage_ahead`: the rotating node stages the next key.
        let later = t0 + period - schedule(Some(period)).stage_ahead + Duration::from_secs(1);
        assert_eq!(
            rotating.refresh(&a, later).expect("rotates"),
            RefreshOutcome::Rotated
        );
        assert_ne!(before, FileStamp::of(&path), "the stamp sees the rewrite");
        assert_eq!(
            following.refresh(&b, later).expect("re-reads"),
            RefreshOutcome::Reloaded
        );
        let set: TicketKeySet = b.key_set();
        assert_eq!(set.keys().len(), 2, "old key kept, new key staged");
        assert_eq!(set, a.key_set());
    }
}
