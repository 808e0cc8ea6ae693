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
//! Each read is a task of its own, opened by the first request to join it:
//! a request that goes away (its client hung up) cancels nobody's read, and
//! leaves nothing behind. A read that fails fails once, for everyone who
//! joined it (they are answered at once, not one retry after another); the
//! next request opens a new read. A group goes when its last read ends with
//! no next one open, so the groups held are those with requests waiting.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// Shared reads by group `G`; each request brings a key `K` (what it needs
/// read; `()` when the group says it all) and gets the whole read's `T`,
/// or its error `E`.
pub(crate) struct GroupReads<G, K, T, E> {
    groups: Groups<G, K, T, E>,
}

/// The groups by their key, shared with the reads' tasks.
type Groups<G, K, T, E> = Arc<Mutex<HashMap<G, Group<K, T, E>>>>;

/// One group: the read that newcomers join, and whose turn it is to read.
struct Group<K, T, E> {
    open: Option<Arc<Read<K, T, E>>>,
    /// Held by the read in flight.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// What a read answers: its result, shared by everyone who joined it.
type Outcome<T, E> = Option<Result<Arc<T>, Arc<E>>>;

/// One read: the keys of the requests that joined it, and its outcome once
/// done.
struct Read<K, T, E> {
    keys: Mutex<Vec<K>>,
    done: watch::Sender<Outcome<T, E>>,
}

impl<G, K, T, E> std::fmt::Debug for GroupReads<G, K, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups = self.groups.try_lock().map(|g| g.len()).ok();
        f.debug_struct("GroupReads")
            .field("groups", &groups)
            .finish()
    }
}

impl<G, K, T, E> Default for GroupReads<G, K, T, E> {
    fn default() -> Self {
        Self {
            groups: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<G, K, T, E> GroupReads<G, K, T, E>
where
    G: Hash + Eq + Clone + Send + 'static,
    K: Clone + Send + 'static,
    T: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Joins `group`'s open read with `key` and waits for its outcome.
    ///
    /// The read is a task of its own, started by the request that opened
    /// it: it waits for the group's previous read, seals itself (later
    /// requests open the next), and runs `read` with every key that joined.
    /// So a request that goes away (its client hung up) takes nobody's read
    /// with it, and a failure reaches everyone who shared the read at once.
    ///
    /// Its error is the read's (shared), or `None` if the read ended
    /// without an outcome (its task was dropped: the runtime is stopping).
    pub(crate) async fn read<F, Fut>(
        &self,
        group: G,
        key: K,
        read: F,
    ) -> Result<Arc<T>, Option<Arc<E>>>
    where
        F: FnOnce(Vec<K>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let mut done = {
            let mut groups = lock(&self.groups);
            let g = groups.entry(group.clone()).or_insert_with(|| Group {
                open: None,
                turn: Arc::new(tokio::sync::Mutex::new(())),
            });
            let this = match &g.open {
                Some(open) => open.clone(),
                None => {
                    let this = Arc::new(Read {
                        keys: Mutex::new(Vec::new()),
                        done: watch::channel(None).0,
                    });
                    g.open = Some(this.clone());
                    let run = Run {
                        groups: self.groups.clone(),
                        group,
                        turn: g.turn.clone(),
                        this: this.clone(),
                    };
                    tokio::spawn(run.run(read));
                    this
                }
            };
            lock(&this.keys).push(key);
            this.done.subscribe()
        };
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|o| o.clone());
        // The task always sends before it ends, unless it was dropped.
        match outcome {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) => Err(Some(e)),
            None => Err(None),
        }
    }
}

/// A read's task, and what it needs of its group.
struct Run<G, K, T, E> {
    groups: Groups<G, K, T, E>,
    group: G,
    turn: Arc<tokio::sync::Mutex<()>>,
    this: Arc<Read<K, T, E>>,
}

impl<G: Hash + Eq, K: Clone, T, E> Run<G, K, T, E> {
    async fn run<F, Fut>(self, read: F)
    where
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let turn = self.turn.lock().await;
        let keys = {
            let mut groups = lock(&self.groups);
            // Sealed: whoever comes now joins the next read.
            if let Some(g) = groups.get_mut(&self.group) {
                if g.open.as_ref().is_some_and(|o| Arc::ptr_eq(o, &self.this)) {
                    g.open = None;
                }
            }
            // Under the groups' lock: nobody joins a sealed read.
            lock(&self.this.keys).clone()
        };
        let outcome = read(keys).await.map(Arc::new).map_err(Arc::new);
        self.this.done.send_replace(Some(outcome));
        drop(turn);
        // Done: a group with no next read open goes (it is this group still
        // if it has this turn: one made after it went has another).
        let mut groups = lock(&self.groups);
        if groups
            .get(&self.group)
            .is_some_and(|g| g.open.is_none() && Arc::ptr_eq(&g.turn, &self.turn))
        {
            groups.remove(&self.group);
        }
    }
}

