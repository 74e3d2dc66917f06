//! Bytes a TLS connection holds between two calls (TLS bytes read but not yet processed,
//! records not yet written, plaintext not yet taken), in buffers on loan from the worker
//! thread's pool.
//!
//! A buffer is taken when bytes start to wait and goes back as soon as they are gone, so an
//! idle connection holds none. Pooled buffers are zeroed once, when first made: a record is
//! then read or encrypted straight into one, with no allocation, no zeroing and no copy
//! from a scratch buffer per record. A few bytes left waiting while the connection waits
//! for its socket (the start of a record whose rest has not arrived) move into a buffer of
//! their own size ([`Waiting::settle`]), so a peer that sends a byte and stops pins a byte,
//! not a pooled buffer. Nothing here knows about TLS.

use std::cell::RefCell;

/// Size of a pooled buffer: two of the largest TLS records (RFC 8446 §5.2: a 5-byte header
/// and 2^14 + 256 bytes) with room to spare: a partial record followed by a whole one read
/// after it, or a 16 KiB chunk of plaintext with its records' overhead.
pub const POOLED_LEN: usize = 2 * (5 + 16_384 + 256) + 256;

/// Idle pooled buffers a thread keeps (about 1 MiB).
const POOL_KEEP: usize = 32;

/// At most this many bytes move out of a pooled buffer when they stay behind.
const SETTLE_BELOW: usize = 4096;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of at least `min` bytes: a pooled one when that is enough.
fn take(min: usize) -> Box<[u8]> {
    if min <= POOLED_LEN {
        if let Some(b) = POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten() {
            return b;
        }
        return vec![0u8; POOLED_LEN].into_boxed_slice();
    }
    vec![0u8; min].into_boxed_slice()
}

/// Returns a buffer: pooled-size ones are kept (up to [`POOL_KEEP`]), others freed.
fn give(buf: Box<[u8]>) {
    if buf.len() == POOLED_LEN {
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_KEEP {
                p.push(buf);
            }
        });
    }
}

