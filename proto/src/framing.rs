//! BLE framing: messages split into ATT-sized fragments and reassembled within
//! hard limits (SPEC.md §8). Bytes only; the transports (GATT, TCP) carry the
//! fragments.
//!
//! A fragment is one header byte, then, on a start fragment that does not end
//! the message, the message length (u16 LE), then a chunk of the message:
//!
//! ```text
//! header = START (0x80) | END (0x40) | seq (6 bits, from 0, wrapping)
//! ```
//!
//! A message that fits one fragment costs one byte of framing. Reassembly is
//! bounded by the largest message, the most fragments, a deadline from the
//! first fragment, and (in [`ReassemblyPool`]) the number of reassemblies in
//! progress at once. Any violation drops the partial message.

use crate::error::FramingError;
use crate::wire::MAX_MESSAGE;
use crate::Timestamp;

/// Header flag: first fragment of a message.
pub const FLAG_START: u8 = 0x80;
/// Header flag: last fragment of a message.
pub const FLAG_END: u8 = 0x40;
/// Header bits holding the sequence number.
pub const SEQ_MASK: u8 = 0x3f;
/// The smallest ATT MTU BLE allows.
pub const MIN_ATT_MTU: usize = 23;
/// Bytes the ATT layer takes from each MTU for a write or notification.
pub const ATT_OVERHEAD: usize = 3;
/// The largest fragment (the ATT attribute value limit).
pub const MAX_FRAGMENT: usize = 512;

/// The largest fragment for an ATT MTU: `mtu - 3`, at most 512.
pub fn fragment_len(att_mtu: usize) -> Result<usize, FramingError> {
    if att_mtu < MIN_ATT_MTU {
        return Err(FramingError::MtuTooSmall(att_mtu));
    }
    Ok((att_mtu - ATT_OVERHEAD).min(MAX_FRAGMENT))
}

/// Splits one message into fragments for a given ATT MTU.
#[derive(Debug, Clone)]
pub struct Fragmenter<'a> {
    msg: &'a [u8],
    frag: usize,
    offset: usize,
    seq: u8,
    started: bool,
}

impl<'a> Fragmenter<'a> {
    /// Prepares to fragment `msg` (at most [`MAX_MESSAGE`] bytes).
    pub fn new(msg: &'a [u8], att_mtu: usize) -> Result<Self, FramingError> {
        if msg.len() > MAX_MESSAGE {
            return Err(FramingError::MessageTooLarge { max: MAX_MESSAGE });
        }
        Ok(Self {
            msg,
            frag: fragment_len(att_mtu)?,
            offset: 0,
            seq: 0,
            started: false,
        })
    }

    /// How many fragments `len` bytes take at this MTU.
    pub fn count(len: usize, att_mtu: usize) -> Result<usize, FramingError> {
        let frag = fragment_len(att_mtu)?;
        if len < frag {
            return Ok(1);
        }
        let first = frag - 3;
        Ok(1 + (len - first).div_ceil(frag - 1))
    }

    /// Writes the next fragment into `buf` (which must hold a whole fragment)
    /// and returns its length; `None` when the message is done.
    pub fn next_into(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.started && self.offset >= self.msg.len() {
            return None;
        }
        let rest = &self.msg[self.offset..];
        let (header_len, mut header) = if !self.started {
            if rest.len() < self.frag {
                (1, [FLAG_START | FLAG_END, 0, 0])
            } else {
                let len = (self.msg.len() as u16).to_le_bytes();
                (3, [FLAG_START, len[0], len[1]])
            }
        } else {
            (1, [self.seq & SEQ_MASK, 0, 0])
        };
        let chunk = rest.len().min(self.frag - header_len);
        if self.offset + chunk == self.msg.len() {
            header[0] |= FLAG_END;
        }
        let total = header_len + chunk;
        if buf.len() < total {
            return None;
        }
        buf[..header_len].copy_from_slice(&header[..header_len]);
        buf[header_len..total].copy_from_slice(&rest[..chunk]);
        self.offset += chunk;
        self.started = true;
        self.seq = self.seq.wrapping_add(1) & SEQ_MASK;
        Some(total)
    }
}

