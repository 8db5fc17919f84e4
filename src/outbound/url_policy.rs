//! The URL policy: which URLs batchlens accepts to connect to on a tenant's behalf, judged
//! without any network access (scheme, credentials, length, host, and a host that is a
//! literal address or `localhost` against the address policy). Names are judged at connect
//! time by the client's resolver.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use url::{Host, Url};

use super::address::{self, Refusal};

/// The longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// What is allowed beyond the strict default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Plain `http://` (development).
    pub allow_http: bool,
    /// Any address at all (development).
    pub allow_private: bool,
    /// These exact addresses despite the address policy: for tests that need one allowed
    /// loopback hop next to refused ones. Never set from configuration.
    pub exempt: Vec<IpAddr>,
}

/// Why a URL is refused; the `Display` is a reason to show after the field's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlRefusal {
    TooLong,
    Invalid(url::ParseError),
    NotHttps,
    Credentials,
    NoHost,
    Address(Refusal),
}

impl fmt::Display for UrlRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlRefusal::TooLong => write!(f, "longer than {MAX_URL_LEN} bytes"),
            UrlRefusal::Invalid(e) => write!(f, "not a URL: {e}"),
            UrlRefusal::NotHttps => f.write_str("scheme must be https"),
            UrlRefusal::Credentials => f.write_str("must not contain a user name or password"),
            UrlRefusal::NoHost => f.write_str("must have a host"),
            UrlRefusal::Address(why) => write!(f, "host is {why}"),
        }
    }
}

impl std::error::Error for UrlRefusal {}

impl UrlPolicy {
    /// https only, public addresses only.
    pub fn strict() -> Self {
        UrlPolicy::default()
    }

    /// The development setting: plain http and any address.
    pub fn development() -> Self {
        UrlPolicy {
            allow_http: true,
            allow_private: true,
            exempt: Vec::new(),
        }
    }

    /// `strict()`, or `development()` when `allow_private`.
    pub fn new(allow_private: bool) -> Self {
        if allow_private {
            UrlPolicy::development()
        } else {
            UrlPolicy::strict()
        }
    }

    /// Parses `raw` (WHATWG rules, as the client will) and judges it.
    pub fn check(&self, raw: &str) -> Result<Url, UrlRefusal> {
        if raw.len() > MAX_URL_LEN {
            return Err(UrlRefusal::TooLong);
        }
        let url = Url::parse(raw).map_err(UrlRefusal::Invalid)?;
        self.check_url(&url)?;
        Ok(url)
    }

    /// Judges a parsed URL: every redirect hop goes through here.
    pub fn check_url(&self, url: &Url) -> Result<(), UrlRefusal> {
        if url.as_str().len() > MAX_URL_LEN {
            return Err(UrlRefusal::TooLong);
        }
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(UrlRefusal::NotHttps),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRefusal::Credentials);
        }
        let ip = match url.host() {
            None => return Err(UrlRefusal::NoHost),
            Some(Host::Domain("")) => return Err(UrlRefusal::NoHost),
            Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
            // RFC 6761: localhost and its subdomains are loopback whatever DNS says.
            Some(Host::Domain(name)) if is_localhost(name) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(Host::Domain(_)) => return Ok(()),
        };
        self.check_address(ip).map_err(UrlRefusal::Address)
    }

    /// The address policy as this policy bends it.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.allow_private || self.exempt.contains(&ip) {
            return Ok(());
        }
        address::check(ip)
    }
}

