//! The TCP transport (SPEC.md §8.4): the BLE fragments of a configured ATT MTU,
//! each preceded by a two-byte length.
//!
//! An idle link holds no buffers: bytes waiting to be parsed and a reassembly
//! buffer exist only while a message is partly received.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;
use vouch_proto::framing::{
    single_fragment, stream, Fragmenter, Reassembler, ReassemblyLimits, MAX_FRAGMENT,
};
use vouch_proto::Timestamp;

use crate::link::{push_fragment, Link, LinkError};

/// A TCP connection carrying Vouch messages.
pub struct TcpLink {
    stream: TcpStream,
    peer: SocketAddr,
    att_mtu: usize,
    limits: ReassemblyLimits,
    /// Exists only while a multi-fragment message is in progress.
    reassembler: Option<Box<Reassembler>>,
    /// Bytes read but not yet parsed.
    pending: Vec<u8>,
    /// Bytes of a rejected oversized frame still to be discarded as they
    /// arrive (never buffered).
    skip: usize,
    epoch: tokio::time::Instant,
    write_timeout: Duration,
}

impl TcpLink {
    /// Wraps an accepted or connected stream; `att_mtu` sets the fragment size.
    pub fn new(
        stream: TcpStream,
        att_mtu: usize,
        limits: ReassemblyLimits,
    ) -> std::io::Result<Self> {
        let peer = stream.peer_addr()?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            peer,
            att_mtu,
            limits,
            reassembler: None,
            pending: Vec::new(),
            skip: 0,
            epoch: tokio::time::Instant::now(),
            write_timeout: Duration::from_secs(10),
        })
    }

    /// Parses complete fragments out of `pending`; returns a whole message if
    /// one completed. A bad frame costs only the partial message (SPEC.md
    /// §8.3, §8.4): an empty frame is skipped, and a frame announcing more
    /// than 512 bytes is discarded as its bytes arrive, without buffering
    /// them; ending the link instead would make any injected frame a kill
    /// switch for the session (§7.4).
    fn drain(&mut self) -> Option<Vec<u8>> {
        let now = Timestamp(self.epoch.elapsed().as_millis() as u64);
        let peer = self.peer;
        let mut at = 0;
        let mut out = None;
        while out.is_none() {
            if self.skip > 0 {
                let n = self.skip.min(self.pending.len() - at);
                at += n;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
            }
            let Some(&[l0, l1]) = self.pending.get(at..at + stream::PREFIX) else {
                break;
            };
            let len = usize::from(u16::from_le_bytes([l0, l1]));
            if len == 0 || len > MAX_FRAGMENT {
                at += stream::PREFIX;
                self.skip = len;
                self.reassembler = None;
                debug!(link = %peer, len, "frame of a length no fragment has; partial message dropped");
                continue;
            }
            let end = at + stream::PREFIX + len;
            if self.pending.len() < end {
                break;
            }
            let fragment = &self.pending[at + stream::PREFIX..end];
            at = end;
            if self
                .reassembler
                .as_mut()
                .is_some_and(|r| r.handle_timeout(now))
            {
                debug!(link = %peer, "reassembly timed out; partial message dropped");
                self.reassembler = None;
            }
            if self.reassembler.is_none() {
                // The common case, a whole message in one fragment, needs no buffer.
                match single_fragment(fragment, &self.limits) {
                    Ok(Some(msg)) => {
                        out = Some(msg.to_vec());
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        debug!(link = %peer, error = %e, "fragment rejected");
                        continue;
                    }
                }
            }
            let limits = self.limits;
            let r = self
                .reassembler
                .get_or_insert_with(|| Box::new(Reassembler::new(limits)));
            let peer = format!("tcp:{peer}");
            if let Some(msg) = push_fragment(r, now, fragment, &peer) {
                out = Some(msg.to_vec());
            }
            if !r.in_progress() {
                // Completed, or a bad fragment dropped it: no buffer while idle.
                self.reassembler = None;
            }
        }
        self.pending.drain(..at);
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
        out
    }
}

/// Fragments `msg` and prefixes each fragment with its length.
fn frame(msg: &[u8], att_mtu: usize) -> Result<Vec<u8>, LinkError> {
    let mut fragments = Fragmenter::new(msg, att_mtu)?;
    let mut wire = Vec::with_capacity(msg.len() + msg.len() / 8 + 8);
    let mut frag = [0u8; MAX_FRAGMENT];
    let mut framed = [0u8; MAX_FRAGMENT + stream::PREFIX];
    while let Some(n) = fragments.next_into(&mut frag) {
        let m = stream::encode(&frag[..n], &mut framed)?;
        wire.extend_from_slice(&framed[..m]);
    }
    Ok(wire)
}

