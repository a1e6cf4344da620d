//! Running one command in a throw-away container and capturing its stdout (the package
//! listing of a built image).
//!
//! No network, the entrypoint replaced, output bounded, a time limit, and the container
//! removed in every case, also when the caller stops waiting.

use super::Engine;
use super::error::{EngineError, Op, bollard_message};
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How much of a command's stdout [`Engine::run_capture`] keeps.
pub const RUN_CAPTURE_LIMIT: usize = 4 << 20;

/// How long [`Engine::run_capture`] lets a command run.
pub const RUN_CAPTURE_TIMEOUT: Duration = Duration::from_secs(600);

impl Engine {
    /// Runs `cmd` (exactly: the image's entrypoint is replaced) in a fresh container from
    /// `image`, without network, and returns its exit code and stdout (at most
    /// [`RUN_CAPTURE_LIMIT`] bytes, lossily decoded as UTF-8). The container is removed
    /// afterwards in every case. A command the image does not have gives exit code 127.
    /// When `cancel` fires it stops waiting ([`EngineError::Cancelled`]); the container is
    /// removed then too.
    pub async fn run_capture(
        &self,
        image: &str,
        cmd: &[&str],
        cancel: &CancellationToken,
    ) -> Result<(i64, String), EngineError> {
        let Some((program, args)) = cmd.split_first() else {
            return Err(EngineError::Other("run_capture needs a command".into()));
        };
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec![program.to_string()]),
            cmd: Some(args.iter().map(|a| a.to_string()).collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            open_stdin: Some(false),
            labels: Some(HashMap::from([(
                "io.kiln.run-capture".to_string(),
                "1".to_string(),
            )])),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::default().build()), body)
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404, ..
                } => EngineError::NoImage(image.to_string()),
                e => self.map_err(e, Op::Other("container create"), None),
            })?;
        let id = created.id;
        // Only the wait is cut short: the removal below runs in every case.
        let result = tokio::select! {
            result = tokio::time::timeout(RUN_CAPTURE_TIMEOUT, self.run_created(&id)) => result,
            _ = cancel.cancelled() => Ok(Err(EngineError::Cancelled)),
        };
        let remove = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = self.docker.remove_container(&id, Some(remove)).await {
            tracing::warn!(container = %id, error = %bollard_message(&e), "could not remove run_capture container");
        }
        match result {
            Ok(result) => result,
            Err(_) => Err(EngineError::Other(format!(
                "{cmd:?} in {image} did not finish within {} s",
                RUN_CAPTURE_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn run_created(&self, id: &str) -> Result<(i64, String), EngineError> {
        let attach = AttachContainerOptionsBuilder::default()
            .stream(true)
            .logs(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut attached = self
            .docker
            .attach_container(id, Some(attach))
            .await
            .map_err(|e| self.map_err(e, Op::Other("container attach"), None))?;
        if let Err(e) = self
            .docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
        {
            let message = bollard_message(&e);
            if matches!(e, BollardError::DockerResponseServerError { .. })
                && (message.contains("executable file not found")
                    || message.contains("no such file or directory"))
            {
                return Ok((127, String::new()));
            }
            return Err(self.map_err(e, Op::Other("container start"), None));
        }
        let mut stdout: Vec<u8> = Vec::new();
        let mut stderr_tail: Vec<u8> = Vec::new();
        let mut truncated = false;
        while let Some(item) = attached.output.next().await {
            match item {
                Ok(bollard::container::LogOutput::StdOut { message }) => {
                    let room = RUN_CAPTURE_LIMIT.saturating_sub(stdout.len());
                    if message.len() > room {
                        truncated = true;
                    }
                    stdout.extend_from_slice(&message[..message.len().min(room)]);
                }
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    stderr_tail.extend_from_slice(&message);
                    if stderr_tail.len() > 4096 {
                        stderr_tail.drain(..stderr_tail.len() - 4096);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(self.map_err(e, Op::Other("container output"), None)),
            }
        }
        if truncated {
            tracing::warn!(container = %id, limit = RUN_CAPTURE_LIMIT, "run_capture output truncated");
        }
        let wait = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut waits = self.docker.wait_container(id, Some(wait));
        let code = match waits.next().await {
            Some(Ok(response)) => response.status_code,
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(self.map_err(e, Op::Other("container wait"), None)),
            None => {
                return Err(EngineError::Other(
                    "the Engine did not report the exit code".into(),
                ));
            }
        };
        if code != 0 && !stderr_tail.is_empty() {
            tracing::debug!(container = %id, code, stderr = %String::from_utf8_lossy(&stderr_tail), "run_capture command failed");
        }
        Ok((code, String::from_utf8_lossy(&stdout).into_owned()))
    }
}
