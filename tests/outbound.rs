//! The guarded outbound client against loopback servers started here, which count the
//! connections they accept: refused addresses (literal or resolved through a test
//! resolver) are never connected to; the development setting reaches them; redirects,
//! timeouts, sizes and statuses end in failures that name no host or port. Nothing here
//! sends traffic anywhere but loopback.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use batchlens::outbound::{
    Failure, Options, Outbound, Refusal, StaticResolver, UrlPolicy, UrlRefusal, FETCH_MAX_REDIRECTS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the test server answers to a path.
pub(crate) enum Reply {
    Raw(Vec<u8>),
    /// Waits this long, then answers 200.
    Slow(Duration),
    /// Writes this many bytes with neither `Content-Length` nor chunking, then closes.
    Endless(usize),
}

pub(crate) type Routes = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// A loopback HTTP/1.1 server that counts accepted connections.
pub(crate) struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Server {
    pub(crate) async fn start(ip: &str, routes: Routes) -> Option<Server> {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().ok()?, 0))
            .await
            .ok()?;
        let addr = listener.local_addr().ok()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(stream, routes.clone()));
            }
        });
        Some(Server { addr, accepted })
    }

    /// A server that answers 200 "ok" to everything.
    pub(crate) async fn counting(ip: &str) -> Option<Server> {
        Server::start(ip, Arc::new(|_| Reply::Raw(ok("ok")))).await
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }
}

