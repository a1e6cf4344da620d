//! Kiln: image specs in git become built, pushed container images.
//!
//! See `ARCHITECTURE.md` for the map of modules and the data path.

pub mod backoff;
pub mod base;
pub mod builder;
pub mod buildkit;
pub mod catalog;
pub mod changes;
pub mod check;
pub mod commands;
pub mod config;
pub mod docker;
pub mod dockerfile;
pub mod http_client;
pub mod image_tests;
pub mod jobs;
pub mod model;
pub mod pool;
pub mod reconcile;
pub mod repo;
pub mod retention;
pub mod sbom;
pub mod serve;
pub mod sources;
pub mod spec;
pub mod store;
pub mod sync;
pub mod watch;
pub mod web;