/// Waiting bytes: `buf[start..end]`, and no buffer while there are none.
#[derive(Default)]
pub struct Waiting {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl Waiting {
    /// Whether no bytes wait.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// How many bytes wait.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// The waiting bytes.
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[self.start..self.end])
    }

    /// The waiting bytes, to be changed in place (rustls decrypts records where they lie).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match self.buf.as_deref_mut() {
            Some(b) => &mut b[self.start..self.end],
            None => &mut [],
        }
    }

    /// Bytes of buffer held now (0 when nothing waits).
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }

    /// Room for at least `n` more bytes after the waiting ones (it may be longer): fill a
    /// prefix, then [`Waiting::commit`] it. Takes or grows the buffer as needed; call
    /// [`Waiting::settle`] when nothing was committed.
    pub fn room(&mut self, n: usize) -> &mut [u8] {
        let (len, capacity) = (self.len(), self.capacity());
        if self.buf.is_none() || self.end + n > capacity {
            let (start, end) = (self.start, self.end);
            match self.buf.as_deref_mut() {
                // Enough room once the waiting bytes move to the front.
                Some(b) if len + n <= capacity => b.copy_within(start..end, 0),
                _ => {
                    let mut bigger = take(len + n);
                    bigger[..len].copy_from_slice(self.bytes());
                    if let Some(old) = self.buf.replace(bigger) {
                        give(old);
                    }
                }
            }
            self.start = 0;
            self.end = len;
        }
        let buf = self.buf.as_deref_mut().expect("room() just made a buffer");
        &mut buf[self.end..]
    }

    /// Counts `n` bytes written into [`Waiting::room`] as waiting.
    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.capacity());
        self.end += n;
    }

    /// Appends `data`.
    pub fn extend(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.room(data.len())[..data.len()].copy_from_slice(data);
        self.commit(data.len());
    }

    /// Drops the first `n` waiting bytes (they were written, taken or processed); the buffer
    /// goes back when none are left.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.is_empty() {
            self.release();
        }
    }

    /// Called when the connection goes back to waiting for its socket (or holds bytes back):
    /// an empty buffer goes back to the pool, and a few bytes left in a pooled (or larger)
    /// buffer move into one of their own.
    pub fn settle(&mut self) {
        if self.is_empty() {
            self.release();
        } else if self.capacity() >= POOLED_LEN && self.len() < SETTLE_BELOW {
            let own: Box<[u8]> = self.bytes().into();
            let len = own.len();
            if let Some(old) = self.buf.replace(own) {
                give(old);
            }
            self.start = 0;
            self.end = len;
        }
    }

    /// Drops every waiting byte and gives the buffer back.
    pub fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            give(b);
        }
        self.start = 0;
        self.end = 0;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_buffer_only_while_bytes_wait_and_reuses_it() {
        let mut w = Waiting::default();
        assert_eq!(w.capacity(), 0);
        w.extend(b"hello");
        assert_eq!(w.capacity(), POOLED_LEN);
        let first = w.bytes().as_ptr();
        w.consume(2);
        assert_eq!(w.bytes(), b"llo");
        w.consume(3);
        assert_eq!(w.capacity(), 0, "given back when empty");
        w.extend(b"again");
        assert_eq!(w.bytes().as_ptr(), first, "the pooled buffer is reused");
    }

    #[test]
    fn room_is_filled_then_committed_and_moves_bytes_to_the_front_when_needed() {
        let mut w = Waiting::default();
        assert!(!w.room(0).is_empty(), "even an empty ask gets a buffer");
        w.settle();
        let room = w.room(10);
        assert!(room.len() >= 10);
        room[..3].copy_from_slice(b"abc");
        w.commit(3);
        assert_eq!(w.bytes(), b"abc");
        // Fill almost all, consume most: the next room compacts instead of growing.
        let n = POOLED_LEN - 3 - 1;
        w.room(n)[..n].fill(7);
        w.commit(n);
        w.consume(POOLED_LEN - 3);
        assert_eq!(w.len(), 2);
        let room = w.room(POOLED_LEN - 2);
        assert_eq!(room.len(), POOLED_LEN - 2);
        assert_eq!(w.capacity(), POOLED_LEN);
        assert_eq!(w.bytes(), &[7, 7]);
    }

    #[test]
    fn grows_past_a_pooled_buffer_keeping_the_bytes_in_order() {
        let mut w = Waiting::default();
        let data: Vec<u8> = (0..POOLED_LEN + 1000).map(|i| i as u8).collect();
        w.extend(&data[..100]);
        w.extend(&data[100..]);
        assert_eq!(w.bytes(), &data[..]);
        assert!(w.capacity() >= data.len());
        w.consume(data.len());
        assert_eq!(w.capacity(), 0);
    }

    #[test]
    fn a_few_bytes_left_behind_move_out_of_the_pooled_buffer() {
        let mut w = Waiting::default();
        w.extend(&[1, 2, 3]);
        w.settle();
        assert_eq!(w.capacity(), 3, "three bytes pin three bytes");
        assert_eq!(w.bytes(), &[1, 2, 3]);
        // More arrive: back into a pooled buffer, in order.
        w.extend(&[4, 5]);
        assert_eq!(w.capacity(), POOLED_LEN);
        assert_eq!(w.bytes(), &[1, 2, 3, 4, 5]);
        // Many bytes stay where they are; an empty one is given back.
        w.extend(&[0; SETTLE_BELOW]);
        w.settle();
        assert_eq!(w.capacity(), POOLED_LEN);
        w.consume(w.len());
        w.settle();
        assert_eq!(w.capacity(), 0);
        let _ = w.room(1);
        w.settle();
        assert_eq!(w.capacity(), 0, "a room asked for and not used is given back");
    }
}
