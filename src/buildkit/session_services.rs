//! What a build's session answers when BuildKit calls back: health, registry credentials and
//! build secrets, each limited to what this one build was given.
//!
//! * `grpc.health.v1.Health/Check`: BuildKit checks a session's health while it uses it.
//! * `moby.filesync.v1.Auth/Credentials`: the credential for the registry host BuildKit names,
//!   that host's only (Docker Hub's also as `registry-1.docker.io`, the host its resolver
//!   uses); any other host gets the empty answer, which BuildKit takes as "anonymous".
//!   `FetchToken`, `GetTokenAuthority` and `VerifyTokenAuthority` answer `Unimplemented` and
//!   are not advertised, as the Docker CLI does without client-side tokens: on a registry's
//!   Bearer challenge BuildKit first asks `GetTokenAuthority`, takes `Unimplemented` (or
//!   `Unavailable`) as "no token authority", calls `Credentials` and fetches the registry
//!   token itself with that username and secret; `FetchToken` is only called after a token
//!   authority answered. On a Basic challenge (the htpasswd registry of the dev environment,
//!   checked with Engine 20.10's BuildKit) it uses the `Credentials` answer as it is.
//! * `moby.buildkit.secrets.v1.Secrets/GetSecret`: the bytes of a secret of this build by id;
//!   any other id is `NotFound`, which BuildKit reports as the mount's error.
//!
//! Separate from the connection handling (`session_server.rs`) so that every answer is a unit
//! test without an Engine.

use super::secret::BuildSecret;
use crate::docker::auth::Credential;
use bollard_buildkit_proto::health::health_check_response::ServingStatus;
use bollard_buildkit_proto::health::health_server::{Health, HealthServer};
use bollard_buildkit_proto::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bollard_buildkit_proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard_buildkit_proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use std::collections::HashMap;
use std::pin::Pin;
use tonic::{Request, Response, Status};

/// The gRPC methods the session serves, as the Engine's `/session` is told
/// (`X-Docker-Expose-Session-Grpc-Method`, one header each).
pub(crate) const METHODS: [&str; 3] = [
    "/grpc.health.v1.Health/Check",
    "/moby.filesync.v1.Auth/Credentials",
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
];

/// The three services, ready for a tonic router.
pub(crate) struct Services {
    pub(crate) health: HealthServer<SessionHealth>,
    pub(crate) auth: AuthServer<SessionAuth>,
    pub(crate) secrets: SecretsServer<SessionSecrets>,
}

impl Services {
    pub(crate) fn new(credentials: &[Credential], secrets: &[BuildSecret]) -> Services {
        Services {
            health: HealthServer::new(SessionHealth),
            auth: AuthServer::new(SessionAuth::new(credentials)),
            secrets: SecretsServer::new(SessionSecrets::new(secrets)),
        }
    }
}

/// Always serving: the session lives exactly as long as its build.
pub(crate) struct SessionHealth;

#[tonic::async_trait]
impl Health for SessionHealth {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    async fn list(
        &self,
        _request: Request<HealthListRequest>,
    ) -> Result<Response<HealthListResponse>, Status> {
        let serving = HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        };
        Ok(Response::new(HealthListResponse {
            statuses: HashMap::from([(String::new(), serving)]),
        }))
    }

    type WatchStream = Pin<
        Box<dyn futures_util::Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>,
    >;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch is not served by this session"))
    }
}

/// Username and secret per registry host.
pub(crate) struct SessionAuth {
    by_host: HashMap<String, (String, String)>,
}

impl SessionAuth {
    pub(crate) fn new(credentials: &[Credential]) -> SessionAuth {
        let mut by_host = HashMap::new();
        for c in credentials {
            // An identity token goes as the secret with an empty username (Docker's rule).
            let answer = match c.identity_token() {
                Some(token) => (String::new(), token.to_string()),
                None => (c.username().to_string(), c.password().to_string()),
            };
            if c.registry() == "docker.io" {
                by_host.insert("registry-1.docker.io".to_string(), answer.clone());
            }
            by_host.insert(c.registry().to_string(), answer);
        }
        SessionAuth { by_host }
    }

    fn answer(&self, host: &str) -> CredentialsResponse {
        match self.by_host.get(host) {
            Some((username, secret)) => CredentialsResponse {
                username: username.clone(),
                secret: secret.clone(),
            },
            None => CredentialsResponse::default(),
        }
    }
}

