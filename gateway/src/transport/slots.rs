//! Link slots: a cap on one transport's concurrent links that peers who
//! connect and say nothing cannot hold (SPEC.md §8.4, §11.12).
//!
//! A link is *waiting* from the moment it takes a slot until its first whole
//! message arrives. Two rules bound what a silent peer costs:
//!
//! - a waiting link that has not delivered its first message within
//!   `first_message` (default 3 s, well below the 10 s handshake deadline)
//!   is closed;
//! - when every slot is taken, a newcomer takes the slot of the link that
//!   has waited longest for its first message, which is closed. Only when no
//!   link is waiting (every slot holds a handshake in progress or a session)
//!   is the newcomer refused. A link never loses its slot once it spoke.
//!
//! An honest device sends its first message as soon as the link is up, so it
//! waits for one message time. An attacker who wants to push it out must
//! open, within that time, as many links as there are waiting links older
//! than it: its own idle links are the first to go. Links that spoke are
//! bounded by the handshake: a message that is not a valid Hello or
//! ResumeHello ends the link at once, and a Hello costs one backend round
//! trip.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Link, LinkError};

/// Default of [`LinkSlots::new`]'s `first_message`.
pub const DEFAULT_FIRST_MESSAGE: Duration = Duration::from_secs(3);

/// The slots of one transport.
#[derive(Debug)]
pub struct LinkSlots {
    max: usize,
    first_message: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Links holding a slot.
    held: HashSet<u64>,
    /// Links waiting for their first message, oldest first, with the
    /// sender that closes them.
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
}

/// How [`LinkSlots::acquire`] found a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// A free one.
    Free,
    /// The slot of the link that waited longest for its first message,
    /// which is being closed.
    Evicted,
}

impl LinkSlots {
    /// At most `max` links; a link must deliver its first message within
    /// `first_message` of being [gated](Gated::new).
    pub fn new(max: usize, first_message: Duration) -> Arc<Self> {
        Arc::new(Self {
            max,
            first_message,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update below leaves the sets consistent before it can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new link, or `None` when every slot is held by a link
    /// that has spoken.
    pub fn acquire(self: &Arc<Self>) -> Option<(Slot, Acquired)> {
        let mut inner = self.lock();
        let how = if inner.held.len() < self.max {
            Acquired::Free
        } else {
            let (victim, close) = inner.waiting.pop_first()?;
            inner.held.remove(&victim);
            let _ = close.send(());
            Acquired::Evicted
        };
        let id = inner.next;
        inner.next += 1;
        let (close, closed) = oneshot::channel();
        inner.held.insert(id);
        inner.waiting.insert(id, close);
        Some((
            Slot {
                slots: self.clone(),
                id,
                closed: Some(closed),
            },
            how,
        ))
    }

    /// Links holding a slot.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Links holding a slot that have not delivered a first message.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

/// One link's slot; released when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<LinkSlots>,
    id: u64,
    /// Fires when another link took this slot; `None` once the link spoke.
    closed: Option<oneshot::Receiver<()>>,
}

impl Slot {
    /// Waits until another link took this slot (never, once the link spoke).
    pub async fn closed(&mut self) {
        match &mut self.closed {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }

    /// Whether another link took this slot.
    pub fn is_closed(&mut self) -> bool {
        self.closed
            .as_mut()
            .is_some_and(|rx| !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)))
    }

    /// The link spoke: it keeps its slot from now on.
    fn spoke(&mut self) {
        if self.closed.take().is_some() {
            self.slots.lock().waiting.remove(&self.id);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        inner.waiting.remove(&self.id);
        inner.held.remove(&self.id);
    }
}

/// A link that holds a slot, and loses it if it says nothing.
pub struct Gated<L> {
    inner: L,
    slot: Slot,
    deadline: Instant,
}

impl<L: Link> Gated<L> {
    /// Gates `inner` with `slot`: the first-message deadline starts now.
    pub fn new(inner: L, slot: Slot) -> Self {
        let deadline = Instant::now() + slot.slots.first_message;
        Self {
            inner,
            slot,
            deadline,
        }
    }

    /// The link inside.
    pub fn into_inner(self) -> L {
        self.inner
    }
}

impl<L: Link> Link for Gated<L> {
    async fn send(&mut self, msg: &[u8]) -> Result<(), LinkError> {
        self.inner.send(msg).await
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        let Some(closed) = &mut self.slot.closed else {
            return self.inner.recv().await;
        };
        // Each branch is cancel-safe: the inner link keeps what it read, the
        // receiver and the fixed deadline are only polled.
        // The timer is boxed: it lives only until the first message, and
        // inline it would grow every session's task for the session's whole
        // life (the gateway's memory budget is per session, SPEC.md §6).
        let deadline = Box::pin(tokio::time::sleep_until(self.deadline));
        tokio::select! {
            r = self.inner.recv() => {
                if matches!(r, Ok(Some(_))) {
                    self.slot.spoke();
                }
                r
            }
            _ = closed => Err(LinkError::Evicted),
            () = deadline => Err(LinkError::FirstMessageTimeout),
        }
    }

    fn peer(&self) -> String {
        self.inner.peer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_waiting_link_makes_room_and_links_that_spoke_never_do() {
        let slots = LinkSlots::new(2, DEFAULT_FIRST_MESSAGE);
        let (mut a, how) = slots.acquire().unwrap();
        assert_eq!(how, Acquired::Free);
        let (b, _) = slots.acquire().unwrap();
        // Full: the newcomer takes the oldest waiting link's slot.
        let (c, how) = slots.acquire().unwrap();
        assert_eq!(how, Acquired::Evicted);
        assert!(a.closed.as_mut().unwrap().try_recv().is_ok());
        assert_eq!(slots.held(), 2);
        drop(a);
        assert_eq!(slots.held(), 2, "an evicted slot is not released twice");
        // b and c spoke: nobody can take their slots.
        let (mut b, mut c) = (b, c);
        b.spoke();
        c.spoke();
        assert!(slots.acquire().is_none());
        drop(b);
        assert_eq!(slots.held(), 1);
        assert_eq!(slots.acquire().unwrap().1, Acquired::Free);
    }
}
