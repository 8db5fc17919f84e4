//! The guarded client: a `reqwest::Client` whose every connection goes through the URL
//! policy (the request and each redirect hop) and the checking resolver (the address
//! connected to), with no proxy, bounded redirects, timeouts, a size-bounded body reader,
//! and failures a tenant may see without learning hosts or ports.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::{Method, RequestBuilder, Response};

use super::address::Refusal;
use super::resolver::{Blocked, Checked, Resolver, SystemResolver};
use super::url_policy::{UrlPolicy, UrlRefusal};

/// Redirects an image fetch follows.
pub const FETCH_MAX_REDIRECTS: usize = 3;
/// The connect timeout when the caller gives none: the total, at most this.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a guarded client behaves.
#[derive(Clone)]
pub struct Options {
    pub policy: UrlPolicy,
    /// 0 follows none: a 3xx is then answered as `Failure::Status`.
    pub max_redirects: usize,
    pub connect_timeout: Duration,
    /// The whole request, body included.
    pub timeout: Duration,
    pub resolver: Arc<dyn Resolver>,
}

impl Options {
    /// Webhook deliveries: no redirects.
    pub fn webhooks(timeout: Duration) -> Self {
        Options {
            policy: UrlPolicy::strict(),
            max_redirects: 0,
            connect_timeout: timeout.min(DEFAULT_CONNECT_TIMEOUT),
            timeout,
            resolver: Arc::new(SystemResolver),
        }
    }

    /// Image fetches: up to `FETCH_MAX_REDIRECTS` redirects, each checked.
    pub fn fetches(timeout: Duration) -> Self {
        Options {
            max_redirects: FETCH_MAX_REDIRECTS,
            ..Options::webhooks(timeout)
        }
    }

    /// The development setting: plain http and any address when `yes`.
    pub fn allow_private(mut self, yes: bool) -> Self {
        self.policy = UrlPolicy::new(yes);
        self
    }

    pub fn policy(mut self, policy: UrlPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }
}

/// Why an outbound request failed, as a tenant may read it: never a host, a port or an
/// underlying error (those go to the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The URL (or a redirect's) breaks the URL policy for a reason other than its address.
    Url(UrlRefusal),
    /// The address, literal or resolved, is refused by the address policy, for this reason
    /// (of the first address, when a name resolves to several and all are refused).
    BlockedAddress(Refusal),
    /// Could not connect, TLS failed, the connection broke, the name did not resolve.
    Failed,
    TimedOut(Duration),
    /// A status outside 2xx (a 3xx too when redirects are not followed).
    Status(u16),
    TooLarge {
        limit: u64,
    },
    TooManyRedirects,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Url(why) => write!(f, "URL {why}"),
            Failure::BlockedAddress(_) => f.write_str("blocked address"),
            Failure::Failed => f.write_str("delivery failed"),
            Failure::TimedOut(after) => write!(f, "timed out after {} s", after.as_secs_f64()),
            Failure::Status(code) => write!(f, "HTTP {code}"),
            Failure::TooLarge { limit } => write!(f, "too large (over {limit} bytes)"),
            Failure::TooManyRedirects => f.write_str("too many redirects"),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Failed | Failure::TimedOut(_) => true,
            Failure::Status(code) => *code >= 500 || *code == 408 || *code == 429,
            _ => false,
        }
    }

    fn from_refusal(why: UrlRefusal) -> Self {
        match why {
            UrlRefusal::Address(why) => Failure::BlockedAddress(why),
            other => Failure::Url(other),
        }
    }
}

/// Why a redirect hop was not followed; found again in the error's causes.
#[derive(Debug)]
enum Hop {
    Refused(UrlRefusal),
    TooMany,
}

impl fmt::Display for Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hop::Refused(why) => write!(f, "redirect refused: {why}"),
            Hop::TooMany => f.write_str("too many redirects"),
        }
    }
}

impl std::error::Error for Hop {}

/// A fetched body.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Bytes,
    /// The `Content-Type` the server declared, if any.
    pub content_type: Option<String>,
}

/// The guarded client. Cheap to clone; build one per purpose at start.
#[derive(Clone)]
pub struct Outbound {
    http: reqwest::Client,
    policy: Arc<UrlPolicy>,
    connect_timeout: Duration,
    timeout: Duration,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    pub fn new(options: Options) -> Self {
        let policy = Arc::new(options.policy);
        let redirect = if options.max_redirects == 0 {
            reqwest::redirect::Policy::none()
        } else {
            let max = options.max_redirects;
            let hops = policy.clone();
            reqwest::redirect::Policy::custom(move |attempt| {
                // The first of `previous` is the request itself.
                if attempt.previous().len() > max {
                    return attempt.error(Hop::TooMany);
                }
                match hops.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(why) => attempt.error(Hop::Refused(why)),
                }
            })
        };
        let http = reqwest::Client::builder()
            // A proxy from the environment would connect for us, past the resolver.
            .no_proxy()
            .dns_resolver(Arc::new(Checked {
                inner: options.resolver,
                policy: policy.clone(),
            }))
            .redirect(redirect)
            .referer(false)
            .connect_timeout(options.connect_timeout)
            .timeout(options.timeout)
            .user_agent(concat!("batchlens/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client without custom TLS builds");
        Outbound {
            http,
            policy,
            connect_timeout: options.connect_timeout,
            timeout: options.timeout,
        }
    }

