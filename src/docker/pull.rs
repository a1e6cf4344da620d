//! Pulling an image (a base, or an earlier job's image for a re-use) and reading a base
//! image's `USER`.
//!
//! A missing tag means `latest`, never "all tags"; the credential only goes to its own
//! registry.

use super::auth::Credential;
use super::error::{EngineError, Op};
use super::headers::{credential_for, docker_credentials};
use super::progress::{Drained, drain_progress};
use super::reference::split_reference;
use super::{Engine, LogSink};
use bollard::query_parameters::CreateImageOptionsBuilder;
use tokio_util::sync::CancellationToken;

impl Engine {
    /// Makes sure `image` is present (pulling it with `auth` when it is not), then returns its
    /// `Config.User` (`None` when empty: the image runs as root).
    pub async fn prepare_base(
        &self,
        image: &str,
        auth: Option<&Credential>,
        log: &mut dyn LogSink,
    ) -> Result<Option<String>, EngineError> {
        if self.image_id(image).await?.is_some() {
            log.line(format!("base image {image} is present"));
        } else {
            self.pull(image, auth, log).await?;
        }
        let inspect = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| self.map_err(e, Op::Pull { image }, auth))?;
        Ok(inspect
            .config
            .and_then(|c| c.user)
            .filter(|u| !u.trim().is_empty()))
    }

    /// Pulls `image` (a missing tag means `latest`, never "all tags") with `auth`.
    pub async fn pull(
        &self,
        image: &str,
        auth: Option<&Credential>,
        log: &mut dyn LogSink,
    ) -> Result<(), EngineError> {
        let (repo, tag) = split_reference(image);
        log.line(format!("pulling {image}"));
        let auth = credential_for(image, auth, log);
        let options = CreateImageOptionsBuilder::default()
            .from_image(repo)
            .tag(&tag)
            .build();
        let credentials = auth.map(docker_credentials);
        let stream = self.docker.create_image(Some(options), None, credentials);
        match drain_progress(stream, log, auth, &CancellationToken::new()).await {
            Drained::Done(_) => Ok(()),
            Drained::Failed(e) => Err(self.map_err(e, Op::Pull { image }, auth)),
            Drained::Cancelled => Err(EngineError::Cancelled),
        }
    }
}
