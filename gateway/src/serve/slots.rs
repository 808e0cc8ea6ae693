//! Link slots: a cap on one transport's concurrent links that peers who
//! connect and say nothing cannot hold (SPEC.md §8.4, §11.12).
//!
//! A slot is taken when a link is about to exist: on TCP when a connection
//! is accepted, on BLE when the central starts to connect a device. A link
//! is *waiting* from the moment it is up ([`Gated::new`]) until its first
//! whole message arrives. Three rules bound what a silent peer costs:
//!
//! - a waiting link that has not delivered its first message within
//!   `first_message` (default 3 s, well below the 10 s handshake deadline)
//!   is closed;
//! - when every slot is taken, a newcomer takes the slot of the link that
//!   has waited longest for its first message, which is closed. Only when no
//!   link is waiting (every slot holds a link being connected, a handshake
//!   in progress or a session) is the newcomer refused. A link never loses
//!   its slot once it spoke;
//! - a link is not waiting, and so cannot be evicted, before it is up: a BLE
//!   connect and GATT discovery take seconds (about 10 s under BlueZ), and
//!   a newcomer that could take the slot of a link still connecting would
//!   throw that connect away, the honest device's as readily as a rogue's.
//!   With a `grace` ([`LinkSlots::with_grace`]), a link that just came up
//!   is not evicted either until it had that long to speak (the BLE central
//!   uses 1 s: one connection event carries a Hello fragment, and the next
//!   connect begins the moment this one is up).
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

use crate::transport::{Link, LinkError};

/// Default of [`LinkSlots::new`]'s `first_message`.
pub const DEFAULT_FIRST_MESSAGE: Duration = Duration::from_secs(3);

/// The slots of one transport.
#[derive(Debug)]
pub struct LinkSlots {
    max: usize,
    first_message: Duration,
    grace: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Links holding a slot.
    held: HashSet<u64>,
    /// Links up and waiting for their first message, in the order they came
    /// up (a sequence number), with the link's id, when it came up and the
    /// sender that closes it.
    waiting: BTreeMap<u64, Waiting>,
    next_up: u64,
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    since: Instant,
    close: oneshot::Sender<()>,
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
    /// `first_message` of being [gated](Gated::new), and may be evicted from
    /// the moment it is gated.
    pub fn new(max: usize, first_message: Duration) -> Arc<Self> {
        Self::with_grace(max, first_message, Duration::ZERO)
    }