fn lock<V>(m: &Mutex<V>) -> MutexGuard<'_, V> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// A store (a counter); the reads started and done; a gate each read
    /// waits at until the test lets it through; and the shared reads, whose
    /// result is the keys read and the counter as the read found it.
    struct World {
        store: AtomicU32,
        started: AtomicU32,
        reads_done: AtomicU32,
        gate: tokio::sync::Semaphore,
        reads: GroupReads<u8, u32, (Vec<u32>, u32), &'static str>,
    }

    fn world() -> Arc<World> {
        Arc::new(World {
            store: AtomicU32::new(0),
            started: AtomicU32::new(0),
            reads_done: AtomicU32::new(0),
            gate: tokio::sync::Semaphore::new(0),
            reads: GroupReads::default(),
        })
    }

    /// Reads through `w`'s shared reads; the `fail`-th read (from 1) fails.
    async fn ask(w: Arc<World>, key: u32, fail: u32) -> Result<(Vec<u32>, u32), &'static str> {
        let r = w.clone();
        let answer = w
            .reads
            .read(0, key, move |keys| async move {
                let found = r.store.load(Ordering::SeqCst);
                r.started.fetch_add(1, Ordering::SeqCst);
                if let Ok(p) = r.gate.acquire().await {
                    p.forget();
                }
                let n = r.reads_done.fetch_add(1, Ordering::SeqCst) + 1;
                if n == fail {
                    Err("store down")
                } else {
                    Ok((keys, found))
                }
            })
            .await;
        answer
            .map(|a| (*a).clone())
            .map_err(|e| e.map_or("abandoned", |e| *e))
    }

    fn spawn(
        w: &Arc<World>,
        key: u32,
        fail: u32,
    ) -> tokio::task::JoinHandle<Result<(Vec<u32>, u32), &'static str>> {
        tokio::spawn(ask(w.clone(), key, fail))
    }

    /// Waits until `what` holds (the test's tasks run meanwhile).
    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..5_000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never: {what}");
    }

    /// How many requests joined the open read.
    fn joined(w: &World) -> usize {
        lock(&w.reads.groups)
            .get(&0)
            .and_then(|g| g.open.as_ref().map(|r| lock(&r.keys).len()))
            .unwrap_or(0)
    }

    async fn settled(w: &World) {
        until("no group is kept once every read ended", || {
            lock(&w.reads.groups).is_empty()
        })
        .await;
    }

    #[tokio::test]
    async fn requests_arriving_during_a_read_share_the_next_one() {
        let w = world();
        let first = spawn(&w, 1, 0);
        until("the first read began", || {
            w.started.load(Ordering::SeqCst) == 1
        })
        .await;
        // What it found is 0; the store is now 7.
        w.store.store(7, Ordering::SeqCst);
        let later: Vec<_> = (2..50).map(|k| (k, spawn(&w, k, 0))).collect();
        until("48 requests joined the next read", || joined(&w) == 48).await;
        w.gate.add_permits(2);
        let first = first.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, Ok((vec![1], 0)), "the first request read alone");
        for (k, task) in later {
            let (keys, value) = task
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
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
        settled(&w).await;
    }

    #[tokio::test]
    async fn a_failed_read_fails_once_for_everyone_who_shared_it() {
        let w = world();
        // 0 reads alone; 1 and 2 join the next read, which fails.
        let zero = spawn(&w, 0, 2);
        until("0's read began", || w.started.load(Ordering::SeqCst) == 1).await;
        let (one, two) = (spawn(&w, 1, 2), spawn(&w, 2, 2));
        until("1 and 2 joined the next read", || joined(&w) == 2).await;
        w.gate.add_permits(3);
        let answer =
            |t: tokio::task::JoinHandle<_>| async { t.await.unwrap_or_else(|e| panic!("{e}")) };
        assert_eq!(answer(zero).await, Ok((vec![0], 0)));
        assert_eq!(answer(one).await, Err("store down"));
        assert_eq!(
            answer(two).await,
            Err("store down"),
            "the same failure, not read again"
        );
        assert_eq!(w.reads_done.load(Ordering::SeqCst), 2);
        settled(&w).await;
        // The next request reads again.
        assert_eq!(ask(w.clone(), 3, 2).await, Ok((vec![3], 0)));
    }

    #[tokio::test]
    async fn a_request_that_goes_away_takes_nobodys_read_with_it() {
        let w = world();
        // 0's read runs; 1 opens the next and 2 joins it; 1 goes away.
        let zero = spawn(&w, 0, 0);
        until("0's read began", || w.started.load(Ordering::SeqCst) == 1).await;
        let gone = spawn(&w, 1, 0);
        until("1 opened the next read", || joined(&w) == 1).await;
        let stays = spawn(&w, 2, 0);
        until("2 joined it", || joined(&w) == 2).await;
        gone.abort();
        w.gate.add_permits(2);
        let answer = stays.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            answer,
            Ok((vec![1, 2], 0)),
            "2 was answered by the read 1 opened"
        );
        assert!(zero.await.is_ok());
        // 3 goes away while its read runs: the read ends, and leaves nothing.
        let three = spawn(&w, 3, 0);
        until("3's read began", || w.started.load(Ordering::SeqCst) == 3).await;
        three.abort();
        w.gate.add_permits(1);
        settled(&w).await;
        assert_eq!(
            w.reads_done.load(Ordering::SeqCst),
            3,
            "the read of 3 ran to its end"
        );
    }
}
