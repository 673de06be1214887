//! Connecting to a secured NATS server: authentication (user and password, token, NKey seed,
//! `.creds` file), TLS (custom CA, client certificate, `tls://` URLs), secrets read from files or
//! environment variables, and typed errors that never contain a secret.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions, Event, ServerError};
use tokio::sync::watch;

use crate::{Error, Result, wire};

/// Where a secret comes from: never the command line or a config value itself, which end up in
/// process listings, shell histories and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the secret (surrounding whitespace is trimmed).
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

impl SecretSource {
    /// Reads the secret. A missing file or variable is [`Error::Credentials`] naming the file or
    /// variable, never its content.
    pub fn read(&self) -> Result<Secret> {
        let value = match self {
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| credentials(format!("cannot read {}: {e}", path.display())))?,
            SecretSource::Env(var) => std::env::var(var)
                .map_err(|e| credentials(format!("environment variable {var}: {e}")))?,
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(credentials(format!("{self} is empty")));
        }
        Ok(Secret(value.to_owned()))
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
            SecretSource::Env(var) => write!(f, "env:{var}"),
        }
    }
}

impl FromStr for SecretSource {
    type Err = String;

    /// `file:PATH` or `env:VAR`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(SecretSource::File(path.into())),
            Some(("env", var)) if !var.is_empty() => Ok(SecretSource::Env(var.to_owned())),
            _ => Err("expected file:PATH or env:VAR (secrets are never given inline)".into()),
        }
    }
}

/// A secret value. Its `Debug` is redacted; the value is only handed to the NATS client.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A secret the application already holds (e.g. from its own vault client).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    fn expose(&self) -> String {
        self.0.clone()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<Secret> for SecretValue {
    fn from(secret: Secret) -> Self {
        SecretValue::Given(secret)
    }
}

impl From<SecretSource> for SecretValue {
    fn from(source: SecretSource) -> Self {
        SecretValue::Source(source)
    }
}

/// A secret, or where to read it when connecting.
#[derive(Debug, Clone)]
pub enum SecretValue {
    /// Read at connect time.
    Source(SecretSource),
    /// Held already.
    Given(Secret),
}

impl SecretValue {
    fn read(&self) -> Result<Secret> {
        match self {
            SecretValue::Source(source) => source.read(),
            SecretValue::Given(secret) => Ok(secret.clone()),
        }
    }
}

/// How the client authenticates to the server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Auth {
    /// User and password (a password in the URL, `nats://user:pass@host`, works too).
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: SecretValue,
    },
    /// A token.
    Token(SecretValue),
    /// An NKey seed (`SU...`): the client signs the server's nonce with it.
    NKey(SecretValue),
    /// A `.creds` file (user JWT and NKey seed), as `nsc` writes it.
    CredsFile(PathBuf),
}

/// How to connect to a NATS server: URL, authentication, TLS.
///
/// ```no_run
/// use liteorm_nats::{Auth, NatsConnect, SecretSource};
///
/// # async fn demo() -> Result<(), liteorm_nats::Error> {
/// let connection = NatsConnect::new("tls://nats.internal:4222")
///     .auth(Auth::CredsFile("/run/secrets/replica.creds".into()))
///     .tls_root_certificate("/etc/liteorm/nats-ca.pem")
///     .connect()
///     .await?;
/// let js = connection.jetstream();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsConnect {
    url: String,
    name: String,
    timeout: Duration,
    auth: Option<Auth>,
    root_certificates: Vec<PathBuf>,
    client_certificate: Option<(PathBuf, PathBuf)>,
    require_tls: bool,
}

impl fmt::Debug for NatsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConnect")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("auth", &self.auth)
            .field("root_certificates", &self.root_certificates)
            .field("client_certificate", &self.client_certificate)
            .field("require_tls", &self.require_tls)
            .finish()
    }
}

