//! The BLE link model: what a message costs on a real radio.
//!
//! A Vouch message is cut into fragments of `ATT_MTU − 3` bytes (SPEC.md
//! §8.2, with `vouch_proto::framing`). Each fragment is one ATT PDU (3-byte
//! ATT header) in an L2CAP frame (4-byte header), split into link-layer
//! packets of at most `data_length` payload bytes. A link-layer packet costs
//! `preamble + access address (4) + header (2) + payload + CRC (3)` bytes on
//! air (preamble 1 byte at 1M, 2 at 2M; no link-layer MIC, Vouch encrypts
//! above it), followed by 150 µs inter-frame space, the peer's empty
//! acknowledgement, and another 150 µs.
//!
//! The sender waits for the next connection event (a uniformly random phase
//! within the connection interval: messages are produced when processing
//! ends, not on the radio's schedule), then sends up to `packets_per_event`
//! packets per event. A lost packet (probability `loss`) is not acknowledged;
//! the event ends and the packet goes again in the next event. Everything is
//! virtual time drawn from the link's own seeded RNG, so the figures are the
//! same for the same seed.

use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use vouch_proto::framing::{fragment_len, Fragmenter};

use crate::scenario::LinkParams;

/// Bytes around a link-layer payload besides the preamble.
const LL_OVERHEAD: usize = 4 + 2 + 3;
/// ATT header + L2CAP header.
const ATT_L2CAP_OVERHEAD: usize = 3 + 4;
/// Inter-frame space, µs.
const T_IFS_US: f64 = 150.0;

/// What one message cost on the air.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Transfer {
    /// From ready-to-send to the last packet acknowledged, µs.
    pub time_us: f64,
    /// Bytes on air, retransmissions and acknowledgements included.
    pub air_bytes: u64,
    /// Vouch framing fragments (ATT PDUs).
    pub fragments: u32,
    /// Link-layer packets, retransmissions included.
    pub packets: u32,
    /// Retransmitted link-layer packets.
    pub retransmissions: u32,
}

impl std::ops::AddAssign for Transfer {
    fn add_assign(&mut self, o: Transfer) {
        self.time_us += o.time_us;
        self.air_bytes += o.air_bytes;
        self.fragments += o.fragments;
        self.packets += o.packets;
        self.retransmissions += o.retransmissions;
    }
}

/// The model, with its parameters.
#[derive(Debug, Clone, Copy)]
pub struct LinkModel {
    params: LinkParams,
}

/// A uniform draw in [0, 1).
pub(crate) fn unit(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

impl LinkModel {
    /// A model with these parameters.
    pub fn new(params: LinkParams) -> Self {
        Self { params }
    }

    /// The parameters.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    fn packet_us(&self, payload: usize) -> (f64, u64) {
        let preamble = if self.params.phy_mbps == 2 { 2 } else { 1 };
        let bytes = preamble + LL_OVERHEAD + payload;
        let empty = preamble + LL_OVERHEAD;
        let us_per_byte = 8.0 / f64::from(self.params.phy_mbps);
        let t = (bytes + empty) as f64 * us_per_byte + 2.0 * T_IFS_US;
        (t, (bytes + empty) as u64)
    }

    /// The link-layer payload sizes of one message of `len` bytes at `att_mtu`.
    pub fn packets_of(&self, len: usize, att_mtu: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let frag = fragment_len(att_mtu).unwrap_or(20);
        let n = Fragmenter::count(len, att_mtu).unwrap_or(len.div_ceil(frag.max(1)));
        // Fragment sizes: header 1 (+2 length on a multi-fragment start) + chunk.
        let mut remaining = len;
        for i in 0..n {
            let header = if n > 1 && i == 0 { 3 } else { 1 };
            let chunk = remaining.min(frag - header);
            remaining -= chunk;
            let mut pdu = header + chunk + ATT_L2CAP_OVERHEAD;
            while pdu > 0 {
                let p = pdu.min(self.params.data_length);
                out.push(p);
                pdu -= p;
            }
        }
        out
    }

    /// Sends one message of `len` bytes at `att_mtu` through the model.
    pub fn transfer(&self, len: usize, att_mtu: usize, rng: &mut ChaCha20Rng) -> Transfer {
        let packets = self.packets_of(len, att_mtu);
        let interval_us = self.params.interval_ms * 1000.0;
        let mut t = Transfer {
            fragments: Fragmenter::count(len, att_mtu).unwrap_or(1) as u32,
            ..Transfer::default()
        };
        // Wait for the next connection event.
        let mut now = unit(rng) * interval_us;
        let mut event_start = now;
        let mut in_event = 0usize;
        let mut i = 0;
        while i < packets.len() {
            let (us, bytes) = self.packet_us(packets[i]);
            // The event is full (packet budget or interval): next event.
            if in_event >= self.params.packets_per_event || now + us - event_start > interval_us {
                event_start += interval_us;
                now = event_start;
                in_event = 0;
            }
            now += us;
            in_event += 1;
            t.packets += 1;
            t.air_bytes += bytes;
            if unit(rng) < self.params.loss {
                // Not acknowledged: the event closes, the packet goes again.
                t.retransmissions += 1;
                in_event = self.params.packets_per_event;
                continue;
            }
            i += 1;
        }
        t.time_us = now;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn small_mtu_costs_more_packets_and_time_than_large() {
        let m = LinkModel::new(LinkParams {
            data_length: 27,
            ..LinkParams::default()
        });
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let big = m.transfer(108, 247, &mut rng);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let small = m.transfer(108, 23, &mut rng);
        assert_eq!(big.fragments, 1);
        assert_eq!(small.fragments, 6);
        assert!(small.packets > big.packets);
        assert!(small.time_us > big.time_us);
        assert!(small.air_bytes > big.air_bytes);
    }

    #[test]
    fn loss_adds_retransmissions_in_later_events() {
        let lossy = LinkModel::new(LinkParams {
            loss: 0.5,
            ..LinkParams::default()
        });
        let clean = LinkModel::new(LinkParams::default());
        let (mut a, mut b) = (Transfer::default(), Transfer::default());
        for s in 0..50 {
            a += lossy.transfer(138, 23, &mut ChaCha20Rng::seed_from_u64(s));
            b += clean.transfer(138, 23, &mut ChaCha20Rng::seed_from_u64(s));
        }
        assert!(a.retransmissions > 0 && b.retransmissions == 0);
        assert!(a.time_us > b.time_us + 30_000.0);
    }
}
