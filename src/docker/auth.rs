//! Registry credentials, read from a docker `config.json`.
//!
//! Kiln reads the `auths` section of a docker client configuration (default
//! `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, or a path from Kiln's config).
//! Each entry gives a username and password (either in `auth` as base64 of `user:password`, or
//! in `username`/`password`) and possibly an `identitytoken`. Entries that hold nothing inline
//! (their secret lives in a `credsStore`/`credHelpers` program) are skipped: Kiln does not run
//! credential helpers.
//!
//! Secrets never leave this module in readable form except towards the Docker Engine:
//! [`Credential`]'s `Debug` redacts the password and token, it has no `Display` and no
//! `Serialize`, and [`AuthError`] never quotes the file's contents.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The registry host Docker Hub images live on, in Kiln's normalized form.
pub const DOCKER_HUB: &str = "docker.io";
/// The key the Docker Engine (and `docker login`) uses for Docker Hub credentials.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A problem reading a docker `config.json`. Never contains the file's contents.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read docker config {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("docker config {path} is malformed: {message}")]
    Malformed { path: PathBuf, message: String },
}

/// Credentials for one registry.
///
/// `Debug` redacts the secrets; there is deliberately no `Display` and no `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    registry: String,
    username: String,
    password: String,
    identity_token: Option<String>,
    email: Option<String>,
}

impl Credential {
    /// A username/password credential for `registry` (a host such as `127.0.0.1:5001`, or any
    /// spelling [`normalize_registry`] accepts).
    pub fn new(registry: &str, username: impl Into<String>, password: impl Into<String>) -> Self {
        Credential {
            registry: normalize_registry(registry),
            username: username.into(),
            password: password.into(),
            identity_token: None,
            email: None,
        }
    }

    /// Adds an OAuth identity token (what `docker login` stores as `identitytoken`).
    pub fn with_identity_token(mut self, token: impl Into<String>) -> Self {
        self.identity_token = Some(token.into());
        self
    }

    /// Adds the (deprecated, ignored by registries) e-mail of the login.
    pub fn with_email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    /// The normalized registry host this credential is for (`docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// The key under which the Docker Engine looks this credential up in `X-Registry-Config`
    /// and the `serveraddress` of `X-Registry-Auth`.
    pub fn server_address(&self) -> &str {
        engine_auth_key(&self.registry)
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    pub(crate) fn identity_token(&self) -> Option<&str> {
        self.identity_token.as_deref()
    }

    pub(crate) fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Registry host → credential, from a docker `config.json`.
#[derive(Clone, Default)]
pub struct RegistryAuths {
    by_registry: BTreeMap<String, Credential>,
}

impl fmt::Debug for RegistryAuths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.by_registry.iter()).finish()
    }
}

/// The on-disk shape of `config.json` (only what Kiln reads).
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    email: Option<String>,
}

impl RegistryAuths {
    /// No credentials at all.
    pub fn empty() -> Self {
        RegistryAuths::default()
    }

    /// Where the docker client keeps its config: `$DOCKER_CONFIG/config.json`, else
    /// `$HOME/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
    }

    /// Reads `path`. A missing file gives no credentials; an unreadable or malformed file is an
    /// error that names the file but never quotes it.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::empty()),
            Err(e) => {
                return Err(AuthError::Read {
                    path: path.to_path_buf(),
                    message: io_message(&e),
                });
            }
        };
        Self::parse(&text).map_err(|message| AuthError::Malformed {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses the contents of a `config.json`. The error text never includes the input.
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let file: ConfigFile = serde_json::from_slice(bytes).map_err(|e| {
            // serde_json's own message can quote values ("invalid type: string \"…\""): only
            // the category and position are reported.
            let what = match e.classify() {
                serde_json::error::Category::Io => "read error",
                serde_json::error::Category::Syntax => "not valid JSON",
                serde_json::error::Category::Data => {
                    "unexpected structure (\"auths\" must map registry names to objects of strings)"
                }
                serde_json::error::Category::Eof => "unexpected end of file",
            };
            format!("{what} at line {} column {}", e.line(), e.column())
        })?;
        let mut by_registry = BTreeMap::new();
        // A key in Docker's own canonical form wins over another spelling of the same host.
        let mut keys: Vec<&String> = file.auths.keys().collect();
        keys.sort_by_key(|k| (k.as_str() != DOCKER_HUB_AUTH_KEY, k.as_str()));
        for key in keys {
            let entry = &file.auths[key];
            let registry = normalize_registry(key);
            if registry.is_empty() {
                return Err("an \"auths\" entry has an empty registry name".to_string());
            }
            let Some(credential) = entry_credential(&registry, entry)? else {
                tracing::debug!(registry = %registry, "docker config entry without inline credentials skipped (credential helpers are not supported)");
                continue;
            };
            by_registry.entry(registry).or_insert(credential);
        }
        Ok(RegistryAuths { by_registry })
    }

    /// The credential for registry `host` (any spelling [`normalize_registry`] accepts; the
    /// Docker Hub names `docker.io`, `index.docker.io`, `https://index.docker.io/v1/` are one).
    pub fn for_registry(&self, host: &str) -> Option<&Credential> {
        self.by_registry.get(&normalize_registry(host))
    }

    /// The registries credentials are known for, normalized, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_registry.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_registry.len()
    }

    /// Adds or replaces a credential (keyed by its registry).
    pub fn insert(&mut self, credential: Credential) {
        self.by_registry
            .insert(credential.registry.clone(), credential);
    }
}

