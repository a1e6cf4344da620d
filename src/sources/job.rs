//! The per-job side of sources: one [`Redactor`] per running job, shared by the job's log
//! sink (which cleans every line before it is stored and watches for source failures) and
//! the build (which, once it has read the credentials, tells the redactor what to hide).
//!
//! Jobs reach it through [`JobSources`], which `BuildSettings` holds: the configured sources
//! plus the redactors of the running jobs by job id. The registry lets the build, which only
//! sees its log as a `LogSink`, add the values to hide without a change to that trait.

use super::config::{Source, Sources};
use super::failure::{self, SourceFailure};
use super::redact::redact;
use super::secrets::{self, SecretFile, SourceError};
use crate::model::JobId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// What one job's log must hide, and the first source failure seen in it.
#[derive(Default)]
struct State {
    hide: Vec<String>,
    used: Vec<Source>,
    failure: Option<SourceFailure>,
}

/// The redaction and failure watch of one job's log.
#[derive(Clone, Default)]
pub struct Redactor(Arc<RwLock<State>>);

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}

impl Redactor {
    /// `text` as it may be stored; notes a source failure it reports.
    pub fn line(&self, text: String) -> String {
        let Ok(state) = self.0.read() else {
            return redact(&text, &[]).into_owned();
        };
        let clean = match redact(&text, &state.hide) {
            std::borrow::Cow::Borrowed(_) => text,
            std::borrow::Cow::Owned(clean) => clean,
        };
        let seen = failure::recognise(&clean, &state.used);
        drop(state);
        if let Some(seen) = seen
            && let Ok(mut state) = self.0.write()
        {
            state.failure = Some(SourceFailure::merge(state.failure.take(), seen));
        }
        clean
    }

    /// `text` cleaned, without watching it (error messages).
    pub fn clean(&self, text: &str) -> String {
        match self.0.read() {
            Ok(state) => redact(text, &state.hide).into_owned(),
            Err(_) => redact(text, &[]).into_owned(),
        }
    }

    fn learn(&self, secrets: &secrets::JobSecrets) {
        if let Ok(mut state) = self.0.write() {
            state.hide.extend(secrets.hide.iter().cloned());
            state.hide = super::redact::by_length(std::mem::take(&mut state.hide));
            state.used = secrets.used.clone();
        }
    }

    fn take_failure(&self) -> Option<SourceFailure> {
        self.0.write().ok()?.failure.take()
    }
}

/// The configured sources and the redactors of the running jobs.
#[derive(Clone, Debug, Default)]
pub struct JobSources {
    config: Arc<Sources>,
    running: Arc<Mutex<HashMap<JobId, Redactor>>>,
}

impl JobSources {
    pub fn new(config: Arc<Sources>) -> JobSources {
        JobSources {
            config,
            running: Arc::default(),
        }
    }

    /// The redactor of `job`'s log (made on the first call, until [`JobSources::finish`]).
    pub fn redactor(&self, job: JobId) -> Redactor {
        match self.running.lock() {
            Ok(mut running) => running.entry(job).or_default().clone(),
            Err(_) => Redactor::default(),
        }
    }

    /// Reads the credentials of the sources `dockerfile` records and renders the secrets to
    /// mount; from now on `job`'s log hides their values and watches for their failures.
    pub fn secrets(&self, job: JobId, dockerfile: &str) -> Result<Vec<SecretFile>, SourceError> {
        let secrets = secrets::for_dockerfile(&self.config, dockerfile)?;
        self.redactor(job).learn(&secrets);
        Ok(secrets.files)
    }

    /// The source failure `job`'s log reported since the last call.
    pub fn take_failure(&self, job: JobId) -> Option<SourceFailure> {
        self.redactor(job).take_failure()
    }

    /// Forgets `job` (its log is closed).
    pub fn finish(&self, job: JobId) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::config::SourceTable;
    use std::collections::BTreeMap;

    #[test]
    fn a_jobs_log_hides_its_credential_and_notes_the_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        std::fs::write(p("u"), "alice").unwrap();
        std::fs::write(p("p"), "hunter2-secret").unwrap();
        let tables: BTreeMap<String, SourceTable> = toml::from_str(&format!(
            "[pypi]\nkind = 'pip'\nurl = 'http://127.0.0.1:1/simple/'\nusername_file = '{}'\npassword_file = '{}'\n",
            p("u"),
            p("p")
        ))
        .unwrap();
        let sources = JobSources::new(Arc::new(Sources::from_tables(&tables).unwrap()));
        let log = sources.redactor(7);
        assert_eq!(
            log.line("before: hunter2-secret".into()),
            "before: hunter2-secret"
        );
        let files = sources
            .secrets(
                7,
                "# Package sources: pypi\nRUN --mount=type=secret,id=kiln-pip,target=/x true\n",
            )
            .unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(log.line("echo hunter2-secret".into()), "echo ***");
        assert_eq!(log.clean("error: hunter2-secret"), "error: ***");
        assert_eq!(sources.take_failure(7), None);
        log.line("Could not fetch URL http://alice:****@127.0.0.1:1/simple/k/: 401 Client Error: Unauthorized for url: http://127.0.0.1:1/simple/k/".into());
        assert_eq!(
            sources.take_failure(7),
            Some(SourceFailure::Refused("pypi".into(), 401))
        );
        assert_eq!(sources.take_failure(7), None, "taken");
        // Another job's log knows nothing of it.
        assert_eq!(
            sources.redactor(8).line("hunter2-secret".into()),
            "hunter2-secret"
        );
        sources.finish(7);
        assert_eq!(
            sources.redactor(7).line("hunter2-secret".into()),
            "hunter2-secret"
        );
    }
}
