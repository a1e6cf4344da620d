//! Turning a spec into an image: the Dockerfile Kiln renders for it.
//!
//! The Docker Engine client, build contexts and the job workers live here too as they are
//! added; nothing in this module knows about git.

pub mod auth;
pub mod dockerfile;
pub mod engine;
