//! The Docker Engine client: pull a base image, build a Dockerfile, tag, push, and run a
//! command in a throw-away container.
//!
//! This module knows nothing of git, specs, jobs or the store: it takes a Dockerfile and a few
//! parameters and reports what the Engine says through a [`LogSink`], one whole line at a
//! time. Jobs do not call it directly: they hold a [`crate::builder::Builder`], which the
//! [`Engine`] is one kind of.
//!
//! One concept per file, because each works around its own bollard 0.21.1 trap:
//!
//! | file | concept | the trap |
//! |---|---|---|
//! | `endpoint.rs` | where the Engine listens: unix, TCP, mutual TLS like the Docker CLI | set-up mistakes must be named before anything connects |
//! | `engine.rs` | the connection, tag / inspect / history / remove | unversioned paths, an Engine still starting |
//! | `error.rs` | bollard errors → [`EngineError`], transient or not, secrets scrubbed | one error type for every channel |
//! | `build.rs` | a build on the Engine's embedded BuildKit (`crate::buildkit` runs it): credentials per registry, inline cache | the classic builder has no cache mounts or secrets |
//! | `context.rs` | the in-memory tar context | `build_image` panics without a body |
//! | `lines.rs` | whole lines out of chunks, the sink with backpressure | unaligned `stream` chunks |
//! | `progress.rs` | pull/push progress condensed to a line per layer, push digest | thousands of progress messages |
//! | `pull.rs`, `push.rs` | registry transfers | `push_image` drops the layer id: a rewritten `create_image` |
//! | `headers.rs` | a credential's way to the Engine | standard base64 where the Engine reads base64url |
//! | `auth.rs` | registry credentials from a docker `config.json` | |
//! | `reference.rs` | `repo:tag@digest` split and checked | |
//! | `run.rs` | one command in a throw-away container, stdout captured | |

pub mod auth;
mod build;
mod context;
mod endpoint;
mod engine;
mod error;
mod headers;
mod lines;
mod progress;
mod pull;
mod push;
mod reference;
mod run;

pub use build::{BuildRequest, BuiltImage};
pub(crate) use context::build_context;
pub use endpoint::{DEFAULT_ENDPOINT, EngineEndpoint, TlsFiles, Transport};
pub use engine::Engine;
pub(crate) use engine::client;
pub use error::EngineError;
pub(crate) use error::{bollard_message, looks_like_tls_refusal};
pub use lines::LogSink;
pub use run::{RUN_CAPTURE_LIMIT, RUN_CAPTURE_TIMEOUT};
