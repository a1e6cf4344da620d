//! `kiln backup`: directly when the data dir is free, else through the running Kiln.

use super::{CommandError, io, megabytes};
use crate::config::{Config, DataDirArgs, RetentionArgs};
use crate::store::backup::BackupSummary;
use crate::store::{Store, StoreError};
use std::fmt;
use std::path::{Path, PathBuf};

/// What `kiln backup` wrote, printed as its report.
#[derive(Debug)]
pub struct BackupReport {
    pub out: PathBuf,
    pub via: String,
    pub summary: BackupSummary,
    pub elapsed_ms: u128,
}

/// Blocking, outside any runtime.
pub fn backup(
    out: &Path,
    data: &DataDirArgs,
    server: Option<String>,
) -> Result<BackupReport, CommandError> {
    let config = Config::resolve_data_dir(data, &RetentionArgs::default())?;
    let started = std::time::Instant::now();
    let (summary, via) = match server {
        Some(url) => (download(&url, out)?, url),
        None => {
            let dir = &config.data_dir;
            if !dir.join("db").exists() {
                return Err(CommandError::NoStore(dir.clone()));
            }
            match Store::open_with(dir, &config.store_options()) {
                Ok(store) => (direct(&store, out)?, dir.display().to_string()),
                Err(StoreError::Locked { .. }) => {
                    let url = local_url(&config.listen);
                    let summary = download(&url, out).map_err(|source| CommandError::Busy {
                        dir: dir.clone(),
                        url: url.clone(),
                        source,
                    })?;
                    (summary, url)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(BackupReport {
        out: out.to_path_buf(),
        via,
        summary,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// [`crate::web::backup::download`] on a runtime of its own: this command runs outside one.
fn download(url: &str, out: &Path) -> Result<BackupSummary, crate::web::backup::DownloadError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::web::backup::DownloadError::Write {
            path: out.to_path_buf(),
            source,
        })?;
    runtime.block_on(crate::web::backup::download(url, out))
}

/// Written to OUT.partial, checked, then renamed.
fn direct(store: &Store, out: &Path) -> Result<BackupSummary, CommandError> {
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = std::fs::File::create(&partial).map_err(io("cannot create", &partial))?;
    let written = store.write_backup(&file).and_then(|_| {
        file.sync_all()?;
        crate::store::backup::verify(std::io::BufReader::new(std::fs::File::open(&partial)?))
    });
    match written {
        Ok(summary) => {
            std::fs::rename(&partial, out).map_err(io("cannot rename to", out))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e.into())
        }
    }
}

/// Where to reach a Kiln that listens on `listen` from this machine.
fn local_url(listen: &str) -> String {
    let listen = listen
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{listen}")
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "kiln backup: {} from {}: {} job(s), {} log line(s), {} record(s), {}, sha256 {} in {} ms",
            self.out.display(),
            self.via,
            s.jobs,
            s.log_lines,
            s.records,
            megabytes(s.bytes),
            s.sha256,
            self.elapsed_ms
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        assert_eq!(super::local_url("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(super::local_url("[::]:8080"), "http://[::1]:8080");
        assert_eq!(super::local_url("10.0.0.2:80"), "http://10.0.0.2:80");
    }
}
