//! Where a spec builds: rendezvous (highest-random-weight) hashing of the spec name over the
//! workers, a pure function of the spec name and the workers' states.
//!
//! Why rendezvous hashing: a spec should build where its layer and package caches already are
//! (the "sticky" builds of BinderHub and buildx), and a change of the pool should move as few
//! specs as possible. Every worker gets a score for the spec, a hash of (spec name, worker
//! name); the workers ranked by score are the spec's order of preference. Removing a worker
//! moves only the specs that ranked it first (each to its own next choice); adding one takes
//! over only the specs for which it now scores highest. No ring, no table, nothing stored.
//!
//! A worker that is unhealthy or has no free slot is skipped, so the spec falls through to
//! its next-ranked worker; when the preferred worker is back (or has a free slot), the spec's
//! next build goes there again. The hash is SHA-256, not std's `RandomState`: a spec's
//! placement must be the same in every Kiln process and release, or every restart would move
//! every spec away from its cache. Ties (astronomically unlikely) go to the smaller name.
//!
//! Scores are not weighted by capacity: stickiness matters more than balance here, and a
//! bigger worker takes more of the overflow anyway, since it is full less often.

use sha2::{Digest, Sha256};
use std::cmp::Reverse;

/// What placement needs to know about one worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerLoad<'a> {
    pub name: &'a str,
    pub healthy: bool,
    pub capacity: usize,
    pub running: usize,
}

impl WorkerLoad<'_> {
    fn has_free_slot(&self) -> bool {
        self.running < self.capacity
    }
}

/// The worker a build goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Index into the slice given to [`place`].
    pub index: usize,
    /// 0 when the spec's first choice took it, else how many better-ranked workers were
    /// skipped (unhealthy or full).
    pub fell_through: usize,
}

/// Why no worker can take a build now; the job stays queued and shows this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    #[error("no build workers are configured")]
    NoWorkers,
    #[error("no build worker is healthy")]
    NoneHealthy,
    #[error("every healthy build worker is busy")]
    AllBusy,
}