fn io_message(e: &std::io::Error) -> String {
    // The kind is enough and never contains file contents.
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

fn entry_credential(registry: &str, entry: &AuthEntry) -> Result<Option<Credential>, String> {
    let mut username = entry.username.clone().filter(|u| !u.is_empty());
    let mut password = entry.password.clone().filter(|p| !p.is_empty());
    if let Some(auth) = entry
        .auth
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let decoded = lenient_base64()
            .decode(auth)
            .map_err(|_| format!("\"auth\" of registry {registry} is not valid base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("\"auth\" of registry {registry} is not UTF-8 text"))?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| {
            format!("\"auth\" of registry {registry} is not base64 of \"user:password\"")
        })?;
        username = Some(user.to_string());
        password = Some(pass.to_string());
    }
    let token = entry.identitytoken.clone().filter(|t| !t.is_empty());
    if username.is_none() && password.is_none() && token.is_none() {
        return Ok(None);
    }
    let mut credential = Credential::new(
        registry,
        username.unwrap_or_default(),
        password.unwrap_or_default(),
    );
    credential.identity_token = token;
    credential.email = entry.email.clone().filter(|e| !e.is_empty());
    Ok(Some(credential))
}

/// Standard alphabet, padding optional (some tools write `auth` without `=`).
fn lenient_base64() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// A registry name as Kiln compares it: scheme and path removed, lower case, and every Docker
/// Hub alias (`index.docker.io`, `registry-1.docker.io`, `registry.hub.docker.com`,
/// `https://index.docker.io/v1/`) turned into `docker.io`.
pub fn normalize_registry(name: &str) -> String {
    let mut host = name.trim();
    for scheme in ["https://", "http://"] {
        if host.len() >= scheme.len() && host[..scheme.len()].eq_ignore_ascii_case(scheme) {
            host = &host[scheme.len()..];
        }
    }
    let host = host.split('/').next().unwrap_or("").to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

/// The key the Engine expects for a normalized registry host.
pub(crate) fn engine_auth_key(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY
    } else {
        registry
    }
}