fn is_localhost(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(url: &str) -> Result<(), UrlRefusal> {
        UrlPolicy::strict().check(url).map(|_| ())
    }

    #[test]
    fn literal_refused_addresses_in_every_spelling() {
        let table = [
            ("https://127.0.0.1/", Refusal::Loopback),
            ("https://127.0.0.1:8443/hook", Refusal::Loopback),
            ("https://127.0.0.2/", Refusal::Loopback),
            ("https://127.1/", Refusal::Loopback),
            ("https://2130706433/", Refusal::Loopback),
            ("https://0x7f.1/", Refusal::Loopback),
            ("https://0x7f000001/", Refusal::Loopback),
            ("https://0177.0.0.1/", Refusal::Loopback),
            ("https://127.0.0.1./", Refusal::Loopback),
            ("https://[::1]/", Refusal::Loopback),
            ("https://[::ffff:7f00:1]/", Refusal::Loopback),
            ("https://[::ffff:127.0.0.1]/", Refusal::Loopback),
            ("https://[::127.0.0.1]/", Refusal::Loopback),
            ("https://[64:ff9b::7f00:1]/", Refusal::Loopback),
            ("https://[2002:7f00:1::]/", Refusal::Loopback),
            ("https://localhost/", Refusal::Loopback),
            ("https://LOCALHOST./", Refusal::Loopback),
            ("https://api.localhost/", Refusal::Loopback),
            ("https://0.0.0.0/", Refusal::Unspecified),
            ("https://0/", Refusal::Unspecified),
            ("https://[::]/", Refusal::Unspecified),
            ("https://10.0.0.5/", Refusal::Private),
            ("https://172.16.1.1/", Refusal::Private),
            ("https://192.168.1.1/", Refusal::Private),
            ("https://[fd00::1]/", Refusal::Private),
            (
                "https://169.254.169.254/latest/meta-data/",
                Refusal::LinkLocal,
            ),
            ("https://[fe80::1]/", Refusal::LinkLocal),
            ("https://100.64.0.1/", Refusal::Shared),
            ("https://224.0.0.1/", Refusal::Multicast),
            ("https://[ff02::1]/", Refusal::Multicast),
            ("https://255.255.255.255/", Refusal::Broadcast),
        ];
        for (url, why) in table {
            assert_eq!(strict(url), Err(UrlRefusal::Address(why)), "{url}");
        }
    }

    #[test]
    fn shape_rules() {
        assert_eq!(strict("http://example.com/"), Err(UrlRefusal::NotHttps));
        assert_eq!(strict("ftp://example.com/"), Err(UrlRefusal::NotHttps));
        assert_eq!(strict("file:///etc/passwd"), Err(UrlRefusal::NotHttps));
        assert_eq!(
            strict("https://user:pw@example.com/"),
            Err(UrlRefusal::Credentials)
        );
        assert_eq!(
            strict("https://user@example.com/"),
            Err(UrlRefusal::Credentials)
        );
        assert_eq!(
            strict("https://:pw@example.com/"),
            Err(UrlRefusal::Credentials)
        );
        assert!(matches!(strict("not a url"), Err(UrlRefusal::Invalid(_))));
        assert!(matches!(strict("https://"), Err(UrlRefusal::Invalid(_))));
        assert!(matches!(
            strict("https://256.0.0.1/"),
            Err(UrlRefusal::Invalid(_))
        ));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(strict(&long), Err(UrlRefusal::TooLong));
        let just = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        assert_eq!(just.len(), MAX_URL_LEN);
        assert_eq!(strict(&just), Ok(()));
    }

    #[test]
    fn public_hosts_and_names_pass() {
        for url in [
            "https://example.com/hooks/batchlens",
            "https://cdn.example.com:8443/a.jpg?x=1",
            "https://93.184.216.34/",
            "https://[2606:4700::1]/",
            // A name is judged by what it resolves to, at connect time.
            "https://rebind.test/",
            "https://127.0.0.1.nip.io/",
        ] {
            assert_eq!(strict(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn development_allows_http_and_any_address_but_not_the_rest() {
        let dev = UrlPolicy::development();
        assert!(dev.check("http://127.0.0.1:8080/").is_ok());
        assert!(dev.check("http://[::1]:8080/").is_ok());
        assert!(dev.check("https://localhost/").is_ok());
        assert_eq!(
            dev.check("http://u:p@127.0.0.1/").unwrap_err(),
            UrlRefusal::Credentials
        );
        assert_eq!(
            dev.check("gopher://127.0.0.1/").unwrap_err(),
            UrlRefusal::NotHttps
        );
    }

    #[test]
    fn an_exempt_address_passes_alone() {
        let policy = UrlPolicy {
            allow_http: true,
            allow_private: false,
            exempt: vec!["127.0.0.1".parse().unwrap()],
        };
        assert!(policy.check("http://127.0.0.1:9/").is_ok());
        assert_eq!(
            policy.check("http://127.0.0.2:9/").unwrap_err(),
            UrlRefusal::Address(Refusal::Loopback)
        );
    }

    #[test]
    fn reasons_name_the_problem() {
        let reason = |url: &str| strict(url).unwrap_err().to_string();
        assert_eq!(reason("https://2130706433/"), "host is a loopback address");
        assert_eq!(
            reason("https://169.254.169.254/"),
            "host is a link-local address"
        );
        assert_eq!(reason("http://example.com/"), "scheme must be https");
        assert_eq!(
            reason("https://a:b@example.com/"),
            "must not contain a user name or password"
        );
        assert_eq!(
            reason(&format!("https://x/{}", "a".repeat(3000))),
            "longer than 2048 bytes"
        );
    }
}
