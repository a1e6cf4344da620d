//! Private package sources: pip indexes, conda channels and apt repositories that need a
//! credential, named in `kiln.toml` (`[sources.NAME]`) and used by specs (`sources: [NAME]`).
//!
//! Why it is built this way: the usual work-arounds (`ARG`, `ENV`, a copied `pip.conf`) leave
//! the credential in a layer or in the image history. Here the credential is read from the
//! files the config *names* when a build starts (never stored, never in the config itself),
//! rendered into the file the package manager reads (`pip.conf`, `.condarc`, apt's
//! `auth.conf.d`), and handed to BuildKit as a **secret mount** of exactly the `RUN` step
//! that installs with that manager. The Dockerfile only names the secret ids and the public
//! parts (a source's URL without credential, its apt suite), so what a revision stores, what
//! the dashboard shows and what BuildKit keys its cache on hold no credential.
//!
//! One concept per file:
//!
//! * [`config`]: the `[sources.NAME]` tables and their validation (errors name the key);
//! * [`credentials`]: reading the named files at build time;
//! * [`render`]: the secret files (`pip.conf`, `.condarc`, apt `auth.conf.d`) and the apt
//!   sources list line;
//! * [`usage`]: which sources a spec uses (named, `default = true`, conda channels by name);
//! * [`dockerfile`]: the mounts, environment and commands the renderer puts into the RUN
//!   steps, and the comment that records the sources in the rendered Dockerfile;
//! * [`secrets`]: what a job hands to BuildKit, built from that record at build time;
//! * [`redact`]: the one redaction function for log lines and error messages;
//! * [`failure`]: pip's and apt's lines that say a source refused the credential (HTTP
//!   401/403, the job fails, not retried) or did not answer (transient, retried);
//! * [`job`]: the per-job handle that ties redaction and failure recognition to a job's log.

pub mod config;
pub mod credentials;
pub mod dockerfile;
pub mod failure;
pub mod job;
pub mod redact;
pub mod render;
pub mod secrets;
pub mod usage;

pub use config::{AuthFiles, Source, SourceConfigError, SourceKind, SourceTable, Sources};
pub use failure::SourceFailure;
pub use job::JobSources;
pub use redact::redact;
pub use secrets::{SecretFile, SourceError};
