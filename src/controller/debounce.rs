//! Debounce with a deadline for the broker's wake-ups from its children (users, ACLs, firewalls,
//! Secrets, …).
//!
//! The controller runtime's debounce postpones a reconcile for as long as triggers keep arriving:
//! during a burst of 1,000 new users every new credentials Secret pushed the broker's reconcile
//! back, so the broker ran once, after the last user, and every user waited for the whole burst.
//! [`Debounce`] waits for `quiet` like that debounce, but never longer than `max_wait` after the
//! first trigger it holds: during a burst the broker takes in the users created so far every
//! `max_wait`, and they become Ready while the burst goes on.
//!
//! `max_wait` is asked per key at its first held trigger: a broker whose reconcile takes long
//! (10,000 users: every reconcile reads them all and rewrites every password shard) waits in
//! proportion, so that during a long burst its reconciles take a bounded share of the time
//! instead of a share that grows with its size.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

/// The pure state of the debounce (time is passed in).
#[derive(Debug)]
pub struct Debounce<K> {
    quiet: Duration,
    /// Held keys: the latest it may be passed (first held trigger + its `max_wait`), and when it
    /// is due.
    held: HashMap<K, (Instant, Instant)>,
}

impl<K: Clone + Eq + Hash> Debounce<K> {
    /// Passes a key once no trigger came for `quiet`, or `max_wait` (given with the trigger that
    /// starts holding it) after its first held trigger.
    pub fn new(quiet: Duration) -> Self {
        Self { quiet, held: HashMap::new() }
    }

    /// A trigger for `key` at `now`; `max_wait` counts only if it is the first one held.
    pub fn trigger(&mut self, key: K, now: Instant, max_wait: Duration) {
        let quiet = self.quiet;
        self.held
            .entry(key)
            .and_modify(|(latest, due)| *due = (now + quiet).min(*latest))
            .or_insert((now + max_wait.max(quiet), now + quiet));
    }

    /// The keys due by `now` (each passed once, then forgotten until its next trigger).
    pub fn due(&mut self, now: Instant) -> Vec<K> {
        let mut out = vec![];
        self.held.retain(|k, (_, due)| {
            let keep = *due > now;
            if !keep {
                out.push(k.clone());
            }
            keep
        });
        out
    }

    /// When the next key is due (None: nothing held).
    pub fn next_due(&self) -> Option<Instant> {
        self.held.values().map(|(_, due)| *due).min()
    }
}

/// `input` debounced per key (see [`Debounce`]), `max_wait` asked per key; ends when `input`
/// ends and nothing is held.
pub fn debounced<K, S, W>(input: S, quiet: Duration, max_wait: W) -> impl Stream<Item = K> + Send + 'static
where
    K: Clone + Eq + Hash + Send + 'static,
    S: Stream<Item = K> + Send + 'static,
    W: Fn(&K) -> Duration + Send + 'static,
{
    struct State<K, S, W> {
        input: Option<std::pin::Pin<Box<S>>>,
        debounce: Debounce<K>,
        max_wait: W,
        ready: std::collections::VecDeque<K>,
    }
    let state =
        State { input: Some(Box::pin(input)), debounce: Debounce::new(quiet), max_wait, ready: Default::default() };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(k) = st.ready.pop_front() {
                return Some((k, st));
            }
            let due = st.debounce.next_due();
            if st.input.is_none() && due.is_none() {
                return None;
            }
            let next = async {
                match st.input.as_mut() {
                    Some(i) => i.next().await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                item = next => match item {
                    Some(k) => {
                        let wait = (st.max_wait)(&k);
                        st.debounce.trigger(k, Instant::now(), wait);
                    }
                    None if due.is_none() => return None,
                    None => st.input = None,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    let now = Instant::now();
                    st.ready.extend(st.debounce.due(now));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(2);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lone_trigger_and_a_short_burst_pass_once_after_quiet() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET);
        d.trigger("b", t0, MAX);
        d.trigger("b", t0 + 300 * MS, MAX);
        assert_eq!(d.next_due(), Some(t0 + 800 * MS));
        assert!(d.due(t0 + 799 * MS).is_empty());
        assert_eq!(d.due(t0 + 800 * MS), vec!["b"]);
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn a_steady_stream_passes_every_max_wait_and_its_end_after_quiet() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET);
        let mut passed = vec![];
        // a trigger every 100 ms for 5 s: the runtime's debounce alone would pass nothing
        for i in 0..=50u32 {
            let now = t0 + 100 * MS * i;
            passed.extend(d.due(now).into_iter().map(|_| now));
            d.trigger("b", now, MAX);
        }
        let last = d.next_due().unwrap();
        assert_eq!(last, t0 + 5500 * MS, "the end of the burst after quiet");
        passed.extend(d.due(last).into_iter().map(|_| last));
        assert_eq!(passed, vec![t0 + MAX, t0 + 2 * MAX, last]);
    }

    #[test]
    fn a_longer_max_wait_passes_a_steady_stream_less_often() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET);
        let mut passed = vec![];
        for i in 0..=80u32 {
            let now = t0 + 100 * MS * i;
            passed.extend(d.due(now).into_iter().map(|k| (k, now)));
            d.trigger("slow", now, 2 * MAX);
            d.trigger("fast", now, MAX);
        }
        let slow: Vec<_> = passed.iter().filter(|(k, _)| *k == "slow").map(|(_, t)| *t).collect();
        assert_eq!(slow, vec![t0 + 2 * MAX, t0 + 4 * MAX]);
        assert_eq!(passed.len() - slow.len(), 4, "the fast key passed every 2 s");
    }

    #[test]
    fn keys_are_debounced_apart() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET);
        d.trigger("a", t0, MAX);
        d.trigger("b", t0 + 400 * MS, MAX);
        assert_eq!(d.due(t0 + 500 * MS), vec!["a"]);
        assert_eq!(d.due(t0 + 900 * MS), vec!["b"]);
    }

    #[tokio::test]
    async fn the_stream_passes_a_burst_once_and_ends_with_its_input() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let out = debounced(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)), 50 * MS, |_: &u32| MAX);
        for _ in 0..100 {
            tx.send(7).unwrap();
        }
        drop(tx);
        let got: Vec<u32> = out.collect().await;
        assert_eq!(got, vec![7]);
    }
}