impl NatsConnect {
    /// A connection to `url` (`nats://`, `tls://`; comma-separated for several servers), no
    /// authentication, TLS only if the URL or the server asks for it, 5 s connect timeout.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConnect {
            url: url.into(),
            name: "liteorm".into(),
            timeout: Duration::from_secs(5),
            auth: None,
            root_certificates: Vec::new(),
            client_certificate: None,
            require_tls: false,
        }
    }

    /// The client name the server shows in its monitoring (default `liteorm`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long to wait for the first connection (default 5 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How to authenticate.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Trusts the CA certificate(s) in this PEM file for the server's certificate (in addition
    /// to the system's roots). Implies TLS.
    pub fn tls_root_certificate(mut self, pem: impl Into<PathBuf>) -> Self {
        self.root_certificates.push(pem.into());
        self.require_tls = true;
        self
    }

    /// Presents this client certificate and key (PEM files) for mutual TLS. Implies TLS.
    pub fn tls_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self.require_tls = true;
        self
    }

    /// Refuses to talk to the server without TLS (a `tls://` URL implies it).
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Connects. Errors are typed and secret-free: [`Error::Credentials`] (a secret or file
    /// that cannot be read), [`Error::Authentication`] (the server refused the credentials),
    /// [`Error::Tls`] (no trusted TLS session), or [`Error::Nats`] (unreachable).
    pub async fn connect(&self) -> Result<Connection> {
        let mut options = ConnectOptions::new();
        // The client ignores credentials in the URL: take them out and pass them as options.
        let (url, in_url) = split_credentials(&self.url);
        let auth = match (in_url, &self.auth) {
            (Some(_), Some(_)) => {
                return Err(credentials(
                    "credentials both in the URL and as options; give them once".into(),
                ));
            }
            (Some(from_url), None) => Some(from_url),
            (None, auth) => auth.clone(),
        };
        match &auth {
            None => {}
            Some(Auth::UserPassword { user, password }) => {
                options = options.user_and_password(user.clone(), password.read()?.expose());
            }
            Some(Auth::Token(token)) => options = options.token(token.read()?.expose()),
            Some(Auth::NKey(seed)) => options = options.nkey(seed.read()?.expose()),
            Some(Auth::CredsFile(path)) => {
                options = options.credentials_file(path).await.map_err(|e| {
                    credentials(format!("credentials file {}: {e}", path.display()))
                })?;
            }
        }
        for pem in &self.root_certificates {
            readable(pem, "CA certificate")?;
            options = options.add_root_certificates(pem.clone());
        }
        if let Some((cert, key)) = &self.client_certificate {
            readable(cert, "client certificate")?;
            readable(key, "client key")?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let (violations, denied) = watch::channel(None);
        let violations = Arc::new(violations);
        let client = options
            .name(&self.name)
            .connection_timeout(self.timeout)
            .require_tls(self.require_tls)
            .event_callback(move |event| {
                let violations = Arc::clone(&violations);
                async move {
                    if let Event::ServerError(ServerError::Other(message)) = event
                        && message.to_lowercase().contains("permissions violation")
                    {
                        tracing::error!(%message, "the NATS server denied an operation");
                        violations.send_replace(Some(message));
                    }
                }
            })
            .connect(url.as_str())
            .await
            .map_err(|err| self.connect_error(&err))?;
        Ok(Connection { client, denied })
    }

    fn connect_error(&self, err: &async_nats::ConnectError) -> Error {
        let server = self.redacted_url();
        // The client's message names the kind and cause, never the credentials.
        let reason = err.to_string();
        match err.kind() {
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                Error::Authentication { server, reason }
            }
            ConnectErrorKind::Tls => Error::Tls { server, reason },
            // rustls reports a refused certificate as an I/O error of the handshake.
            ConnectErrorKind::Io if is_tls_failure(&reason) => Error::Tls { server, reason },
            _ => Error::Nats {
                op: "connect",
                source: format!("{server}: {reason}").into(),
            },
        }
    }
}

/// A client connected by [`NatsConnect::connect`], which also watches for the server denying
/// an operation (a subject or JetStream API the user's permissions do not allow).
#[derive(Debug, Clone)]
pub struct Connection {
    client: async_nats::Client,
    denied: watch::Receiver<Option<String>>,
}

impl Connection {
    /// The client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// A JetStream context on this connection.
    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// Completes with [`Error::PermissionDenied`] when the server reports a permissions
    /// violation. The server only logs one and lets the request time out, so a publisher or
    /// follower would otherwise retry for ever: race its `run` against this.
    pub async fn permission_denied(&self) -> Error {
        let mut denied = self.denied.clone();
        let message = match denied.wait_for(Option::is_some).await {
            Ok(message) => message.clone().unwrap_or_default(),
            // The connection is gone; it cannot report anything any more.
            Err(_) => return std::future::pending().await,
        };
        Error::PermissionDenied { message }
    }
}

