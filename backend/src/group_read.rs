//! Reads of the store that requests arriving together share.
//!
//! A revocation wakes every gateway's feed poll at once; each answered
//! gateway polls again at once. At 10,000 gateways that was 10,000 reads of
//! the event log and 10,000 reads of the gateway's status for each wake-up,
//! one after another, each a hand-off to a store connection: about a second
//! of both cores before the last gateway heard of the revocation.
//!
//! A [`GroupReads`] lets such requests share one read without ever being
//! answered from a read that began before they asked. Requests of one
//! *group* (the feed: its cursor; gateway checks: all alike) join the
//! group's *open* read: one that has not started. A read starts only when
//! the group's previous read is done, and from then on newcomers join the
//! next one. So at most one read per group is in flight, everything that
//! arrives meanwhile waits for one more, and each answer comes from a read
//! that started after its request joined it: the store as it stood at some
//! moment after the request asked, as if it had read alone.
//!
//! A read that fails fails for the request that ran it; the next request
//! waiting on it reads again (tokio's [`OnceCell::get_or_try_init`]).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OnceCell;

/// Shared reads by group `G`; each request brings a key `K` (what it needs
/// read; `()` when the group says it all) and gets the whole read's `T`.
pub(crate) struct GroupReads<G, K, T> {
    groups: Mutex<HashMap<G, Group<K, T>>>,
}

/// One group: the read that newcomers join, and whose turn it is to read.
struct Group<K, T> {
    open: Option<Arc<Read<K, T>>>,
    /// Held by the read in flight.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// One read: the keys of the requests that joined it, and its result.
struct Read<K, T> {
    keys: Mutex<Vec<K>>,
    result: OnceCell<Arc<T>>,
}

/// Groups kept without an open read before they are swept (a group whose
/// last read failed with nobody left to retry it leaves an empty entry).
const KEPT_GROUPS: usize = 256;

impl<G, K, T> std::fmt::Debug for GroupReads<G, K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups = self.groups.try_lock().map(|g| g.len()).ok();
        f.debug_struct("GroupReads")
            .field("groups", &groups)
            .finish()
    }
}

impl<G, K, T> Default for GroupReads<G, K, T> {
    fn default() -> Self {
        Self {
            groups: Mutex::new(HashMap::new()),
        }
    }
}

impl<G: Hash + Eq + Clone, K: Clone, T> GroupReads<G, K, T> {
    /// Joins `group`'s open read with `key` and waits for its result.
    /// `read` runs (for the whole read, with every key that joined it) by
    /// whichever joined request gets to it first once the group's previous
    /// read is done.
    pub(crate) async fn read<E, F, Fut>(&self, group: G, key: K, read: F) -> Result<Arc<T>, E>
    where
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let (this, turn) = {
            let mut groups = self.lock();
            if groups.len() >= KEPT_GROUPS {
                groups.retain(|_, g| g.open.is_some() || Arc::strong_count(&g.turn) > 1);
            }
            let g = groups.entry(group.clone()).or_insert_with(|| Group {
                open: None,
                turn: Arc::new(tokio::sync::Mutex::new(())),
            });
            let this = g
                .open
                .get_or_insert_with(|| {
                    Arc::new(Read {
                        keys: Mutex::new(Vec::new()),
                        result: OnceCell::new(),
                    })
                })
                .clone();
            this.keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(key);
            (this, g.turn.clone())
        };
        let result = this
            .result
            .get_or_try_init(|| async {
                let _turn = turn.lock().await;
                // Sealed: whoever comes now joins the next read.
                self.close(&group, &this, false);
                let keys = this
                    .keys
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let out = read(keys).await.map(Arc::new);
                // Done: a group with nobody waiting for a next read goes.
                self.close(&group, &this, true);
                out
            })
            .await?;
        Ok(result.clone())
    }

    /// Takes `read` out of `group` as its open read (if it still is), and
    /// when `done`, drops the group if no read is open in it.
    fn close(&self, group: &G, read: &Arc<Read<K, T>>, done: bool) {
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group) else {
            return;
        };
        if g.open.as_ref().is_some_and(|o| Arc::ptr_eq(o, read)) {
            g.open = None;
        }
        if done && g.open.is_none() {
            groups.remove(group);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<G, Group<K, T>>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// A "store" whose value is a counter; a read returns the keys it was
    /// given and the counter as the read found it.
    type Reads = GroupReads<u8, u32, (Vec<u32>, u32)>;

    /// The store (a counter), the reads done, the shared reads.
    #[derive(Default)]
    struct World {
        store: AtomicU32,
        reads_done: AtomicU32,
        reads: Reads,
    }

    async fn read(w: Arc<World>, key: u32) -> (Vec<u32>, u32) {
        let r = w
            .reads
            .read(0, key, |keys| async {
                let found = w.store.load(Ordering::SeqCst);
                // Long enough for the others to arrive meanwhile.
                tokio::time::sleep(Duration::from_millis(20)).await;
                w.reads_done.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>((keys, found))
            })
            .await
            .unwrap_or_else(|()| panic!("the read cannot fail"));
        (*r).clone()
    }

    #[tokio::test]
    async fn requests_arriving_during_a_read_share_the_next_one() {
        let w = Arc::new(World::default());
        let first = tokio::spawn(read(w.clone(), 1));
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The first read has begun; what it found is 0, the store is 7.
        w.store.store(7, Ordering::SeqCst);
        let mut later = tokio::task::JoinSet::new();
        for k in 2..50 {
            let w = w.clone();
            later.spawn(async move { (k, read(w, k).await) });
        }
        let first = first.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, (vec![1], 0), "the first request read alone");
        while let Some(r) = later.join_next().await {
            let (k, (keys, value)) = r.unwrap_or_else(|e| panic!("{e}"));
            assert!(keys.contains(&k), "request {k}'s key is in its read");
            assert_eq!(
                value, 7,
                "request {k} was answered by a read that began after it asked"
            );
        }
        assert_eq!(
            w.reads_done.load(Ordering::SeqCst),
            2,
            "48 later requests, one read"
        );
        assert!(
            w.reads.lock().is_empty(),
            "a group with nothing open is dropped"
        );
    }

    #[tokio::test]
    async fn a_read_that_fails_is_read_again_for_those_still_waiting() {
        let reads: GroupReads<u8, u32, Vec<u32>> = GroupReads::default();
        let tries = AtomicU32::new(0);
        let ask = |key| {
            reads.read(0, key, |keys| {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    // The second read (the first that 1 and 2 share) fails.
                    if n == 1 {
                        Err("store down")
                    } else {
                        Ok(keys)
                    }
                }
            })
        };
        // 0 reads alone; 1 and 2 join the next read while it runs.
        let (zero, one, two) = tokio::join!(ask(0), ask(1), ask(2));
        assert_eq!(zero.map(|k| (*k).clone()), Ok(vec![0]));
        assert_eq!(
            one.err(),
            Some("store down"),
            "the request that read sees its failure"
        );
        assert_eq!(
            two.map(|k| (*k).clone()),
            Ok(vec![1, 2]),
            "the other reads again, with both keys"
        );
        assert_eq!(tries.load(Ordering::SeqCst), 3);
    }
}
