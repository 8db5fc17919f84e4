//! Name resolution for the guarded client: a seam (`Resolver`) with the system resolver as
//! default and a fixed table for tests, and the adapter that hands reqwest only the
//! addresses the policy allows, so the address connected to is the address checked.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;

use super::address::Refusal;
use super::url_policy::UrlPolicy;

/// Resolves a host name to addresses.
#[async_trait]
pub trait Resolver: Send + Sync {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver (`getaddrinfo` via `tokio::net::lookup_host`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let addrs = tokio::net::lookup_host((host, 0)).await?;
        Ok(addrs.map(|a| a.ip()).collect())
    }
}

/// A fixed table of names, for tests: a name not in it does not resolve, and nothing
/// touches the network.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        StaticResolver::default()
    }

    /// Adds `name` resolving to `ips`.
    pub fn with(mut self, name: &str, ips: &[IpAddr]) -> Self {
        self.names.insert(name.to_ascii_lowercase(), ips.to_vec());
        self
    }
}

#[async_trait]
impl Resolver for StaticResolver {
    async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.names
            .get(&host.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name not in the table"))
    }
}

/// The cause of a connection refused because every address of a name was refused: why
/// the first of them was.
#[derive(Debug)]
pub(crate) struct Blocked(pub(crate) Refusal);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "every address of the name is refused by the address policy (the first is {})",
            self.0
        )
    }
}

impl std::error::Error for Blocked {}

/// Plugs a `Resolver` into reqwest, dropping refused addresses.
pub(crate) struct Checked {
    pub(crate) inner: Arc<dyn Resolver>,
    pub(crate) policy: Arc<UrlPolicy>,
}

impl reqwest::dns::Resolve for Checked {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let inner = self.inner.clone();
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = inner.lookup(&host).await?;
            let mut allowed = Vec::new();
            let mut refused = Vec::new();
            for ip in found {
                match policy.check_address(ip) {
                    Ok(()) => allowed.push(ip),
                    Err(why) => refused.push((ip, why)),
                }
            }
            if !refused.is_empty() {
                tracing::warn!(%host, ?refused, ?allowed, "outbound: refused addresses dropped");
            }
            if let (true, Some(&(_, why))) = (allowed.is_empty(), refused.first()) {
                return Err(Box::new(Blocked(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