impl std::fmt::Debug for SessionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut hosts: Vec<&String> = self.by_host.keys().collect();
        hosts.sort();
        f.debug_struct("SessionAuth")
            .field("hosts", &hosts)
            .finish()
    }
}

#[tonic::async_trait]
impl Auth for SessionAuth {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        Ok(Response::new(self.answer(&request.get_ref().host)))
    }

    async fn fetch_token(
        &self,
        _request: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented(
            "the session gives credentials, not tokens",
        ))
    }

    async fn get_token_authority(
        &self,
        _request: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("the session has no token authority"))
    }

    async fn verify_token_authority(
        &self,
        _request: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("the session has no token authority"))
    }
}

/// The secrets of one build, by id.
pub(crate) struct SessionSecrets {
    by_id: HashMap<String, BuildSecret>,
}

impl SessionSecrets {
    pub(crate) fn new(secrets: &[BuildSecret]) -> SessionSecrets {
        SessionSecrets {
            by_id: secrets.iter().map(|s| (s.id.clone(), s.clone())).collect(),
        }
    }

    fn lookup(&self, id: &str) -> Result<Vec<u8>, Status> {
        match self.by_id.get(id) {
            Some(s) => Ok(s.data.clone()),
            None => Err(Status::not_found(format!(
                "secret {id:?} was not given to this build"
            ))),
        }
    }
}

#[tonic::async_trait]
impl Secrets for SessionSecrets {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let data = self.lookup(&request.get_ref().id)?;
        Ok(Response::new(GetSecretResponse { data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_host_gets_its_own_credential_and_others_none() {
        let auth = SessionAuth::new(&[
            Credential::new("127.0.0.1:5001", "kiln", "pw+/x"),
            Credential::new("https://index.docker.io/v1/", "hub", "pw2"),
        ]);
        let ask = |host: &str| CredentialsRequest { host: host.into() };
        let got = auth
            .credentials(Request::new(ask("127.0.0.1:5001")))
            .await
            .unwrap();
        assert_eq!(got.get_ref().username, "kiln");
        assert_eq!(got.get_ref().secret, "pw+/x");
        for hub in ["docker.io", "registry-1.docker.io"] {
            let got = auth.credentials(Request::new(ask(hub))).await.unwrap();
            assert_eq!(got.get_ref().username, "hub", "{hub}");
        }
        let other = auth
            .credentials(Request::new(ask("127.0.0.1:5000")))
            .await
            .unwrap();
        assert_eq!(other.get_ref(), &CredentialsResponse::default());
        assert!(!format!("{auth:?}").contains("pw"), "{auth:?}");
        let token = auth
            .fetch_token(Request::new(FetchTokenRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(token.code(), tonic::Code::Unimplemented);
    }

    #[tokio::test]
    async fn a_secret_is_given_only_for_an_id_of_this_build() {
        let secrets = SessionSecrets::new(&[
            BuildSecret::new("s1", "value-1"),
            BuildSecret::new("s2", "value-2"),
        ]);
        let ask = |id: &str| GetSecretRequest {
            id: id.into(),
            annotations: HashMap::new(),
        };
        let got = secrets.get_secret(Request::new(ask("s1"))).await.unwrap();
        assert_eq!(got.get_ref().data, b"value-1");
        let got = secrets.get_secret(Request::new(ask("s2"))).await.unwrap();
        assert_eq!(got.get_ref().data, b"value-2");
        for other in ["s3", "", "S1"] {
            let err = secrets
                .get_secret(Request::new(ask(other)))
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::NotFound, "{other:?}");
            assert!(!err.message().contains("value"), "{err}");
        }
        let none = SessionSecrets::new(&[]);
        let err = none.get_secret(Request::new(ask("s1"))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn health_says_serving_and_the_methods_name_the_services() {
        let got = SessionHealth
            .check(Request::new(HealthCheckRequest::default()))
            .await
            .unwrap();
        assert_eq!(got.get_ref().status, ServingStatus::Serving as i32);
        use tonic::server::NamedService;
        for (method, service) in METHODS.iter().zip([
            <HealthServer<SessionHealth> as NamedService>::NAME,
            <AuthServer<SessionAuth> as NamedService>::NAME,
            <SecretsServer<SessionSecrets> as NamedService>::NAME,
        ]) {
            assert!(
                method.starts_with(&format!("/{service}/")),
                "{method} {service}"
            );
        }
    }
}