    pub fn policy(&self) -> &UrlPolicy {
        &self.policy
    }

    /// A request to `url`, checked by the URL policy; send it with `send`.
    pub fn request(&self, method: Method, url: &str) -> Result<RequestBuilder, Failure> {
        let url = self.policy.check(url).map_err(Failure::from_refusal)?;
        Ok(self.http.request(method, url))
    }

    pub fn get(&self, url: &str) -> Result<RequestBuilder, Failure> {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: &str) -> Result<RequestBuilder, Failure> {
        self.request(Method::POST, url)
    }

    /// Sends a request (checked again, and always through this client) and answers the
    /// response when its status is 2xx.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, Failure> {
        let request = request.build().map_err(|e| self.failure(e))?;
        self.policy
            .check_url(request.url())
            .map_err(Failure::from_refusal)?;
        let host = request.url().host_str().unwrap_or_default().to_owned();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| self.failure(e))?;
        let status = response.status();
        if !status.is_success() {
            tracing::debug!(%host, status = status.as_u16(), "outbound: not 2xx");
            return Err(Failure::Status(status.as_u16()));
        }
        Ok(response)
    }

    /// GETs `url` and reads its body, at most `max_bytes`.
    pub async fn fetch(&self, url: &str, max_bytes: u64) -> Result<Fetched, Failure> {
        let response = self.send(self.get(url)?).await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = self.read_limited(response, max_bytes).await?;
        Ok(Fetched {
            bytes,
            content_type,
        })
    }

    /// Reads a body of at most `max_bytes`: refused at once when `Content-Length` says
    /// more, and stopped (without buffering further) when the bytes do.
    pub async fn read_limited(
        &self,
        mut response: Response,
        max_bytes: u64,
    ) -> Result<Bytes, Failure> {
        let too_large = Failure::TooLarge { limit: max_bytes };
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Err(too_large);
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(e))? {
            if body.len() as u64 + chunk.len() as u64 > max_bytes {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// The tenant's view of a reqwest error; the whole cause goes to the log.
    fn failure(&self, error: reqwest::Error) -> Failure {
        let failure = if let Some(hop) = find::<Hop>(&error) {
            match hop {
                Hop::Refused(why) => Failure::from_refusal(why.clone()),
                Hop::TooMany => Failure::TooManyRedirects,
            }
        } else if let Some(Blocked(why)) = find::<Blocked>(&error) {
            Failure::BlockedAddress(*why)
        } else if error.is_timeout() {
            Failure::TimedOut(if error.is_connect() {
                self.connect_timeout.min(self.timeout)
            } else {
                self.timeout
            })
        } else {
            Failure::Failed
        };
        tracing::warn!(error = %chain(&error), tenant_sees = %failure, "outbound request failed");
        failure
    }
}

/// The first cause of type `T` in `error`'s chain.
fn find<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

/// `error` and its causes on one line.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_without_hosts_or_ports() {
        let cases = [
            (
                Failure::BlockedAddress(Refusal::Loopback),
                "blocked address",
            ),
            (Failure::Failed, "delivery failed"),
            (
                Failure::TimedOut(Duration::from_secs(10)),
                "timed out after 10 s",
            ),
            (
                Failure::TimedOut(Duration::from_millis(250)),
                "timed out after 0.25 s",
            ),
            (Failure::Status(404), "HTTP 404"),
            (
                Failure::TooLarge { limit: 1024 },
                "too large (over 1024 bytes)",
            ),
            (Failure::TooManyRedirects, "too many redirects"),
            (
                Failure::Url(UrlRefusal::NotHttps),
                "URL scheme must be https",
            ),
        ];
        for (failure, text) in cases {
            assert_eq!(failure.to_string(), text);
        }
    }

    #[test]
    fn retryable_failures() {
        assert!(Failure::Failed.is_retryable());
        assert!(Failure::Status(503).is_retryable());
        assert!(Failure::Status(429).is_retryable());
        assert!(!Failure::Status(404).is_retryable());
        assert!(!Failure::BlockedAddress(Refusal::Private).is_retryable());
        assert!(!Failure::TooLarge { limit: 1 }.is_retryable());
    }

    #[test]
    fn an_address_refusal_is_a_blocked_address() {
        let client = Outbound::new(Options::fetches(Duration::from_secs(1)));
        assert_eq!(
            client.get("https://2130706433/").unwrap_err(),
            Failure::BlockedAddress(Refusal::Loopback)
        );
        assert_eq!(
            client.get("http://example.com/").unwrap_err(),
            Failure::Url(UrlRefusal::NotHttps)
        );
    }
}
