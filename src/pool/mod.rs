//! The pool of build workers: which workers there are, where a spec builds, whether a worker
//! answers.
//!
//! One machine stops being enough for a platform team's builds, so Kiln can build on several
//! workers: Docker Engines (their embedded BuildKit), each listed as a `[[workers]]` table in
//! `kiln.toml`. Without a table the pool is today's single Engine from the `docker_host`
//! keys, so a one-machine setup changes nothing.
//!
//! The three parts are kept apart so each can be read and tested alone:
//! - [`worker_config`]: the `[[workers]]` tables, validated (unique names, known kinds,
//!   `unix://` or `tcp://` endpoints, capacity at least 1, TLS keys that fit the endpoint);
//! - [`placement`]: rendezvous (highest-random-weight) hashing of the spec name over the
//!   workers that are healthy and have a free slot, a pure function, so that a spec keeps
//!   building where its layer and package caches are, and removing a worker moves only the
//!   specs that were on it;
//! - [`health`]: a probe of one worker on an interval, giving healthy, or unhealthy with the
//!   error and since when.
//!
//! - [`lease`]: the pool as the jobs' `Builders` (slots per worker, placement, probes).

pub mod health;
pub mod lease;
pub mod placement;
pub mod worker_config;

pub use health::{Health, spawn_probe};
pub use lease::{WorkerPool, WorkerStatus};
pub use placement::{Placement, Unplaced, WorkerLoad};
pub use worker_config::{WorkerConfig, WorkerConfigError, WorkerKind};
