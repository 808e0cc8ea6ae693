//! An in-memory link for tests and the simulator: whole messages over
//! channels, with the same fragmentation and reassembly checks as the real
//! transports when an ATT MTU is set.

use tokio::sync::mpsc;
use vouch_proto::framing::{Fragmenter, Reassembler, ReassemblyLimits, MAX_FRAGMENT};
use vouch_proto::Timestamp;

use super::{Link, LinkError};

/// One end of an in-memory link.
pub struct MemoryLink {
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    name: String,
    att_mtu: usize,
    reassembler: Reassembler,
}

/// A connected pair of in-memory links carrying fragments of `att_mtu`.
pub fn pair(att_mtu: usize, a: &str, b: &str) -> (MemoryLink, MemoryLink) {
    let (tx_a, rx_b) = mpsc::channel(256);
    let (tx_b, rx_a) = mpsc::channel(256);
    let limits = ReassemblyLimits::default();
    (
        MemoryLink {
            tx: tx_a,
            rx: rx_a,
            name: a.to_string(),
            att_mtu,
            reassembler: Reassembler::new(limits),
        },
        MemoryLink {
            tx: tx_b,
            rx: rx_b,
            name: b.to_string(),
            att_mtu,
            reassembler: Reassembler::new(limits),
        },
    )
}

impl MemoryLink {
    /// Sends one raw fragment (for tests that misbehave on purpose).
    pub async fn send_fragment(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
        self.tx
            .send(fragment.to_vec())
            .await
            .map_err(|_| LinkError::Io(std::io::ErrorKind::BrokenPipe.into()))
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
            let Some(fragment) = self.rx.recv().await else {
                return Ok(None);
            };
            if let Some(msg) =
                super::push_fragment(&mut self.reassembler, Timestamp(0), &fragment, &self.name)
            {
                return Ok(Some(msg.to_vec()));
            }
        }
    }

    fn peer(&self) -> String {
        format!("memory:{}", self.name)
    }
}
