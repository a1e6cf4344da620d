//! Kiln: image specs in git become built, pushed container images.
//!
//! See `ARCHITECTURE.md` for the map of modules and the data path.

pub mod build;
pub mod buildkit;
pub mod check;
pub mod config;
pub mod jobs;
pub mod model;
pub mod reconcile;
pub mod repo;
pub mod spec;
pub mod store;
pub mod sync;
pub mod watch;
pub mod web;
