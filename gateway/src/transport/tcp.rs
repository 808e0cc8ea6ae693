//! The TCP transport (SPEC.md §8.4): the BLE fragments of a configured ATT MTU,
//! each preceded by a two-byte length.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vouch_proto::framing::{stream, Fragmenter, Reassembler, ReassemblyLimits, MAX_FRAGMENT};
use vouch_proto::Timestamp;

use super::{Link, LinkError};

/// A TCP connection carrying Vouch messages.
pub struct TcpLink {
    stream: TcpStream,
    peer: SocketAddr,
    att_mtu: usize,
    decoder: stream::Decoder,
    reassembler: Box<Reassembler>,
    /// Bytes read but not yet given to the decoder.
    pending: Vec<u8>,
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
            decoder: stream::Decoder::default(),
            reassembler: Box::new(Reassembler::new(limits)),
            pending: Vec::new(),
            epoch: tokio::time::Instant::now(),
            write_timeout: Duration::from_secs(10),
        })
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.epoch.elapsed().as_millis() as u64)
    }

    /// Feeds pending bytes through the decoder and reassembler; returns a
    /// whole message if one completed.
    fn drain(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        let now = self.now();
        let mut at = 0;
        let mut out = None;
        while at < self.pending.len() && out.is_none() {
            let (used, fragment) = self.decoder.push(&self.pending[at..])?;
            at += used;
            if let Some(fragment) = fragment {
                if let Some(msg) = self.reassembler.push(now, fragment)? {
                    out = Some(msg.to_vec());
                }
            }
        }
        self.pending.drain(..at);
        Ok(out)
    }
}

impl Link for TcpLink {
    async fn send(&mut self, msg: &[u8]) -> Result<(), LinkError> {
        let mut fragments = Fragmenter::new(msg, self.att_mtu)?;
        let mut wire = Vec::with_capacity(msg.len() + msg.len() / 8 + 8);
        let mut frag = [0u8; MAX_FRAGMENT];
        let mut framed = [0u8; MAX_FRAGMENT + stream::PREFIX];
        while let Some(n) = fragments.next_into(&mut frag) {
            let m = stream::encode(&frag[..n], &mut framed)?;
            wire.extend_from_slice(&framed[..m]);
        }
        tokio::time::timeout(self.write_timeout, self.stream.write_all(&wire))
            .await
            .map_err(|_| LinkError::Timeout)??;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        loop {
            if let Some(msg) = self.drain()? {
                return Ok(Some(msg));
            }
            let mut buf = [0u8; 2048];
            // `read` is cancel-safe, and every byte read is kept in `pending`
            // before the next await, so cancelling `recv` loses nothing.
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    fn peer(&self) -> String {
        format!("tcp:{}", self.peer)
    }
}