/// The registry an image reference pulls from, normalized:
/// `127.0.0.1:5001/kiln/x:tag` → `127.0.0.1:5001`, `debian` or `library/debian` → `docker.io`.
///
/// Docker's rule: the part before the first `/` is a registry when it contains `.` or `:`,
/// is `localhost`, or has upper-case letters; otherwise the image is on Docker Hub.
pub fn registry_of(image_ref: &str) -> String {
    let image_ref = image_ref.trim();
    match image_ref.split_once('/') {
        Some((first, _))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            normalize_registry(first)
        }
        _ => DOCKER_HUB.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    const SECRET: &str = "s3cr3t+/pässwörd";

    fn parse(json: &str) -> Result<RegistryAuths, String> {
        RegistryAuths::parse(json.as_bytes())
    }

    #[test]
    fn auth_field_is_decoded() {
        let auth = STANDARD.encode(format!("kiln:{SECRET}"));
        let auths = parse(&format!(
            r#"{{"auths": {{"127.0.0.1:5001": {{"auth": "{auth}"}}}}}}"#
        ))
        .unwrap();
        let c = auths.for_registry("127.0.0.1:5001").unwrap();
        assert_eq!(c.username(), "kiln");
        assert_eq!(c.password(), SECRET);
        assert_eq!(c.registry(), "127.0.0.1:5001");
        assert_eq!(auths.names().collect::<Vec<_>>(), ["127.0.0.1:5001"]);
    }

    #[test]
    fn password_may_contain_colons_and_padding_is_optional() {
        let auth = STANDARD
            .encode("user:pa:ss")
            .trim_end_matches('=')
            .to_string();
        let auths = parse(&format!(
            r#"{{"auths": {{"r.example.com": {{"auth": "{auth}"}}}}}}"#
        ))
        .unwrap();
        let c = auths.for_registry("r.example.com").unwrap();
        assert_eq!((c.username(), c.password()), ("user", "pa:ss"));
    }

    #[test]
    fn username_password_fields_and_identity_token() {
        let auths = parse(
            r#"{"auths": {
                "https://ghcr.io": {"username": "u", "password": "p"},
                "registry.example.com": {"auth": "", "identitytoken": "tok"}
            }, "credsStore": "desktop"}"#,
        )
        .unwrap();
        let c = auths.for_registry("ghcr.io").unwrap();
        assert_eq!((c.username(), c.password()), ("u", "p"));
        let t = auths.for_registry("registry.example.com").unwrap();
        assert_eq!(t.identity_token(), Some("tok"));
    }

    #[test]
    fn helper_only_entries_are_skipped() {
        let auths =
            parse(r#"{"auths": {"gcr.io": {}}, "credHelpers": {"gcr.io": "gcloud"}}"#).unwrap();
        assert!(auths.is_empty());
        assert!(auths.for_registry("gcr.io").is_none());
    }

    #[test]
    fn docker_hub_spellings_are_equivalent() {
        let auth = STANDARD.encode("hub:pw");
        let auths = parse(&format!(
            r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}}}}}}"#
        ))
        .unwrap();
        for name in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
            "registry-1.docker.io",
            "DOCKER.IO",
        ] {
            assert_eq!(
                auths.for_registry(name).map(Credential::username),
                Some("hub"),
                "{name}"
            );
        }
        assert_eq!(auths.names().collect::<Vec<_>>(), ["docker.io"]);
        assert_eq!(
            auths.for_registry("docker.io").unwrap().server_address(),
            DOCKER_HUB_AUTH_KEY
        );
    }

    #[test]
    fn canonical_hub_key_wins_over_other_spellings() {
        let a = STANDARD.encode("canonical:pw");
        let b = STANDARD.encode("other:pw");
        let auths = parse(&format!(
            r#"{{"auths": {{"docker.io": {{"auth": "{b}"}}, "https://index.docker.io/v1/": {{"auth": "{a}"}}}}}}"#
        ))
        .unwrap();
        assert_eq!(
            auths.for_registry("docker.io").unwrap().username(),
            "canonical"
        );
    }

    #[test]
    fn scheme_and_path_of_keys_are_ignored() {
        let auth = STANDARD.encode("u:p");
        let auths = parse(&format!(
            r#"{{"auths": {{"http://127.0.0.1:5001/v2/": {{"auth": "{auth}"}}}}}}"#
        ))
        .unwrap();
        assert!(auths.for_registry("127.0.0.1:5001").is_some());
    }

    #[test]
    fn malformed_input_never_echoes_contents() {
        let cases = [
            format!(r#"{{"auths": {{"r": {{"auth": 12}}}}, "x": "{SECRET}"}}"#),
            format!(r#"{{"auths": {{"r": {{"password": ["{SECRET}"]}}}}}}"#),
            format!(r#"{{"auths": {{"r": {{"auth": "{SECRET}"}}}}}}"#),
            format!(
                r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#,
                STANDARD.encode(SECRET)
            ),
            format!(r#"{{"auths": "{SECRET}"}}"#),
            format!(r#"{{"auths": {{"r": {{"auth": "{SECRET}"#),
        ];
        for case in &cases {
            let err = parse(case).expect_err(case);
            assert!(!err.contains(SECRET) && !err.contains("s3cr3t"), "{err}");
            let file_err = AuthError::Malformed {
                path: "/x/config.json".into(),
                message: err,
            };
            assert!(file_err.to_string().contains("/x/config.json"));
            assert!(!format!("{file_err} {file_err:?}").contains("s3cr3t"));
        }
    }

    #[test]
    fn load_missing_file_is_empty_and_malformed_file_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        assert!(RegistryAuths::load(&missing).unwrap().is_empty());
        let bad = dir.path().join("config.json");
        std::fs::write(
            &bad,
            format!("{{\"auths\": {{\"r\": {{\"auth\": \"{SECRET}\""),
        )
        .unwrap();
        let err = RegistryAuths::load(&bad).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&bad.display().to_string()), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credential::new("127.0.0.1:5001", "kiln", SECRET).with_identity_token("tok-secret");
        let mut auths = RegistryAuths::empty();
        auths.insert(c.clone());
        let text = format!("{c:?} {c:#?} {auths:?}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("tok-secret"),
            "{text}"
        );
        assert!(text.contains("kiln") && text.contains("<redacted>"));
    }

    #[test]
    fn registry_of_follows_docker_rules() {
        let cases = [
            ("127.0.0.1:5001/kiln/x:tag", "127.0.0.1:5001"),
            ("127.0.0.1:5000/kiln/bookworm:minbase", "127.0.0.1:5000"),
            ("debian", "docker.io"),
            ("debian:bookworm", "docker.io"),
            ("library/debian", "docker.io"),
            ("jupyter/base-notebook:latest", "docker.io"),
            ("docker.io/library/debian", "docker.io"),
            ("index.docker.io/library/debian", "docker.io"),
            ("ghcr.io/org/img@sha256:abcd", "ghcr.io"),
            ("localhost/x", "localhost"),
            ("localhost:5000/x", "localhost:5000"),
            ("Registry/x", "registry"),
        ];
        for (image, want) in cases {
            assert_eq!(registry_of(image), want, "{image}");
        }
    }
}
