//! Builds on BuildKit: the BuildKit embedded in a Docker Engine (20.10 and newer).
//!
//! The classic builder has no cache mounts, no cache export, no build secrets and is
//! deprecated; BuildKit has all of them. This module builds a rendered Dockerfile on an
//! Engine's BuildKit ([`build::build`]) with a session of Kiln's own that answers BuildKit's
//! calls for registry credentials and build secrets, keeps each build on a thread and runtime
//! of its own so that its session ends with it ([`session`]), and turns BuildKit's solve
//! status into the job log ([`progress`]). It knows nothing of specs, jobs or the store.
//!
//! | file | concept |
//! |---|---|
//! | `build.rs` | one build: session, `/build`, the stream read into log lines, errors, tags |
//! | `build_request.rs` | the `/build` query from Kiln's options; the JSON-lines answer as `BuildInfo` |
//! | `engine_conn.rs` | Kiln's own HTTP/1.1 connections to the Engine: unix, TCP, mutual TLS |
//! | `session_server.rs` | `/session` opened and upgraded to h2c, a tonic server on it |
//! | `session_services.rs` | what the session answers: health, per-host credentials, this build's secrets |
//! | `secret.rs` | [`BuildSecret`]: id + bytes, never printed, zeroed when dropped |
//! | `session.rs` | the build's own thread and runtime, lines back with backpressure |
//! | `progress.rs` | BuildKit's solve status → `--progress=plain` lines |
//!
//! Why not bollard's `build_image`: it always opens a session of its own that serves only
//! registry credentials, and bollard 0.21.1 keeps its secret provider, its `/session` upgrade
//! and its request builder crate-private; its public BuildKit driver (`grpc::driver::moby`)
//! serves secrets but gives no progress stream (jobs would lose their log), and a second
//! session under the same id would race the first in the Engine's session manager. So every
//! build — with secrets or without — takes the one path here; bollard remains the client for
//! every other Engine call (inspect, tag, pull, push, run).

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