    /// [`LinkSlots::new`], where a link that came up is not evicted until
    /// it has had `grace` to deliver its first message (at most
    /// `first_message`: past it, the link is closed anyway).
    pub fn with_grace(max: usize, first_message: Duration, grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            max,
            first_message,
            grace: grace.min(first_message),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update below leaves the sets consistent before it can panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new link that is up already (an accepted TCP
    /// connection): it waits for its first message, and can be evicted,
    /// from now on. `None` when every slot is held by a link that is not
    /// evictable now (it spoke, it is still being connected, or it came up
    /// less than the grace ago).
    pub fn acquire(self: &Arc<Self>) -> Option<(Slot, Acquired)> {
        let (mut slot, how) = self.acquire_connecting()?;
        slot.up();
        Some((slot, how))
    }

    /// [`LinkSlots::acquire`] for a link that is not up yet (a BLE connect,
    /// which takes seconds): it cannot be evicted until [`Gated::new`]
    /// says it is up.
    pub fn acquire_connecting(self: &Arc<Self>) -> Option<(Slot, Acquired)> {
        let mut inner = self.lock();
        let how = if inner.held.len() < self.max {
            Acquired::Free
        } else {
            let (&key, oldest) = inner.waiting.first_key_value()?;
            if oldest.since + self.grace > Instant::now() {
                return None;
            }
            let victim = inner.waiting.remove(&key)?;
            inner.held.remove(&victim.id);
            let _ = victim.close.send(());
            Acquired::Evicted
        };
        let id = inner.next;
        inner.next += 1;
        inner.held.insert(id);
        Some((
            Slot {
                slots: self.clone(),
                id,
                state: SlotState::Connecting,
            },
            how,
        ))
    }

    /// When a link that is waiting now becomes evictable, if every slot is
    /// held and some link is waiting (so [`LinkSlots::acquire`] may succeed
    /// then). `None` when a slot is free, or when no held link is waiting.
    pub fn evictable_at(&self) -> Option<Instant> {
        let inner = self.lock();
        if inner.held.len() < self.max {
            return None;
        }
        let (_, oldest) = inner.waiting.first_key_value()?;
        Some(oldest.since + self.grace)
    }

    /// Links holding a slot.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Links holding a slot that are up and have not delivered a first
    /// message.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

#[derive(Debug)]
enum SlotState {
    /// Taken, the link not up yet: not evictable.
    Connecting,
    /// Up and waiting for its first message, under this key of `waiting`;
    /// fires when another link took the slot.
    Waiting(u64, oneshot::Receiver<()>),
    /// The link spoke: it keeps the slot.
    Spoke,
    /// Another link took the slot.
    Evicted,
}

/// One link's slot; released when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<LinkSlots>,
    id: u64,
    state: SlotState,
}

impl Slot {
    /// The link is up: from now on it waits for its first message and can be
    /// evicted (after the grace).
    fn up(&mut self) {
        if !matches!(self.state, SlotState::Connecting) {
            return;
        }
        let (close, closed) = oneshot::channel();
        let mut inner = self.slots.lock();
        let key = inner.next_up;
        inner.next_up += 1;
        inner.waiting.insert(
            key,
            Waiting {
                id: self.id,
                since: Instant::now(),
                close,
            },
        );
        self.state = SlotState::Waiting(key, closed);
    }

    /// Waits until another link took this slot (never, unless the link is up
    /// and has not spoken).
    pub async fn closed(&mut self) {
        match &mut self.state {
            SlotState::Waiting(_, rx) => {
                let _ = rx.await;
                self.state = SlotState::Evicted;
            }
            SlotState::Evicted => {}
            SlotState::Connecting | SlotState::Spoke => std::future::pending().await,
        }
    }

    /// Whether another link took this slot.
    pub fn is_closed(&mut self) -> bool {
        match &mut self.state {
            SlotState::Waiting(_, rx) => {
                !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            }
            SlotState::Evicted => true,
            SlotState::Connecting | SlotState::Spoke => false,
        }
    }

    /// The link spoke: it keeps its slot from now on.
    /// Returns whether it keeps the slot: not if another link took it
    /// first (the link must then close, or the links would exceed the cap
    /// by one). Whichever gets the lock first decides.
    fn spoke(&mut self) -> bool {
        match std::mem::replace(&mut self.state, SlotState::Spoke) {
            SlotState::Waiting(key, _) => {
                let kept = self.slots.lock().waiting.remove(&key).is_some();
                if !kept {
                    self.state = SlotState::Evicted;
                }
                kept
            }
            SlotState::Evicted => {
                self.state = SlotState::Evicted;
                false
            }
            SlotState::Connecting | SlotState::Spoke => true,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        if let SlotState::Waiting(key, _) = &self.state {
            inner.waiting.remove(key);
        }
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
    /// Gates `inner`, which is up, with `slot`: the link waits for its first
    /// message from now on, and the first-message deadline starts now.
    pub fn new(inner: L, mut slot: Slot) -> Self {
        slot.up();
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
        let SlotState::Waiting(_, closed) = &mut self.slot.state else {
            return self.inner.recv().await;
        };
        // Each branch is cancel-safe: the inner link keeps what it read, the
        // receiver and the fixed deadline are only polled.
        // The timer is boxed: it lives only until the first message, and
        // inline it would grow every session's task for the session's whole
        // life (the gateway's memory budget is per session, SPEC.md §6).
        let deadline = Box::pin(tokio::time::sleep_until(self.deadline));
        enum Woke {
            Message(Result<Option<Vec<u8>>, LinkError>),
            Evicted,
            Deadline,
        }
        // A message first when both are ready; whether it keeps the slot is
        // then decided under the slots' lock (`Slot::spoke`).
        let woke = tokio::select! {
            biased;
            r = self.inner.recv() => Woke::Message(r),
            _ = closed => Woke::Evicted,
            () = deadline => Woke::Deadline,
        };
        match woke {
            Woke::Message(r) => {
                if matches!(r, Ok(Some(_))) && !self.slot.spoke() {
                    return Err(LinkError::Evicted);
                }
                r
            }
            Woke::Evicted => {
                self.slot.state = SlotState::Evicted;
                Err(LinkError::Evicted)
            }
            Woke::Deadline => Err(LinkError::FirstMessageTimeout),
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
        assert!(a.is_closed());
        assert_eq!(slots.held(), 2);
        drop(a);
        assert_eq!(slots.held(), 2, "an evicted slot is not released twice");
        // b and c spoke: nobody can take their slots.
        let (mut b, mut c) = (b, c);
        assert!(b.spoke());
        assert!(c.spoke());
        assert!(slots.acquire().is_none());
        drop(b);
        assert_eq!(slots.held(), 1);
        assert_eq!(slots.acquire().unwrap().1, Acquired::Free);
    }

    /// Found in the BLE VM (scenario 7): a link still being connected lost
    /// its slot to every retry of a rogue, so no connect ever completed.
    #[test]
    fn a_link_being_connected_is_never_evicted() {
        let slots = LinkSlots::new(2, DEFAULT_FIRST_MESSAGE);
        let (mut connecting, _) = slots.acquire_connecting().unwrap();
        let (mut up, _) = slots.acquire().unwrap();
        // The link that is up and silent makes room, never the one
        // connecting.
        let (_newcomer, how) = slots.acquire_connecting().unwrap();
        assert_eq!(how, Acquired::Evicted);
        assert!(up.is_closed());
        assert!(!connecting.is_closed());
        // Now one slot is connecting and one held by a link not up yet:
        // nobody makes room.
        assert!(slots.acquire().is_none());
        assert_eq!(slots.evictable_at(), None);
        connecting.up();
        assert!(slots.evictable_at().is_some());
        assert_eq!(slots.acquire().unwrap().1, Acquired::Evicted);
        assert!(connecting.is_closed());
    }

    /// Found in review: a first message and an eviction arriving together
    /// were picked at random; the link that lost its slot could go on as if
    /// it had spoken, one link over the cap.
    #[test]
    fn a_link_that_speaks_after_losing_its_slot_does_not_keep_it() {
        let slots = LinkSlots::new(1, DEFAULT_FIRST_MESSAGE);
        let (mut a, _) = slots.acquire().unwrap();
        let (mut b, how) = slots.acquire().unwrap();
        assert_eq!(how, Acquired::Evicted);
        assert!(!a.spoke(), "its slot went to b");
        assert!(a.is_closed());
        assert!(b.spoke(), "b keeps the slot it took");
        drop(a);
        assert_eq!(slots.held(), 1);
        assert!(slots.acquire().is_none(), "b spoke: nobody takes its slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_link_that_just_came_up_has_its_grace_to_speak() {
        let grace = Duration::from_secs(1);
        let slots = LinkSlots::with_grace(1, DEFAULT_FIRST_MESSAGE, grace);
        let (mut a, _) = slots.acquire().unwrap();
        let up_at = Instant::now();
        assert!(slots.acquire().is_none(), "within its grace");
        assert_eq!(slots.evictable_at(), Some(up_at + grace));
        tokio::time::sleep(grace).await;
        assert_eq!(slots.acquire().unwrap().1, Acquired::Evicted);
        assert!(a.is_closed());
    }
}