fn credentials(reason: String) -> Error {
    Error::Credentials { reason }
}

fn readable(path: &Path, what: &str) -> Result<()> {
    std::fs::metadata(path)
        .map(drop)
        .map_err(|e| credentials(format!("{what} {}: {e}", path.display())))
}

fn is_tls_failure(reason: &str) -> bool {
    let reason = reason.to_lowercase();
    ["certificate", "tls", "handshake", "unknownissuer"]
        .iter()
        .any(|word| reason.contains(word))
}

/// `urls` without user information, and the credentials of the first URL that had some
/// (`user:password`, or a lone user part, which NATS takes as a token).
fn split_credentials(urls: &str) -> (String, Option<Auth>) {
    let mut found = None;
    let stripped: Vec<String> = urls
        .split(',')
        .map(|one| {
            let Ok(mut url) = url::Url::parse(one.trim()) else {
                // Not a URL the parser knows (e.g. `host:4222`): the client reads it as is.
                return one.to_owned();
            };
            if url.username().is_empty() {
                return one.to_owned();
            }
            // URL escapes are the wire format's (`%XX`, UTF-8).
            let decode = |text: &str| wire::unescape(text).unwrap_or_else(|| text.to_owned());
            let user = decode(url.username());
            let auth = match url.password() {
                Some(password) => Auth::UserPassword {
                    user,
                    password: Secret::new(decode(password)).into(),
                },
                None => Auth::Token(Secret::new(user).into()),
            };
            found.get_or_insert(auth);
            // Both calls only fail for URLs that cannot have credentials, which this one had.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        })
        .collect();
    (stripped.join(","), found)
}

/// `url` (or a comma-separated list) with every password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &one[scheme + 3..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        format!("{}{user}:***{}", &one[..scheme + 3], &one[at..])
                    }
                    // A user part alone may be a token.
                    None => format!("{}***{}", &one[..scheme + 3], &one[at..]),
                }
            }
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_and_tokens() {
        assert_eq!(
            redact_url("nats://ada:s3cret@h:4222"),
            "nats://ada:***@h:4222"
        );
        assert_eq!(redact_url("tls://tok3n@h"), "tls://***@h");
        assert_eq!(
            redact_url("nats://a:p@h1,nats://h2"),
            "nats://a:***@h1,nats://h2"
        );
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn credentials_in_the_url_become_options() {
        let (url, auth) = split_credentials("nats://ada:p%40ss@h:4222,nats://h2:4222");
        assert_eq!(url, "nats://h:4222,nats://h2:4222");
        match auth {
            Some(Auth::UserPassword { user, password }) => {
                assert_eq!(user, "ada");
                assert_eq!(password.read().unwrap().expose(), "p@ss");
            }
            other => panic!("{other:?}"),
        }
        let (url, auth) = split_credentials("tls://tok@h:4222");
        assert_eq!(url, "tls://h:4222");
        assert!(matches!(auth, Some(Auth::Token(_))));
        assert_eq!(split_credentials("h:4222").0, "h:4222");
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let connect = NatsConnect::new("nats://ada:s3cret@h").auth(Auth::UserPassword {
            user: "ada".into(),
            password: Secret::new("hunter2").into(),
        });
        let shown = format!("{connect:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("ada"), "{shown}");
    }

    #[test]
    fn secrets_come_from_files_or_variables_only() {
        assert_eq!(
            "file:/run/x".parse::<SecretSource>(),
            Ok(SecretSource::File("/run/x".into()))
        );
        assert_eq!(
            "env:NATS_PW".parse::<SecretSource>(),
            Ok(SecretSource::Env("NATS_PW".into()))
        );
        assert!("hunter2".parse::<SecretSource>().is_err());
        assert!("file:".parse::<SecretSource>().is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        assert_eq!(
            SecretSource::File(path.clone()).read().unwrap().expose(),
            "hunter2"
        );
        let err = SecretSource::File(dir.path().join("missing"))
            .read()
            .unwrap_err();
        assert!(matches!(err, Error::Credentials { .. }), "{err}");
        std::fs::write(&path, "  \n").unwrap();
        assert!(
            SecretSource::File(path).read().is_err(),
            "an empty secret is refused"
        );
    }
}
