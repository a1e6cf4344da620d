//! `kiln serve` as a library function: the controller's long-running tasks wired together.
//!
//! [`serve`] takes an already bound listener, the config and a shutdown token, so the binary
//! binds `listen` (and prints the address it got — port 0 is allowed) while tests start Kiln
//! in-process on a listener of their own, on port 0, with no port race. It runs, under one
//! [`TaskTracker`]:
//!
//! * the HTTP server (dashboard, API, webhooks), which ends on `shutdown`;
//! * the sync loop (poll interval, webhooks and the ref watcher trigger it);
//! * the retention loop ([`crate::retention`]);
//! * the build workers, unless `no_build` (they wait for the Engine without holding up the
//!   start; running builds get `shutdown_grace` after `shutdown`).
//!
//! Any task ending — the server failing, or `shutdown` — cancels the token for all of them;
//! `serve` then waits for every task, flushes the store and returns. Signals are the
//! caller's business ([`wait_for_signal`] is what the binary uses).

use crate::config::Config;
use crate::docker::auth::{AuthError, RegistryAuths};
use crate::docker::{Engine, EngineEndpoint, EngineError};
use crate::jobs::{BuildSettings, JobError, Workers};
use crate::store::{Store, StoreError};
use crate::sync::{SyncError, SyncOutcome, Syncer};
use crate::web::hooks::{HookError, Webhooks};
use crate::web::{AppInfo, AppState, Counters};
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Hooks(#[from] HookError),
    #[error(transparent)]
    Jobs(#[from] JobError),
    #[error("cannot read ca_bundle {path}: {source}")]
    CaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("no build worker answers, so nothing can be built ({0})")]
    NoWorker(String),
}

/// Bind the config's `listen` address (port 0 picks a free port: ask the listener which).
pub async fn bind(config: &Config) -> Result<TcpListener, ServeError> {
    TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen.clone(),
            source,
        })
}

/// Open the store (with the config's cache size) and the repository. Jobs a dead process
/// left `running` go back to `queued` first.
pub async fn open(config: &Config) -> Result<Syncer, ServeError> {
    let store = Store::open_with(&config.data_dir, &config.store_options())?;
    let recovered = store.requeue_interrupted().await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "re-queued jobs left running by a previous process"
        );
    }
    let config = config.clone();
    tokio::task::spawn_blocking(move || Syncer::new(&config, store))
        .await
        .map_err(|e| SyncError::Worker(e.to_string()))?
        .map_err(ServeError::from)
}

/// Where the Engine is, from the config (unset fields fall back to `DOCKER_*` variables).
pub fn engine_endpoint(config: &Config) -> EngineEndpoint {
    EngineEndpoint {
        host: config.docker_host.clone(),
        tls_verify: config.docker_tls_verify,
        cert_path: config.docker_cert_path.clone(),
    }
}

