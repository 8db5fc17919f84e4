//! Outbound safety: the one guarded HTTP client through which batchlens connects to any URL
//! a tenant gave (webhook deliveries, image fetches). It owns the address and URL policies
//! and the connection rules; it knows nothing of jobs, stores or axum.
//!
//! - `address::check(ip)`: the address policy (loopback, private, link-local, CGNAT,
//!   multicast, unspecified, broadcast, documentation, reserved, and the IPv6 forms that
//!   embed such an IPv4 address).
//! - `UrlPolicy::check(url)`: the URL policy, pure, for submit time: https only, no
//!   credentials, at most `MAX_URL_LEN` bytes, a host, and a literal address (in any
//!   WHATWG spelling: `2130706433`, `0x7f.1`, `[::ffff:7f00:1]`) or `localhost` judged at
//!   once. `Display` of `UrlRefusal` is the reason to put after the field's name.
//! - `Outbound`: a `reqwest::Client` without proxy whose resolver hands out only allowed
//!   addresses (DNS rebinding cannot slip past: the address connected to is the one
//!   checked), whose redirect policy checks every hop with the URL policy, with connect and
//!   total timeouts. Its `Failure`s read `blocked address`, `delivery failed`, `timed out
//!   after 10 s`, `HTTP 404`, `too large (over N bytes)`: never a host or a port; the full
//!   cause is logged.
//!
//! Wiring, at start (log the development setting when it is on):
//!
//! ```ignore
//! // Webhooks: no redirects.
//! let hooks = Outbound::new(Options::webhooks(timeout).allow_private(dev));
//! // At submit: UrlPolicy::new(dev).check(url).map_err(|why| bad("webhook_url", why))?;
//! let response = hooks.send(hooks.post(&url)?.header(..).body(body)).await?; // 2xx or Err
//! // Fetches: up to 3 redirects, each checked.
//! let fetcher = Outbound::new(Options::fetches(timeout).allow_private(dev));
//! let Fetched { bytes, content_type } = fetcher.fetch(&url, max_bytes).await?;
//! ```
//!
//! Tests give `Options::resolver(Arc::new(StaticResolver::new().with("rebind.test",
//! &[loopback])))` so no name touches the network, and `UrlPolicy::exempt` for the one
//! loopback hop a redirect test needs to be allowed.

pub mod address;
mod client;
mod resolver;
mod url_policy;

pub use address::{check, Refusal};
pub use client::{Failure, Fetched, Options, Outbound, FETCH_MAX_REDIRECTS};
pub use resolver::{Resolver, StaticResolver, SystemResolver};
pub use url_policy::{UrlPolicy, UrlRefusal, MAX_URL_LEN};