/// If `fragment` carries a whole message (START and END set), checks it like a
/// reassembler would and returns the message; `Ok(None)` if it is part of a
/// longer message. Lets a transport skip the reassembly buffer for the common
/// case.
pub fn single_fragment<'f>(
    fragment: &'f [u8],
    limits: &ReassemblyLimits,
) -> Result<Option<&'f [u8]>, FramingError> {
    let (&header, body) = fragment.split_first().ok_or(FramingError::EmptyFragment)?;
    if header & (FLAG_START | FLAG_END) != FLAG_START | FLAG_END {
        return Ok(None);
    }
    if header & SEQ_MASK != 0 {
        return Err(FramingError::OutOfSequence);
    }
    if body.len() > limits.max_message {
        return Err(FramingError::MessageTooLarge {
            max: limits.max_message,
        });
    }
    Ok(Some(body))
}

/// Limits on one reassembly (SPEC.md §8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Largest message accepted (at most the reassembler's buffer).
    pub max_message: usize,
    /// Most fragments one message may take.
    pub max_fragments: usize,
    /// Time from the first fragment to the last.
    pub timeout_ms: u64,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            max_message: MAX_MESSAGE,
            max_fragments: 64,
            timeout_ms: 10_000,
        }
    }
}

/// Reassembles the fragments of one link into messages, in a fixed buffer of
/// `N` bytes. No heap.
#[derive(Debug, Clone)]
pub struct Reassembler<const N: usize = MAX_MESSAGE> {
    buf: [u8; N],
    len: usize,
    expected: usize,
    next_seq: u8,
    fragments: usize,
    started_at: Option<Timestamp>,
    limits: ReassemblyLimits,
}

impl<const N: usize> Reassembler<N> {
    /// An idle reassembler. `limits.max_message` is capped at `N`.
    pub fn new(mut limits: ReassemblyLimits) -> Self {
        limits.max_message = limits.max_message.min(N);
        Self {
            buf: [0u8; N],
            len: 0,
            expected: 0,
            next_seq: 0,
            fragments: 0,
            started_at: None,
            limits,
        }
    }

    /// Whether a message is partly received.
    pub fn in_progress(&self) -> bool {
        self.started_at.is_some()
    }

    /// Drops any partial message.
    pub fn reset(&mut self) {
        self.len = 0;
        self.expected = 0;
        self.next_seq = 0;
        self.fragments = 0;
        self.started_at = None;
    }