async fn answer(mut stream: TcpStream, routes: Routes) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    if stream.read_exact(&mut body).await.is_err() {
        return;
    }
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    match routes(&path) {
        Reply::Raw(bytes) => {
            let _ = stream.write_all(&bytes).await;
        }
        Reply::Slow(wait) => {
            tokio::time::sleep(wait).await;
            let _ = stream.write_all(&ok("late")).await;
        }
        Reply::Endless(n) => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await;
            let chunk = vec![b'x'; 16 * 1024];
            let mut sent = 0;
            while sent < n {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len();
            }
        }
    }
    let _ = stream.shutdown().await;
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub(crate) fn status(code: u16) -> Vec<u8> {
    format!("HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

pub(crate) fn redirect(to: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Names for the tests; nothing here is ever looked up on the network.
fn resolver() -> Arc<StaticResolver> {
    Arc::new(
        StaticResolver::new()
            .with("rebind.test", &[ip("127.0.0.1")])
            .with("second.test", &[ip("127.0.0.2")])
            .with("mapped.test", &[ip("::ffff:127.0.0.1")])
            .with("metadata.test", &[ip("169.254.169.254")])
            .with("v6.test", &[ip("::1")]),
    )
}

fn client(options: Options) -> Outbound {
    Outbound::new(
        options
            .connect_timeout(Duration::from_secs(2))
            .resolver(resolver()),
    )
}

/// A tenant-visible failure names no port, address or host name.
fn assert_opaque(failure: &Failure, ports: &[u16]) {
    let text = failure.to_string();
    for port in ports {
        assert!(!text.contains(&port.to_string()), "{text} names a port");
    }
    for host in ["127.", "::1", "localhost", ".test", "169.254"] {
        assert!(!text.contains(host), "{text} names a host");
    }
}

#[tokio::test]
async fn refused_addresses_are_never_connected_to() {
    let v4 = Server::counting("127.0.0.1").await.unwrap();
    let second = Server::counting("127.0.0.2").await.unwrap();
    // Not every machine has IPv6 loopback; the URL is refused either way.
    let v6 = Server::counting("::1").await;
    let (p, q) = (v4.port(), second.port());
    let r = v6.as_ref().map_or(p, Server::port);
    let urls = [
        format!("https://127.0.0.1:{p}/a.png"),
        format!("https://[::1]:{r}/a.png"),
        format!("https://127.0.0.2:{q}/a.png"),
        format!("https://2130706433:{p}/a.png"),
        format!("https://0x7f.1:{p}/a.png"),
        format!("https://[::ffff:7f00:1]:{p}/a.png"),
        format!("https://localhost:{p}/a.png"),
        format!("https://rebind.test:{p}/a.png"),
        format!("https://second.test:{q}/a.png"),
        format!("https://mapped.test:{p}/a.png"),
        format!("https://v6.test:{r}/a.png"),
        format!("https://metadata.test:{p}/a.png"),
    ];
    let fetcher = client(Options::fetches(Duration::from_secs(5)));
    let hooks = client(Options::webhooks(Duration::from_secs(5)));
    for url in &urls {
        // The kind of the address connected to is named (169.254.169.254 is link-local).
        let kind = if url.contains("metadata") {
            Refusal::LinkLocal
        } else {
            Refusal::Loopback
        };
        let failure = fetcher.fetch(url, 1024).await.unwrap_err();
        assert_eq!(failure, Failure::BlockedAddress(kind), "{url}");
        assert_opaque(&failure, &[p, q, r]);
        let failure = match hooks.post(url) {
            Ok(request) => hooks.send(request.body("{}")).await.unwrap_err(),
            Err(failure) => failure,
        };
        assert_eq!(failure, Failure::BlockedAddress(kind), "{url}");
    }
    assert_eq!(v4.accepted(), 0);
    assert_eq!(second.accepted(), 0);
    assert_eq!(v6.as_ref().map_or(0, Server::accepted), 0);
}

#[tokio::test]
async fn the_development_setting_reaches_loopback() {
    let server = Server::counting("127.0.0.1").await.unwrap();
    let p = server.port();
    let fetcher = client(Options::fetches(Duration::from_secs(5)).allow_private(true));
    for url in [
        format!("http://127.0.0.1:{p}/a.png"),
        format!("http://rebind.test:{p}/a.png"),
        format!("http://2130706433:{p}/a.png"),
    ] {
        let fetched = fetcher.fetch(&url, 1024).await.unwrap();
        assert_eq!(&fetched.bytes[..], b"ok", "{url}");
        assert_eq!(fetched.content_type.as_deref(), Some("image/png"));
    }
    let hooks = client(Options::webhooks(Duration::from_secs(5)).allow_private(true));
    let url = format!("http://127.0.0.1:{p}/hook");
    let response = hooks
        .send(hooks.post(&url).unwrap().body("{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.accepted(), 4);
    // Still no credentials, development or not.
    let with_credentials = format!("http://u:pw@127.0.0.1:{p}/");
    assert_eq!(
        fetcher.fetch(&with_credentials, 1024).await.unwrap_err(),
        Failure::Url(UrlRefusal::Credentials)
    );
    assert_eq!(server.accepted(), 4);
}

#[tokio::test]
async fn every_redirect_hop_is_checked() {
    // The target of the refused hops, on an address the policy refuses.
    let target = Server::counting("127.0.0.2").await.unwrap();
    let q = target.port();
    let routes: Routes = Arc::new(move |path: &str| {
        Reply::Raw(match path {
            "/to-literal" => redirect(&format!("http://127.0.0.2:{q}/a.png")),
            "/to-decimal" => redirect(&format!("http://2130706434:{q}/a.png")),
            "/to-name" => redirect(&format!("http://second.test:{q}/a.png")),
            "/to-credentials" => redirect(&format!("http://u:p@127.0.0.2:{q}/a.png")),
            "/to-ftp" => redirect("ftp://example.com/a.png"),
            "/loop" => redirect("/loop"),
            "/final" => ok("final"),
            hop if hop.starts_with("/hop/") => {
                let n: usize = hop["/hop/".len()..].parse().unwrap();
                if n == 0 {
                    ok("landed")
                } else {
                    redirect(&format!("/hop/{}", n - 1))
                }
            }
            _ => status(404),
        })
    });
    let origin = Server::start("127.0.0.1", routes).await.unwrap();
    let p = origin.port();
    // The origin is the one allowed loopback address; the policy is on for the rest.
    let policy = UrlPolicy {
        allow_http: true,
        allow_private: false,
        exempt: vec![ip("127.0.0.1")],
    };
    let fetcher = client(Options::fetches(Duration::from_secs(5)).policy(policy));
    let url = |path: &str| format!("http://127.0.0.1:{p}{path}");

    for path in ["/to-literal", "/to-decimal", "/to-name"] {
        let failure = fetcher.fetch(&url(path), 1024).await.unwrap_err();
        assert_eq!(
            failure,
            Failure::BlockedAddress(Refusal::Loopback),
            "{path}"
        );
        assert_opaque(&failure, &[p, q]);
    }
    assert_eq!(
        fetcher
            .fetch(&url("/to-credentials"), 1024)
            .await
            .unwrap_err(),
        Failure::Url(UrlRefusal::Credentials)
    );
    assert_eq!(
        fetcher.fetch(&url("/to-ftp"), 1024).await.unwrap_err(),
        Failure::Url(UrlRefusal::NotHttps)
    );
    assert_eq!(target.accepted(), 0);

    let landed = fetcher
        .fetch(&url(&format!("/hop/{FETCH_MAX_REDIRECTS}")), 1024)
        .await
        .unwrap();
    assert_eq!(&landed.bytes[..], b"landed");
    let too_many = format!("/hop/{}", FETCH_MAX_REDIRECTS + 1);
    assert_eq!(
        fetcher.fetch(&url(&too_many), 1024).await.unwrap_err(),
        Failure::TooManyRedirects
    );
    assert_eq!(
        fetcher.fetch(&url("/loop"), 1024).await.unwrap_err(),
        Failure::TooManyRedirects
    );

    // Webhooks follow no redirect: the 302 is the answer.
    let hooks = client(Options::webhooks(Duration::from_secs(5)).policy(UrlPolicy {
        allow_http: true,
        allow_private: false,
        exempt: vec![ip("127.0.0.1")],
    }));
    let failure = hooks
        .send(hooks.post(&url("/to-literal")).unwrap())
        .await
        .unwrap_err();
    assert_eq!(failure, Failure::Status(302));
    assert_eq!(target.accepted(), 0);

    // The control: with the development setting the same hop is followed and connects.
    let open = client(Options::fetches(Duration::from_secs(5)).allow_private(true));
    let fetched = open.fetch(&url("/to-literal"), 1024).await.unwrap();
    assert_eq!(&fetched.bytes[..], b"ok");
    assert_eq!(target.accepted(), 1);
}

#[tokio::test]
async fn statuses_timeouts_sizes_and_dead_ports() {
    let routes: Routes = Arc::new(|path: &str| match path {
        "/missing" => Reply::Raw(status(404)),
        "/broken" => Reply::Raw(status(503)),
        "/slow" => Reply::Slow(Duration::from_secs(30)),
        "/claims-big" => Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\nConnection: close\r\n\r\nxx".to_vec(),
        ),
        "/endless" => Reply::Endless(64 * 1024 * 1024),
        "/exact" => Reply::Raw(ok(&"y".repeat(1000))),
        _ => Reply::Raw(ok("ok")),
    });
    let server = Server::start("127.0.0.1", routes).await.unwrap();
    let p = server.port();
    let url = |path: &str| format!("http://127.0.0.1:{p}{path}");
    let fetcher = client(Options::fetches(Duration::from_millis(300)).allow_private(true));

    let cases = [
        ("/missing", 1024, Failure::Status(404), "HTTP 404"),
        ("/broken", 1024, Failure::Status(503), "HTTP 503"),
        (
            "/slow",
            1024,
            Failure::TimedOut(Duration::from_millis(300)),
            "timed out after 0.3 s",
        ),
        (
            "/claims-big",
            1024,
            Failure::TooLarge { limit: 1024 },
            "too large (over 1024 bytes)",
        ),
        (
            "/endless",
            64 * 1024,
            Failure::TooLarge { limit: 64 * 1024 },
            "too large (over 65536 bytes)",
        ),
        (
            "/exact",
            999,
            Failure::TooLarge { limit: 999 },
            "too large (over 999 bytes)",
        ),
    ];
    for (path, limit, expected, text) in cases {
        let failure = fetcher.fetch(&url(path), limit).await.unwrap_err();
        assert_eq!(failure, expected, "{path}");
        assert_eq!(failure.to_string(), text);
        assert_opaque(&failure, &[p]);
    }
    let exact = fetcher.fetch(&url("/exact"), 1000).await.unwrap();
    assert_eq!(exact.bytes.len(), 1000);

    // A port nobody listens on, and a name nobody knows.
    let (_held, dead) = crate::common::refused_port();
    for url in [
        format!("http://127.0.0.1:{dead}/"),
        "http://unknown.test/".to_owned(),
    ] {
        let failure = fetcher.fetch(&url, 1024).await.unwrap_err();
        assert_eq!(failure, Failure::Failed, "{url}");
        assert_eq!(failure.to_string(), "delivery failed");
        assert_opaque(&failure, &[p, dead]);
    }
}