/// The spec's score on a worker: the first 8 bytes of SHA-256 over the length-prefixed spec
/// name and the worker name (the prefix keeps ("ab","c") and ("a","bc") apart).
pub fn score(spec: &str, worker: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update((spec.len() as u64).to_be_bytes());
    hash.update(spec.as_bytes());
    hash.update(worker.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Indices of `workers`, the spec's preferred worker first, whatever their state.
pub fn rank(spec: &str, workers: &[WorkerLoad<'_>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..workers.len()).collect();
    order.sort_by_cached_key(|&i| (Reverse(score(spec, workers[i].name)), workers[i].name));
    order
}

/// The best-ranked worker that is healthy and has a free slot.
pub fn place(spec: &str, workers: &[WorkerLoad<'_>]) -> Result<Placement, Unplaced> {
    if workers.is_empty() {
        return Err(Unplaced::NoWorkers);
    }
    let order = rank(spec, workers);
    order
        .iter()
        .position(|&i| workers[i].healthy && workers[i].has_free_slot())
        .map(|fell_through| Placement {
            index: order[fell_through],
            fell_through,
        })
        .ok_or(if workers.iter().any(|w| w.healthy) {
            Unplaced::AllBusy
        } else {
            Unplaced::NoneHealthy
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn idle<'a>(names: &[&'a str]) -> Vec<WorkerLoad<'a>> {
        names
            .iter()
            .map(|&name| WorkerLoad {
                name,
                healthy: true,
                capacity: 2,
                running: 0,
            })
            .collect()
    }

    fn specs(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("team-{}/image-{i}", i % 7))
            .collect()
    }

    /// spec → name of the worker it is placed on.
    fn assignment<'a>(specs: &[String], workers: &[WorkerLoad<'a>]) -> BTreeMap<String, &'a str> {
        specs
            .iter()
            .map(|s| (s.clone(), workers[place(s, workers).unwrap().index].name))
            .collect()
    }

    #[test]
    fn the_hash_is_pinned() {
        // Changing the score function would move every spec away from its cache: it must be a
        // deliberate, visible change.
        // Python: int.from_bytes(sha256(struct.pack('>Q', 5) + b'numpy' + b'w1').digest()[:8], 'big')
        assert_eq!(score("numpy", "w1"), 0xb264_049a_fed4_f378);
        assert_ne!(score("ab", "c"), score("a", "bc"));
    }

    #[test]
    fn placement_is_stable_and_independent_of_the_workers_order() {
        let workers = idle(&["w1", "w2", "w3"]);
        let mut reversed = workers.clone();
        reversed.reverse();
        for spec in specs(200) {
            let a = workers[place(&spec, &workers).unwrap().index].name;
            let again = workers[place(&spec, &workers).unwrap().index].name;
            let b = reversed[place(&spec, &reversed).unwrap().index].name;
            assert_eq!((a, again), (b, b), "{spec}");
            let names = |ws: &[WorkerLoad<'_>]| -> Vec<String> {
                rank(&spec, ws)
                    .iter()
                    .map(|&i| ws[i].name.to_owned())
                    .collect()
            };
            assert_eq!(names(&workers), names(&reversed), "{spec}");
        }
    }

    #[test]
    fn specs_spread_over_the_workers() {
        let workers = idle(&["w1", "w2", "w3"]);
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, w) in assignment(&specs(300), &workers) {
            *count.entry(w).or_default() += 1;
        }
        assert_eq!(count.len(), 3, "{count:?}");
        assert!(count.values().all(|&n| n >= 60), "{count:?}");
    }

    #[test]
    fn removing_a_worker_moves_only_its_specs() {
        let all = idle(&["w1", "w2", "w3"]);
        let before = assignment(&specs(300), &all);
        let without_w2 = idle(&["w1", "w3"]);
        let after = assignment(&specs(300), &without_w2);
        let mut moved = 0;
        for (spec, was) in &before {
            if *was == "w2" {
                moved += 1;
                assert_ne!(after[spec], "w2");
                // It goes to its second choice among the original three.
                let order = rank(spec, &all);
                assert_eq!(after[spec], all[order[1]].name, "{spec}");
            } else {
                assert_eq!(after[spec], *was, "{spec} moved although its worker stayed");
            }
        }
        assert!(moved > 0);
        // Adding a worker back takes over only the specs it now ranks first for.
        assert_eq!(assignment(&specs(300), &all), before);
    }

    #[test]
    fn a_dead_or_full_worker_falls_through_to_the_next_ranked() {
        let spec = "team-1/python";
        let mut workers = idle(&["w1", "w2", "w3"]);
        let order = rank(spec, &workers);
        let first = place(spec, &workers).unwrap();
        assert_eq!(
            first,
            Placement {
                index: order[0],
                fell_through: 0
            }
        );

        workers[order[0]].healthy = false;
        assert_eq!(
            place(spec, &workers).unwrap(),
            Placement {
                index: order[1],
                fell_through: 1
            }
        );
        workers[order[1]].running = workers[order[1]].capacity;
        assert_eq!(
            place(spec, &workers).unwrap(),
            Placement {
                index: order[2],
                fell_through: 2
            }
        );
        // The first choice back: the spec returns to it.
        workers[order[0]].healthy = true;
        assert_eq!(place(spec, &workers).unwrap().index, order[0]);
    }

    #[test]
    fn nothing_free_means_no_placement_and_says_why() {
        assert_eq!(place("s", &[]), Err(Unplaced::NoWorkers));
        let mut workers = idle(&["w1", "w2"]);
        for w in &mut workers {
            w.running = w.capacity;
        }
        assert_eq!(place("s", &workers), Err(Unplaced::AllBusy));
        workers[0].healthy = false;
        assert_eq!(place("s", &workers), Err(Unplaced::AllBusy));
        for w in &mut workers {
            w.healthy = false;
            w.running = 0;
        }
        assert_eq!(place("s", &workers), Err(Unplaced::NoneHealthy));
        assert_eq!(
            Unplaced::NoneHealthy.to_string(),
            "no build worker is healthy"
        );
    }
}
