//! An in-memory link for tests and the simulator: whole messages over
//! channels, with the same fragmentation and reassembly checks as the real
//! transports when an ATT MTU is set.
//!
//! The simulator holds a million of these at once, so an idle link owns no
//! buffer: the reassembler (a fixed 1 KiB buffer, [`MAX_MESSAGE`]) exists
//! only while a message is partly received, and the two directions share
//! one small allocation (`Pipe`) instead of two channels (a tokio channel
//! allocates its first block of 32 slots, about 1 KiB, up front).
//!
//! [`MAX_MESSAGE`]: vouch_proto::wire::MAX_MESSAGE

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use vouch_proto::framing::{Fragmenter, Reassembler, ReassemblyLimits, MAX_FRAGMENT};
use vouch_proto::Timestamp;

use super::{Link, LinkError};

/// Fragments in flight one way before the sender waits (as the channel of
/// 256 this replaces).
const CAPACITY: usize = 256;

/// One end of an in-memory link.
pub struct MemoryLink {
    pipe: Arc<Pipe>,
    /// Which half of the pipe this end receives from (0 or 1).
    side: usize,
    name: String,
    att_mtu: usize,
    limits: ReassemblyLimits,
    /// Only while a message is partly received.
    reassembler: Option<Box<Reassembler>>,
}

/// Both directions of a link: fragments queued for each end, the task
/// waiting on each, and which ends are gone.
struct Pipe {
    halves: Mutex<[Half; 2]>,
}

#[derive(Default)]
struct Half {
    /// Fragments this end has yet to receive.
    queue: VecDeque<Vec<u8>>,
    /// This end's receiver, waiting for a fragment.
    recv_waker: Option<Waker>,
    /// The other end's sender, waiting for room in `queue`.
    send_waker: Option<Waker>,
    /// This end was dropped: nothing more is received here.
    gone: bool,
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, [Half; 2]> {
        // Every update leaves the queues consistent before it could panic.
        self.halves.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connected pair of in-memory links carrying fragments of `att_mtu`.
pub fn pair(att_mtu: usize, a: &str, b: &str) -> (MemoryLink, MemoryLink) {
    let pipe = Arc::new(Pipe {
        halves: Mutex::new([Half::default(), Half::default()]),
    });
    let limits = ReassemblyLimits::default();
    let end = |side, name: &str| MemoryLink {
        pipe: pipe.clone(),
        side,
        name: name.to_string(),
        att_mtu,
        limits,
        reassembler: None,
    };
    (end(0, a), end(1, b))
}

impl MemoryLink {
    /// Sends one raw fragment (for tests that misbehave on purpose).
    pub async fn send_fragment(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
        let peer = 1 - self.side;
        let mut fragment = Some(fragment.to_vec());
        poll_fn(|cx| {
            let mut halves = self.pipe.lock();
            let h = &mut halves[peer];
            if h.gone {
                return Poll::Ready(Err(LinkError::Io(std::io::ErrorKind::BrokenPipe.into())));
            }
            if h.queue.len() >= CAPACITY {
                h.send_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(f) = fragment.take() {
                h.queue.push_back(f);
            }
            if let Some(w) = h.recv_waker.take() {
                w.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// The next fragment, or `None` once the other end is gone and every
    /// fragment it sent was received.
    async fn next_fragment(&mut self) -> Option<Vec<u8>> {
        let (side, peer) = (self.side, 1 - self.side);
        poll_fn(|cx| {
            let mut halves = self.pipe.lock();
            if let Some(f) = halves[side].queue.pop_front() {
                if let Some(w) = halves[side].send_waker.take() {
                    w.wake();
                }
                return Poll::Ready(Some(f));
            }
            if halves[peer].gone {
                return Poll::Ready(None);
            }
            halves[side].recv_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for MemoryLink {
    fn drop(&mut self) {
        let (side, peer) = (self.side, 1 - self.side);
        let mut halves = self.pipe.lock();
        halves[side].gone = true;
        halves[side].queue = VecDeque::new();
        // The other end's receive ends; its pending send fails.
        if let Some(w) = halves[peer].recv_waker.take() {
            w.wake();
        }
        if let Some(w) = halves[side].send_waker.take() {
            w.wake();
        }
    }
}

impl Link for MemoryLink {
    async fn send(&mut self, msg: &[u8]) -> Result<(), LinkError> {
        let mut f = Fragmenter::new(msg, self.att_mtu)?;
        let mut buf = [0u8; MAX_FRAGMENT];
        while let Some(n) = f.next_into(&mut buf) {
            self.send_fragment(&buf[..n]).await?;
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            let Some(fragment) = self.next_fragment().await else {
                return Ok(None);
            };
            let limits = self.limits;
            let r = self
                .reassembler
                .get_or_insert_with(|| Box::new(Reassembler::new(limits)));
            let msg =
                super::push_fragment(r, Timestamp(0), &fragment, &self.name).map(<[u8]>::to_vec);
            // Idle again (a message completed, or a bad fragment dropped the
            // partial one): the buffer goes until the next fragment.
            if !r.in_progress() {
                self.reassembler = None;
            }
            if let Some(msg) = msg {
                return Ok(Some(msg));
            }
        }
    }

    fn peer(&self) -> String {
        format!("memory:{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_cross_both_ways_and_a_dropped_end_ends_the_other() {
        let (mut a, mut b) = pair(23, "a", "b");
        let long = vec![7u8; 300];
        a.send(&long).await.unwrap();
        b.send(b"back").await.unwrap();
        assert_eq!(b.recv().await.unwrap().as_deref(), Some(&long[..]));
        assert!(b.reassembler.is_none(), "an idle link holds no buffer");
        assert_eq!(a.recv().await.unwrap().as_deref(), Some(&b"back"[..]));
        a.send(b"last").await.unwrap();
        drop(a);
        // What was sent before the drop still arrives, then the end.
        assert_eq!(b.recv().await.unwrap().as_deref(), Some(&b"last"[..]));
        assert_eq!(b.recv().await.unwrap(), None);
        assert!(b.send(b"x").await.is_err());
    }

    #[tokio::test]
    async fn a_full_direction_makes_the_sender_wait() {
        let (mut a, mut b) = pair(247, "a", "b");
        for _ in 0..CAPACITY {
            a.send_fragment(&[0x00, 1]).await.unwrap();
        }
        let mut send = Box::pin(a.send_fragment(&[0x00, 2]));
        assert!(futures::poll!(&mut send).is_pending());
        let _ = b.next_fragment().await;
        assert!(matches!(futures::poll!(&mut send), Poll::Ready(Ok(()))));
    }
}
