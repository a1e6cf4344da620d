//! Base images that move: each job records the digest of the base it pulled, a periodic
//! check asks the base's registry where the tag points now, and a moved tag becomes a new
//! revision of the spec (same commit, cause `base-update`) that is built like any other.
//!
//! Why: most specs name a moving tag (`python:3.11-slim`, an internal `base:2024.1` re-pushed
//! with security fixes). Kiln built only on commits, so an image could sit on an old base for
//! months.
//!
//! * [`reference`]: a base reference normalised the way the Docker CLI does it;
//! * [`digest`]: one manifest `HEAD` against the registry (pull-secret credentials, Bearer
//!   tokens, `429` with `Retry-After`);
//! * [`check`]: the pass as a pure function (one request per distinct base, the decisions);
//! * [`pass`]: that pass against the store and the registries;
//! * [`revision`]: base updates added to the sync pass's plan (one transaction with it);
//! * [`record`]: what a job records about its base (digest tree, image labels);
//! * [`status`]: the last pass's outcome and the inbox to the sync pass, in memory;
//! * [`schedule`]: the loop on `base_check_interval`.

pub mod check;
pub mod digest;
pub mod pass;
pub mod record;
pub mod reference;
pub mod revision;
pub mod schedule;
pub mod status;

pub use pass::CheckSettings;
pub use revision::BaseUpdate;
pub use status::{BaseCheckStatus, BaseMonitor};
