//! Per-worker pools of copy buffers and splice pipes.
//!
//! Owns the memory and the pipe file descriptors that bytes in flight occupy. A session takes
//! a buffer (or a pipe) only while bytes are on their way and gives it back as soon as they
//! are written, so an idle tunnel holds none (HAProxy does the same with its buffers and
//! pipes). Nothing here is shared between workers.

use std::os::fd::{AsRawFd, OwnedFd};

/// Size of one copy buffer.
pub const BUF_SIZE: usize = 16 * 1024;

/// Capacity asked for each splice pipe (the kernel's default is 64 KiB). Pages are only
/// allocated while bytes sit in the pipe, so an idle pooled pipe costs no memory.
pub const PIPE_SIZE: usize = 256 * 1024;

/// A copy buffer on loan from the pool.
pub type Buf = Box<[u8]>;

/// Recycles copy buffers; keeps at most `max_cached` idle ones.
pub struct BufferPool {
    free: Vec<Buf>,
    max_cached: usize,
    /// Buffers on loan now (for tests and metrics).
    pub in_use: usize,
}

impl BufferPool {
    /// A pool that keeps up to `max_cached` idle buffers.
    pub fn new(max_cached: usize) -> Self {
        BufferPool {
            free: Vec::new(),
            max_cached,
            in_use: 0,
        }
    }

    /// Lends a buffer.
    pub fn take(&mut self) -> Buf {
        self.in_use += 1;
        self.free
            .pop()
            .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
    }

    /// Takes a buffer back.
    pub fn give(&mut self, buf: Buf) {
        self.in_use = self.in_use.saturating_sub(1);
        if self.free.len() < self.max_cached {
            self.free.push(buf);
        }
    }
}

/// A kernel pipe used as the middle of two splice(2) calls.
pub struct Pipe {
    /// Read end.
    pub read: OwnedFd,
    /// Write end.
    pub write: OwnedFd,
}

impl Pipe {
    fn open() -> std::io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
        // A bigger pipe halves the splice calls per GB (measured: 0.327 vs 0.349 CPU-s/GB,
        // see BENCHMARKS.md). Refused (a user over pipe-user-pages-soft): the default 64 KiB
        // works as well, splice just moves less per call.
        let _ = nix::fcntl::fcntl(
            write.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32),
        );
        Ok(Pipe { read, write })
    }
}

/// Recycles pipes; lends at most `max_pipes` at once so a burst cannot exhaust descriptors.
pub struct PipePool {
    free: Vec<Pipe>,
    max_pipes: usize,
    max_cached: usize,
    /// Pipes on loan now.
    pub in_use: usize,
}

impl PipePool {
    /// A pool that lends up to `max_pipes` pipes and keeps up to `max_cached` idle ones.
    pub fn new(max_pipes: usize, max_cached: usize) -> Self {
        PipePool {
            free: Vec::new(),
            max_pipes,
            max_cached,
            in_use: 0,
        }
    }

    /// Lends a pipe, or `None` when the budget is spent or the kernel refuses (callers copy).
    pub fn take(&mut self) -> Option<Pipe> {
        if self.in_use >= self.max_pipes {
            return None;
        }
        let pipe = match self.free.pop() {
            Some(p) => p,
            None => Pipe::open().ok()?,
        };
        self.in_use += 1;
        Some(pipe)
    }

    /// Takes back an empty pipe.
    pub fn give(&mut self, pipe: Pipe) {
        self.in_use = self.in_use.saturating_sub(1);
        if self.free.len() < self.max_cached {
            self.free.push(pipe);
        }
    }

    /// Drops a pipe that may still hold bytes (a session that ended mid-transfer).
    pub fn discard(&mut self, pipe: Pipe) {
        self.in_use = self.in_use.saturating_sub(1);
        let _ = pipe.read.as_raw_fd();
        drop(pipe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_recycled_and_bounded() {
        let mut pool = BufferPool::new(1);
        let a = pool.take();
        let b = pool.take();
        assert_eq!(pool.in_use, 2);
        let a_ptr = a.as_ptr();
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.in_use, 0);
        assert_eq!(pool.free.len(), 1, "keeps at most max_cached");
        let again = pool.take();
        assert_eq!(again.as_ptr(), a_ptr, "reuses a cached buffer");
    }

    #[test]
    fn pipes_respect_budget() {
        let mut pool = PipePool::new(2, 1);
        let a = pool.take().expect("first pipe");
        let b = pool.take().expect("second pipe");
        assert!(pool.take().is_none(), "budget of two");
        pool.give(a);
        assert!(pool.take().is_some());
        pool.discard(b);
        assert_eq!(pool.in_use, 1);
    }
}
