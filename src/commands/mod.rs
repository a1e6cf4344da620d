//! The bodies of the one-shot commands (`kiln gc`, `kiln backup`, `kiln restore`,
//! `kiln render`): each returns a report whose `Display` is what the command prints, so
//! `main.rs` stays the command line only (parsing, printing, exit codes). `kiln serve` and
//! `kiln sync` are in [`crate::serve`].

mod backup;
mod gc;
mod render;
mod restore;

pub use backup::{BackupReport, backup};
pub use gc::{GcReportText, gc};
pub use render::{Rendered, render};
pub use restore::{RestoreReport, restore};

use crate::config::ConfigError;
use crate::store::StoreError;
use crate::store::backup::BackupError;
use crate::web::backup::DownloadError;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("no Kiln store in {}", .0.display())]
    NoStore(PathBuf),
    #[error("{what} {}: {source}", .path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is in use by a running Kiln, which was asked at {url} (set --server if it listens elsewhere): {source}",
        .dir.display()
    )]
    Busy {
        dir: PathBuf,
        url: String,
        #[source]
        source: DownloadError,
    },
    #[error("cannot restore {}: {source}", .path.display())]
    Restore {
        path: PathBuf,
        #[source]
        source: BackupError,
    },
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CommandError {
    let path = path.to_path_buf();
    move |source| CommandError::File { what, path, source }
}
