//! The nonce ledger: the issuing broker's memory of redeemed tickets (PROTOCOL.md §7.5).
//!
//! Each entry lives exactly as long as its ticket could still verify, then goes: a ticket
//! presented after its expiry is refused as expired anyway, so forgetting its nonce opens no
//! replay. Memory is bounded by the capacity; when full of live entries the ledger refuses
//! (fails closed) rather than forget a nonce early.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::{Nonce, TicketError, UnixMillis, VerifiedTicket};

/// Sans-IO single-use ledger. The broker owns one and calls [`NonceLedger::redeem`] for every
/// `redeem_ticket`, with the same `now` it verified the ticket at.
#[derive(Debug)]
pub struct NonceLedger {
    capacity: usize,
    seen: HashMap<Nonce, UnixMillis>,
    /// Expiry order of `seen`, soonest first.
    pub(super) expiries: BinaryHeap<Reverse<(UnixMillis, Nonce)>>,
}

impl NonceLedger {
    /// A ledger remembering at most `capacity` live nonces.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: HashMap::new(),
            expiries: BinaryHeap::new(),
        }
    }

    /// Spends a verified ticket: accepts its nonce once.
    pub fn redeem(&mut self, ticket: &VerifiedTicket, now: UnixMillis) -> Result<(), TicketError> {
        self.accept(ticket.claims.nonce, ticket.claims.expires_at, now)
    }

    /// Accepts `nonce` of a ticket valid until `expires_at` if it was not seen before.
    pub fn accept(
        &mut self,
        nonce: Nonce,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<(), TicketError> {
        self.purge(now);
        if now >= expires_at {
            return Err(TicketError::Expired {
                expired_at: expires_at,
                now,
            });
        }
        if self.seen.contains_key(&nonce) {
            return Err(TicketError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(TicketError::LedgerFull);
        }
        self.seen.insert(nonce, expires_at);
        self.expiries.push(Reverse((expires_at, nonce)));
        Ok(())
    }

    /// Forgets every nonce whose ticket has expired at `now`; returns how many. Called by
    /// `accept`, and by the broker's timer so an idle ledger shrinks too.
    pub fn purge(&mut self, now: UnixMillis) -> usize {
        let mut removed = 0;
        while let Some(Reverse((expires_at, nonce))) = self.expiries.peek().copied() {
            if expires_at > now {
                break;
            }
            self.expiries.pop();
            self.seen.remove(&nonce);
            removed += 1;
        }
        removed
    }

    /// Live nonces remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The most live nonces this ledger holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