/// What every build needs besides the Engine: registry, credentials, CA bundle, limits.
pub fn build_settings(config: &Config) -> Result<BuildSettings, ServeError> {
    let auths = registry_auths(config)?;
    let ca_bundle = match &config.ca_bundle {
        Some(path) => Some(std::fs::read(path).map_err(|source| ServeError::CaBundle {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    Ok(BuildSettings {
        registry: config.registry.clone(),
        auths,
        pull_secrets: config.pull_secrets.clone(),
        ca_bundle,
        max_parallel: config.max_parallel_builds,
        timeout: config.build_timeout,
        image_test_timeout: config.image_test_timeout,
        max_attempts: config.max_attempts,
        retry_backoff: config.retry_backoff,
        shutdown_grace: config.shutdown_grace,
        source_url: config.source_url.clone(),
        sources: crate::sources::JobSources::new(config.sources.clone()),
        build_network: config.build_network.clone(),
    })
}

/// The docker `config.json` credentials (`docker_config`, else the default path; none when
/// there is no file).
fn registry_auths(config: &Config) -> Result<RegistryAuths, ServeError> {
    Ok(
        match config
            .docker_config
            .clone()
            .or_else(RegistryAuths::default_path)
        {
            Some(path) => RegistryAuths::load(&path)?,
            None => RegistryAuths::empty(),
        },
    )
}

/// What the base check needs from the config (`base/`).
pub fn base_check_settings(config: &Config) -> Result<crate::base::CheckSettings, ServeError> {
    Ok(crate::base::CheckSettings {
        interval: config.base_check_interval,
        rebuild_default: config.rebuild_on_base_update,
        pull_secrets: config.pull_secrets.clone(),
        auths: registry_auths(config)?,
        spec_context: crate::spec::SpecContext {
            pull_secrets: Some(config.pull_secrets.keys().cloned().collect()),
            sources: Some(config.sources.clone()),
        },
    })
}

/// What one `kiln sync` did: the pass, and the jobs that failed (`None`: builds are off).
#[derive(Debug)]
pub struct SyncReport {
    pub outcome: SyncOutcome,
    pub failed: Option<Vec<u64>>,
}

/// `kiln sync`: one pass, then build what it queued (unless builds are off). An Engine that
/// does not answer fails at once; the jobs stay queued for the next run.
pub async fn sync_once(config: &Config) -> Result<SyncReport, ServeError> {
    let syncer = open(config).await?;
    // The probes of a pool end with this pass.
    let probes = CancellationToken::new();
    let _end_probes = probes.clone().drop_guard();
    let workers = if config.no_build {
        None
    } else if config.workers.is_empty() {
        let engine = Engine::connect_to(&engine_endpoint(config)).await?;
        Some(Workers::new(
            syncer.store().clone(),
            engine,
            build_settings(config)?,
        ))
    } else {
        // The same pool and placement as `kiln serve`; but a one-shot pass must not wait for
        // a pool that is all down, so it first asks every worker once.
        let settings = build_settings(config)?;
        let pool = crate::pool::WorkerPool::from_config(config, &probes)?;
        pool.first_probes().await;
        let status = pool.status();
        if !status.iter().any(|w| w.healthy) {
            let each: Vec<String> = status
                .iter()
                .map(|w| format!("{}: {}", w.name, w.error.as_deref().unwrap_or("no answer")))
                .collect();
            return Err(ServeError::NoWorker(each.join("; ")));
        }
        Some(Workers::new(syncer.store().clone(), pool, settings))
    };
    let outcome = syncer.sync_once().await?;
    let failed = match workers {
        Some(workers) => Some(workers.drain().await?),
        None => None,
    };
    Ok(SyncReport { outcome, failed })
}

/// Run the controller on `listener` until `shutdown` is cancelled (or the HTTP server
/// fails), then wait for every task and flush the store.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let syncer = Arc::new(open(&config).await?);
    let store = syncer.store().clone();
    let sync_trigger = Arc::new(tokio::sync::Notify::new());
    let webhooks = Webhooks::load(
        &config,
        std::env::var("KILN_WEBHOOK_SECRET").ok().as_deref(),
    )?;
    // Local repositories are watched (polling stays as the safety net); remote ones are fetched.
    let watcher = if config.watch {
        let location = crate::repo::RepoLocation::parse(&config.repo);
        crate::watch::RefWatcher::for_location(&location, &config.branch, Arc::clone(&sync_trigger))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot watch the repository; polling only");
                None
            })
    } else {
        None
    };
    // Set-up mistakes (a missing TLS file, an unreadable ca_bundle) stop the start; an Engine
    // that does not answer yet does not: the dashboard serves and jobs wait for it.
    let build = if config.no_build {
        None
    } else {
        let settings = build_settings(&config)?;
        Some((
            settings,
            crate::pool::WorkerPool::from_config(&config, &shutdown)?,
        ))
    };
    let counters = Arc::new(Counters::default());
    let mut state = AppState::new(
        store.clone(),
        AppInfo {
            repo: config.repo.clone(),
            branch: config.branch.clone(),
            no_build: config.no_build,
            poll_interval_secs: config.poll_interval.as_secs(),
            watching: watcher.as_ref().map(|w| w.git_dir().display().to_string()),
            commit_url: config.commit_url.clone(),
            repo_web_url: config.repo_web_url.clone(),
        },
        webhooks,
        Arc::clone(&sync_trigger),
        Arc::clone(&counters),
        shutdown.clone(),
    );
    if let Some((_, pool)) = &build {
        state = state.with_workers(pool.clone());
    }
    let base_settings = base_check_settings(&config)?;
    state = state.with_base(syncer.base_monitor());
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.listen.clone());
    tracing::info!(listen = %addr, repo = %crate::repo::redact(&config.repo), "kiln serving");

    let tasks = TaskTracker::new();
    if let Some((settings, pool)) = build {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tasks.spawn(async move {
            Workers::new(store, pool, settings)
                .run_forever(shutdown)
                .await
        });
    }
    tasks.spawn(crate::retention::run(
        store.clone(),
        config.retention.clone(),
        Arc::clone(&counters),
        shutdown.clone(),
    ));
    tasks.spawn(crate::base::schedule::run(
        store.clone(),
        syncer.base_monitor(),
        base_settings,
        Arc::clone(&sync_trigger),
        shutdown.clone(),
    ));
    tasks.spawn(crate::watch::sync_loop(
        Arc::clone(&syncer),
        config.poll_interval,
        sync_trigger,
        shutdown.clone(),
        move |result| {
            use std::sync::atomic::Ordering::Relaxed;
            counters.sync_passes.fetch_add(1, Relaxed);
            if result.is_err() {
                counters.sync_failures.fetch_add(1, Relaxed);
            }
        },
    ));
    let http = {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = crate::web::serve(listener, state, shutdown.clone()).await;
            // However the server ended, everything else stops too.
            shutdown.cancel();
            result
        })
    };
    tasks.close();
    let served = http.await;
    tasks.wait().await;
    drop(watcher);
    store.flush().await?;
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Http(e)),
        Err(e) => Err(ServeError::Http(std::io::Error::other(e.to_string()))),
    }
}

/// SIGINT or SIGTERM (SIGINT only where there is no SIGTERM).
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
