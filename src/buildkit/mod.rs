//! Builds on BuildKit: the BuildKit embedded in a Docker Engine (20.10 and newer).
//!
//! The classic builder has no cache mounts, no cache export and is deprecated; BuildKit has
//! all three. This module builds a rendered Dockerfile on an Engine's BuildKit through
//! bollard's `build_image` with a session ([`build::build`]), keeps each build's session on
//! a runtime of its own so that it ends with the build ([`session`]), and turns BuildKit's
//! solve status into the job log ([`progress`]). It knows nothing of specs, jobs or the
//! store, like the classic Engine layer beside it.

pub mod build;
mod build_request;
mod engine_conn;
pub mod progress;
mod secret;
mod session;
mod session_server;
mod session_services;

pub use build::{BuildkitRequest, INLINE_CACHE_ARG, build, build_on};
pub use progress::{Failure, Progress};
pub use secret::BuildSecret;