impl Link for TcpLink {
    async fn send(&mut self, msg: &[u8]) -> Result<(), LinkError> {
        // Built outside the future's state: nothing large lives across an await.
        let wire = frame(msg, self.att_mtu)?;
        tokio::time::timeout(self.write_timeout, self.stream.write_all(&wire))
            .await
            .map_err(|_| LinkError::Timeout)??;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            if let Some(msg) = self.drain() {
                return Ok(Some(msg));
            }
            // Wait without holding a buffer (an idle session's task stays
            // small), then read what is there. `readable` is cancel-safe and
            // every byte read is kept in `pending`, so cancelling loses nothing.
            self.stream.readable().await?;
            let mut buf = [0u8; 1024];
            match self.stream.try_read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn peer(&self) -> String {
        format!("tcp:{}", self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(att_mtu: usize) -> (TcpLink, TcpLink) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            TcpLink::new(a.unwrap(), att_mtu, ReassemblyLimits::default()).unwrap(),
            TcpLink::new(b.unwrap().0, att_mtu, ReassemblyLimits::default()).unwrap(),
        )
    }

    #[tokio::test]
    async fn messages_of_every_size_cross_at_mtu_23_and_247() {
        for mtu in [23, 247] {
            let (mut a, mut b) = pair(mtu).await;
            for len in [1, 19, 20, 108, 138, 244, 600, 1024] {
                let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
                a.send(&msg).await.unwrap();
                assert_eq!(b.recv().await.unwrap(), Some(msg), "len {len} mtu {mtu}");
                assert!(
                    b.reassembler.is_none() && b.pending.capacity() == 0,
                    "idle link holds no buffers"
                );
            }
            drop(a);
            assert_eq!(b.recv().await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn a_bad_fragment_costs_only_its_message_not_the_link() {
        let (a, mut b) = pair(247).await;
        let mut raw = a.stream;
        // A stray continuation, an empty-bodied start, then a real message.
        for frag in [
            &[0x05u8, 1, 2][..],
            &[0x80, 0x10, 0x00, 9][..],
            &[0x41, 9][..],
        ] {
            raw.write_all(&(frag.len() as u16).to_le_bytes())
                .await
                .unwrap();
            raw.write_all(frag).await.unwrap();
        }
        let good = [0xc0u8, 1, 2, 3];
        raw.write_all(&(good.len() as u16).to_le_bytes())
            .await
            .unwrap();
        raw.write_all(&good).await.unwrap();
        assert_eq!(b.recv().await.unwrap(), Some(vec![1, 2, 3]));
    }

    #[tokio::test]
    async fn empty_and_oversized_frames_cost_only_their_message_not_the_link() {
        let (a, mut b) = pair(247).await;
        let mut raw = a.stream;
        let good = |n: u8| [4u8, 0, 0xc0, n, n, n];
        // The start of a two-fragment message, then an empty frame: the
        // partial message is dropped, its continuation refused.
        raw.write_all(&[5, 0, 0x80, 4, 0, 1, 1]).await.unwrap();
        raw.write_all(&[0, 0]).await.unwrap();
        raw.write_all(&[3, 0, 0x41, 1, 1]).await.unwrap();
        raw.write_all(&good(1)).await.unwrap();
        assert_eq!(b.recv().await.unwrap(), Some(vec![1, 1, 1]));
        // Frames announcing 513 and 65 535 bytes: their bytes are skipped
        // (arriving in pieces), and what follows is read.
        for len in [513usize, 65_535] {
            raw.write_all(&(len as u16).to_le_bytes()).await.unwrap();
            let junk = vec![0xc0u8; len];
            raw.write_all(&junk[..len / 2]).await.unwrap();
            raw.flush().await.unwrap();
            raw.write_all(&junk[len / 2..]).await.unwrap();
            raw.write_all(&good(2)).await.unwrap();
            assert_eq!(b.recv().await.unwrap(), Some(vec![2, 2, 2]), "len {len}");
            assert!(b.pending.capacity() == 0 && b.skip == 0);
        }
        drop(raw);
        assert_eq!(b.recv().await.unwrap(), None);
    }
}