    /// The deadline of the message in progress.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.started_at
            .map(|t| t.add_millis(self.limits.timeout_ms))
    }

    /// Drops the partial message if its deadline has passed; returns whether it did.
    pub fn handle_timeout(&mut self, now: Timestamp) -> bool {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            self.reset();
            true
        } else {
            false
        }
    }

    /// Takes one fragment. Returns the whole message when this fragment
    /// completes one. Any error drops the partial message.
    pub fn push<'s>(
        &'s mut self,
        now: Timestamp,
        fragment: &'s [u8],
    ) -> Result<Option<&'s [u8]>, FramingError> {
        if self.handle_timeout(now) {
            return Err(FramingError::Timeout);
        }
        let result = self.push_inner(now, fragment);
        match result {
            Ok(Some(Done::Single)) => Ok(fragment.get(1..)),
            Ok(Some(Done::Buffered(n))) => {
                self.reset();
                Ok(Some(&self.buf[..n]))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    fn push_inner(
        &mut self,
        now: Timestamp,
        fragment: &[u8],
    ) -> Result<Option<Done>, FramingError> {
        let (&header, body) = fragment.split_first().ok_or(FramingError::EmptyFragment)?;
        let start = header & FLAG_START != 0;
        let end = header & FLAG_END != 0;
        let seq = header & SEQ_MASK;
        if start {
            if self.in_progress() {
                return Err(FramingError::UnexpectedStart);
            }
            if seq != 0 {
                return Err(FramingError::OutOfSequence);
            }
            if end {
                if body.len() > self.limits.max_message {
                    return Err(FramingError::MessageTooLarge {
                        max: self.limits.max_message,
                    });
                }
                return Ok(Some(Done::Single));
            }
            let [l0, l1, chunk @ ..] = body else {
                return Err(FramingError::LengthMismatch);
            };
            let expected = u16::from_le_bytes([*l0, *l1]) as usize;
            if expected > self.limits.max_message {
                return Err(FramingError::MessageTooLarge {
                    max: self.limits.max_message,
                });
            }
            if chunk.len() >= expected {
                // A multi-fragment message must need more than this fragment.
                return Err(FramingError::LengthMismatch);
            }
            self.buf[..chunk.len()].copy_from_slice(chunk);
            self.len = chunk.len();
            self.expected = expected;
            self.next_seq = 1;
            self.fragments = 1;
            self.started_at = Some(now);
            return Ok(None);
        }
        if !self.in_progress() {
            return Err(FramingError::NoMessageInProgress);
        }
        if seq != self.next_seq {
            return Err(FramingError::OutOfSequence);
        }
        self.fragments += 1;
        if self.fragments > self.limits.max_fragments {
            return Err(FramingError::TooManyFragments);
        }
        let new_len = self.len + body.len();
        if new_len > self.expected {
            return Err(FramingError::LengthMismatch);
        }
        self.buf[self.len..new_len].copy_from_slice(body);
        self.len = new_len;
        self.next_seq = (self.next_seq + 1) & SEQ_MASK;
        if end {
            if self.len != self.expected {
                return Err(FramingError::LengthMismatch);
            }
            return Ok(Some(Done::Buffered(self.len)));
        }
        if self.len == self.expected {
            // Complete but not marked final: a peer that never ends.
            return Err(FramingError::LengthMismatch);
        }
        Ok(None)
    }
}

enum Done {
    Single,
    Buffered(usize),
}

/// The TCP transport's framing (SPEC.md §8.4): each fragment preceded by its
/// length as two bytes little-endian.
pub mod stream {
    use super::MAX_FRAGMENT;
    use crate::error::FramingError;

    /// Bytes of the length prefix.
    pub const PREFIX: usize = 2;

    /// Writes `len ‖ fragment` into `out`; returns the bytes written.
    pub fn encode(fragment: &[u8], out: &mut [u8]) -> Result<usize, FramingError> {
        if fragment.is_empty() {
            return Err(FramingError::EmptyFragment);
        }
        if fragment.len() > MAX_FRAGMENT {
            return Err(FramingError::MessageTooLarge { max: MAX_FRAGMENT });
        }
        let total = PREFIX + fragment.len();
        if out.len() < total {
            return Err(FramingError::MessageTooLarge { max: out.len() });
        }
        out[..PREFIX].copy_from_slice(&(fragment.len() as u16).to_le_bytes());
        out[PREFIX..total].copy_from_slice(fragment);
        Ok(total)
    }

    /// Reads a fragment's length prefix from the start of `input`: `Ok(None)`
    /// until two bytes are there; an error for a zero or oversized length,
    /// which announces no valid fragment (SPEC.md §8.4: its bytes are
    /// skipped, and the stream goes on).
    pub fn parse_prefix(input: &[u8]) -> Result<Option<usize>, FramingError> {
        let [a, b, ..] = input else { return Ok(None) };
        match u16::from_le_bytes([*a, *b]) as usize {
            0 => Err(FramingError::EmptyFragment),
            n if n > MAX_FRAGMENT => Err(FramingError::MessageTooLarge { max: MAX_FRAGMENT }),
            n => Ok(Some(n)),
        }
    }

    /// Splits a byte stream into fragments, holding at most one fragment.
    ///
    /// A frame whose length announces no valid fragment (0, or above
    /// [`MAX_FRAGMENT`]) is reported once, and its announced bytes are then
    /// skipped as they arrive, without buffering them: the stream stays in
    /// step and the link goes on (SPEC.md §8.4). The caller drops its partial
    /// message, as for any bad fragment (§8.3).
    #[derive(Debug, Clone)]
    pub struct Decoder {
        buf: [u8; PREFIX + MAX_FRAGMENT],
        len: usize,
        /// Bytes of a bad frame still to skip.
        skip: usize,
    }

    impl Default for Decoder {
        fn default() -> Self {
            Self {
                buf: [0u8; PREFIX + MAX_FRAGMENT],
                len: 0,
                skip: 0,
            }
        }
    }

    impl Decoder {
        /// Takes bytes from `input` until one fragment is complete, a bad
        /// frame is found, or the input runs out. Returns how many bytes it
        /// consumed (at least one of a non-empty input) and what it found: a
        /// fragment, nothing yet, or the error of a bad frame (reported once;
        /// its bytes are skipped by the calls that follow). Call again with
        /// the rest of the input.
        pub fn push<'s>(
            &'s mut self,
            input: &[u8],
        ) -> (usize, Result<Option<&'s [u8]>, FramingError>) {
            if self.len >= PREFIX && self.len == PREFIX + self.expected() {
                self.len = 0;
            }
            if self.skip > 0 {
                let n = self.skip.min(input.len());
                self.skip -= n;
                return (n, Ok(None));
            }
            let mut used = 0;
            if self.len < PREFIX {
                let take = (PREFIX - self.len).min(input.len());
                self.buf[self.len..self.len + take].copy_from_slice(&input[..take]);
                self.len += take;
                used += take;
                if self.len < PREFIX {
                    return (used, Ok(None));
                }
                if let Err(e) = parse_prefix(&self.buf[..PREFIX]) {
                    self.skip = self.expected();
                    self.len = 0;
                    return (used, Err(e));
                }
            }
            let want = self.expected();
            let have = self.len - PREFIX;
            let take = (want - have).min(input.len() - used);
            self.buf[self.len..self.len + take].copy_from_slice(&input[used..used + take]);
            self.len += take;
            used += take;
            if self.len == PREFIX + want {
                (used, Ok(Some(&self.buf[PREFIX..PREFIX + want])))
            } else {
                (used, Ok(None))
            }
        }

        fn expected(&self) -> usize {
            u16::from_le_bytes([self.buf[0], self.buf[1]]) as usize
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn splits_a_stream_at_any_chunking() {
            let mut wire = [0u8; 64];
            let a = encode(&[1, 2, 3], &mut wire).unwrap();
            let b = encode(&[9; 20], &mut wire[a..]).unwrap();
            let wire = &wire[..a + b];
            for chunk in 1..wire.len() {
                let mut d = Decoder::default();
                let mut got = alloc::vec::Vec::new();
                for part in wire.chunks(chunk) {
                    let mut rest = part;
                    while !rest.is_empty() {
                        let (used, frag) = d.push(rest);
                        let frag = frag.unwrap();
                        if let Some(f) = frag {
                            got.push(f.to_vec());
                        }
                        rest = &rest[used..];
                    }
                }
                assert_eq!(
                    got,
                    alloc::vec![alloc::vec![1, 2, 3], alloc::vec![9; 20]],
                    "chunk {chunk}"
                );
            }
        }

        #[test]
        fn reports_zero_and_oversized_lengths_once_and_skips_their_bytes() {
            let mut wire = alloc::vec::Vec::new();
            wire.extend_from_slice(&[0, 0]);
            let big = MAX_FRAGMENT + 1;
            wire.extend_from_slice(&(big as u16).to_le_bytes());
            wire.extend(core::iter::repeat_n(0xee, big));
            let mut ok = [0u8; 8];
            let n = encode(&[4, 5, 6], &mut ok).unwrap();
            wire.extend_from_slice(&ok[..n]);
            for chunk in [1, 7, wire.len()] {
                let mut d = Decoder::default();
                let (mut errors, mut fragments) = (alloc::vec::Vec::new(), alloc::vec::Vec::new());
                for part in wire.chunks(chunk) {
                    let mut rest = part;
                    while !rest.is_empty() {
                        let (used, got) = d.push(rest);
                        assert!(used >= 1);
                        match got {
                            Ok(Some(f)) => fragments.push(f.to_vec()),
                            Ok(None) => {}
                            Err(e) => errors.push(e),
                        }
                        rest = &rest[used..];
                    }
                }
                assert_eq!(
                    errors,
                    [
                        FramingError::EmptyFragment,
                        FramingError::MessageTooLarge { max: MAX_FRAGMENT }
                    ],
                    "chunk {chunk}"
                );
                assert_eq!(
                    fragments,
                    [alloc::vec![4, 5, 6]],
                    "chunk {chunk}: in step after them"
                );
            }
        }
    }
}

#[cfg(feature = "alloc")]
pub use pool::ReassemblyPool;

#[cfg(feature = "alloc")]
mod pool {
    use alloc::boxed::Box;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;

    use super::{Reassembler, ReassemblyLimits, FLAG_START};
    use crate::error::FramingError;
    use crate::wire::MAX_MESSAGE;
    use crate::Timestamp;

    /// Reassembly for many links with a cap on buffers in use at once: a
    /// buffer exists only while a multi-fragment message is in progress, so
    /// idle links and single-fragment messages cost nothing (SPEC.md §8.3).
    #[derive(Debug)]
    pub struct ReassemblyPool<K: Ord> {
        active: BTreeMap<K, Box<Reassembler<MAX_MESSAGE>>>,
        max_concurrent: usize,
        limits: ReassemblyLimits,
    }

    impl<K: Ord + Clone> ReassemblyPool<K> {
        /// A pool allowing `max_concurrent` reassemblies in progress.
        pub fn new(max_concurrent: usize, limits: ReassemblyLimits) -> Self {
            Self {
                active: BTreeMap::new(),
                max_concurrent,
                limits,
            }
        }

        /// Reassemblies in progress.
        pub fn in_progress(&self) -> usize {
            self.active.len()
        }

        /// Takes one fragment from link `key`. A link with a message in
        /// progress behaves exactly like a lone [`Reassembler`].
        pub fn push(
            &mut self,
            key: &K,
            now: Timestamp,
            fragment: &[u8],
        ) -> Result<Option<Vec<u8>>, FramingError> {
            if let Some(r) = self.active.get_mut(key) {
                let result = r.push(now, fragment).map(|m| m.map(<[u8]>::to_vec));
                if !r.in_progress() {
                    self.active.remove(key);
                }
                return result;
            }
            let header = *fragment.first().ok_or(FramingError::EmptyFragment)?;
            if let Some(msg) = super::single_fragment(fragment, &self.limits)? {
                // No buffer needed.
                return Ok(Some(msg.to_vec()));
            }
            if header & FLAG_START == 0 {
                return Err(FramingError::NoMessageInProgress);
            }
            if self.active.len() >= self.max_concurrent {
                return Err(FramingError::TooManyReassemblies);
            }
            let mut r = Box::new(Reassembler::new(self.limits));
            let result = r.push(now, fragment).map(|m| m.map(<[u8]>::to_vec));
            if r.in_progress() {
                self.active.insert(key.clone(), r);
            }
            result
        }

        /// Drops every reassembly past its deadline; returns how many.
        pub fn handle_timeout(&mut self, now: Timestamp) -> usize {
            let before = self.active.len();
            self.active.retain(|_, r| !r.handle_timeout(now));
            before - self.active.len()
        }

        /// The earliest deadline.
        pub fn poll_timeout(&self) -> Option<Timestamp> {
            self.active.values().filter_map(|r| r.poll_timeout()).min()
        }

        /// Forgets link `key` (it disconnected).
        pub fn remove(&mut self, key: &K) {
            self.active.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize, mtu: usize) {
        let msg: [u8; MAX_MESSAGE] = core::array::from_fn(|i| (i * 7) as u8);
        let msg = &msg[..len];
        let mut f = Fragmenter::new(msg, mtu).unwrap();
        let mut r: Reassembler = Reassembler::new(ReassemblyLimits::default());
        let mut buf = [0u8; MAX_FRAGMENT];
        let mut count = 0;
        let mut got = None;
        while let Some(n) = f.next_into(&mut buf) {
            assert!(n <= mtu - 3);
            count += 1;
            if let Some(m) = r.push(Timestamp(0), &buf[..n]).unwrap() {
                got = Some(m.to_vec());
            }
        }
        assert_eq!(
            count,
            Fragmenter::count(len, mtu).unwrap(),
            "len {len} mtu {mtu}"
        );
        assert_eq!(got.as_deref(), Some(msg));
    }

    #[test]
    fn fragment_and_reassemble_at_23_and_247() {
        for mtu in [23, 24, 27, 100, 247, 517] {
            for len in [
                0,
                1,
                18,
                19,
                20,
                21,
                60,
                108,
                141,
                243,
                244,
                245,
                600,
                MAX_MESSAGE,
            ] {
                roundtrip(len, mtu);
            }
        }
    }

    #[test]
    fn oversized_claim_is_refused_before_buffering() {
        let mut r: Reassembler = Reassembler::new(ReassemblyLimits::default());
        let too_big = (MAX_MESSAGE as u16 + 1).to_le_bytes();
        assert_eq!(
            r.push(Timestamp(0), &[FLAG_START, too_big[0], too_big[1], 1, 2]),
            Err(FramingError::MessageTooLarge { max: MAX_MESSAGE })
        );
        assert!(!r.in_progress());
    }

    #[test]
    fn sequence_gaps_duplicates_and_timeouts() {
        let mut r: Reassembler = Reassembler::new(ReassemblyLimits::default());
        r.push(Timestamp(0), &[FLAG_START, 10, 0, 1, 2, 3]).unwrap();
        // Duplicate of the start: refused, partial dropped.
        assert_eq!(
            r.push(Timestamp(0), &[FLAG_START, 10, 0, 1]),
            Err(FramingError::UnexpectedStart)
        );
        r.push(Timestamp(0), &[FLAG_START, 10, 0, 1, 2, 3]).unwrap();
        assert_eq!(
            r.push(Timestamp(0), &[2, 4]),
            Err(FramingError::OutOfSequence)
        );
        assert_eq!(
            r.push(Timestamp(0), &[1, 4]),
            Err(FramingError::NoMessageInProgress)
        );
        r.push(Timestamp(0), &[FLAG_START, 10, 0, 1, 2, 3]).unwrap();
        assert_eq!(
            r.push(Timestamp(10_000), &[1 | FLAG_END, 4, 5, 6, 7, 8, 9, 10]),
            Err(FramingError::Timeout)
        );
        r.push(Timestamp(0), &[FLAG_START, 10, 0, 1, 2, 3]).unwrap();
        // Too many bytes for the announced length.
        assert_eq!(
            r.push(Timestamp(0), &[1, 4, 5, 6, 7, 8, 9, 10, 11]),
            Err(FramingError::LengthMismatch)
        );
        r.push(Timestamp(0), &[FLAG_START, 10, 0, 1, 2, 3]).unwrap();
        // Final fragment short of the announced length.
        assert_eq!(
            r.push(Timestamp(0), &[1 | FLAG_END, 4]),
            Err(FramingError::LengthMismatch)
        );
    }

    #[test]
    fn fragment_count_limit() {
        let limits = ReassemblyLimits {
            max_fragments: 3,
            ..Default::default()
        };
        let mut r: Reassembler = Reassembler::new(limits);
        r.push(Timestamp(0), &[FLAG_START, 100, 0, 1]).unwrap();
        r.push(Timestamp(0), &[1, 1]).unwrap();
        r.push(Timestamp(0), &[2, 1]).unwrap();
        assert_eq!(
            r.push(Timestamp(0), &[3, 1]),
            Err(FramingError::TooManyFragments)
        );
    }

    #[test]
    fn pool_caps_concurrent_reassemblies_and_frees_buffers() {
        let mut pool = ReassemblyPool::new(2, ReassemblyLimits::default());
        pool.push(&1u32, Timestamp(0), &[FLAG_START, 4, 0, 1])
            .unwrap();
        pool.push(&2u32, Timestamp(0), &[FLAG_START, 4, 0, 1])
            .unwrap();
        assert_eq!(
            pool.push(&3u32, Timestamp(0), &[FLAG_START, 4, 0, 1]),
            Err(FramingError::TooManyReassemblies)
        );
        // Single-fragment messages need no buffer and pass even when full.
        assert_eq!(
            pool.push(&3u32, Timestamp(0), &[FLAG_START | FLAG_END, 9])
                .unwrap(),
            Some(alloc::vec![9])
        );
        assert_eq!(
            pool.push(&1u32, Timestamp(0), &[1 | FLAG_END, 2, 3, 4])
                .unwrap(),
            Some(alloc::vec![1, 2, 3, 4])
        );
        assert_eq!(pool.in_progress(), 1);
        assert_eq!(pool.handle_timeout(Timestamp(60_000)), 1);
        assert_eq!(pool.in_progress(), 0);
    }

    /// Found by the `reassembler` fuzz target: an empty fragment on a link whose
    /// partial message had passed its deadline got `EmptyFragment` from the
    /// pool but `Timeout` from a lone reassembler. Now both say `Timeout` and
    /// both drop the partial message.
    #[test]
    fn pool_empty_fragment_after_deadline_reports_timeout_like_a_lone_reassembler() {
        let mut pool = ReassemblyPool::new(2, ReassemblyLimits::default());
        let mut lone: Reassembler = Reassembler::new(ReassemblyLimits::default());
        let start = [FLAG_START, 4, 0, 1];
        pool.push(&1u32, Timestamp(0), &start).unwrap();
        lone.push(Timestamp(0), &start).unwrap();
        let late = Timestamp(10_000);
        assert_eq!(pool.push(&1u32, late, &[]), Err(FramingError::Timeout));
        assert_eq!(lone.push(late, &[]), Err(FramingError::Timeout));
        assert_eq!(pool.in_progress(), 0);
        assert!(!lone.in_progress());
        // Before the deadline, an empty fragment drops the partial message too.
        pool.push(&1u32, Timestamp(0), &start).unwrap();
        assert_eq!(
            pool.push(&1u32, Timestamp(1), &[]),
            Err(FramingError::EmptyFragment)
        );
        assert_eq!(pool.in_progress(), 0);
    }
}
