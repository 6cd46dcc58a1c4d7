//! The HTTPS client — tokio-rustls (ring) and hyper's HTTP/1.1 connection, so each scenario
//! decides exactly when a connection (and a full handshake) is new — and the load loops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{ENV, Res};

pub fn client_tls(ca: &Path, client: Option<(&Path, &Path)>) -> Res<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder.with_client_auth_cert(
            CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_file(key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    // Every new connection pays a full handshake, like a fresh CI job.
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    authority: String,
}

impl Target {
    pub fn new(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            authority: addr.to_string(),
            addr,
            tls,
        }
    }
}

/// `https://127.0.0.1:8200` (or `localhost`) → the socket address; anything else is refused.
pub fn loopback_addr(url: &str) -> Res<SocketAddr> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("--vault-url must be https://")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replacen("localhost", "127.0.0.1", 1);
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| "--vault-url: want https://IP:PORT")?;
    if !addr.ip().is_loopback() {
        return Err("--vault-url must be a loopback address".into());
    }
    Ok(addr)
}

#[derive(Clone)]
pub struct Call {
    method: Method,
    path: Arc<str>,
    body: Option<Bytes>,
    bearer: Option<Arc<str>>,
}

impl Call {
    pub fn get(path: &str, bearer: Option<&str>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            body: None,
            bearer: bearer.map(Into::into),
        }
    }

    pub fn json(method: Method, path: &str, body: &Value) -> Self {
        Self {
            method,
            path: path.into(),
            body: Some(Bytes::from(body.to_string())),
            bearer: None,
        }
    }

    fn request(&self, t: &Target, close: bool) -> Result<Request<Full<Bytes>>, &'static str> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(&*self.path)
            .header("host", &t.authority)
            .header("user-agent", "jobpass-loadgen");
        if close {
            b = b.header("connection", "close");
        }
        if let Some(tok) = &self.bearer {
            b = b.header("authorization", format!("Bearer {tok}"));
        }
        if self.body.is_some() {
            b = b.header("content-type", "application/json");
        }
        b.body(Full::new(self.body.clone().unwrap_or_default()))
            .map_err(|_| "request")
    }
}

pub fn exchange_call(token: &str) -> Call {
    let body = json!({"token": token, "environment": ENV, "role": "ci"});
    Call::json(Method::POST, "/v1/exchange", &body)
}

pub fn login_call(mount: &str, role: &str, token: &str) -> Call {
    let body = json!({"role": role, "jwt": token});
    Call::json(Method::POST, &format!("/v1/auth/{mount}/login"), &body)
}

pub type Answer = Result<(u16, Bytes), &'static str>;

async fn connect(t: &Target) -> Result<SendRequest<Full<Bytes>>, &'static str> {
    let tcp = TcpStream::connect(t.addr).await.map_err(|_| "connect")?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::IpAddress(t.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(t.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|_| "tls")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|_| "http")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(s: &mut SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Answer {
    s.ready().await.map_err(|_| "http")?;
    let resp = s.send_request(req).await.map_err(|_| "http")?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|_| "http")?;
    Ok((status, body.to_bytes()))
}

/// One request on a new connection (`Connection: close`).
pub async fn once(t: &Target, call: &Call) -> Answer {
    let mut s = connect(t).await?;
    send(&mut s, call.request(t, true)?).await
}

/// One request on the worker's persistent connection, opened (again) when needed.
async fn reuse(t: &Target, conn: &mut Option<SendRequest<Full<Bytes>>>, call: &Call) -> Answer {
    let mut s = match conn.take() {
        Some(s) if !s.is_closed() => s,
        _ => connect(t).await?,
    };
    let r = send(&mut s, call.request(t, false)?).await;
    if r.is_ok() {
        *conn = Some(s);
    }
    r
}

pub fn expect_ok(what: &str, r: Answer) -> Res<Value> {
    match r {
        Ok((s, body)) if (200..300).contains(&s) => {
            Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
        }
        Ok((s, body)) => {
            Err(format!("{what}: HTTP {s}: {}", String::from_utf8_lossy(&body)).into())
        }
        Err(e) => Err(format!("{what}: {e} error").into()),
    }
}

/// The `token` credential of an exchange answer (and a check that a JWT was minted too).
pub fn broker_token(answer: &Value) -> Res<String> {
    let creds = answer["credentials"]
        .as_array()
        .ok_or("exchange: no credentials")?;
    let of = |kind: &str| creds.iter().find(|c| c["kind"] == kind);
    of("jwt").ok_or("exchange: no jwt credential")?;
    let token = of("token").and_then(|c| c["token"].as_str());
    Ok(token.ok_or("exchange: no token credential")?.to_string())
}

/// `n` calls made of the next `n` pre-minted tokens.
pub fn take(
    pool: &mut impl Iterator<Item = String>,
    n: usize,
    f: &dyn Fn(&str) -> Call,
) -> Res<Vec<Call>> {
    let calls: Vec<Call> = pool.take(n).map(|t| f(&t)).collect();
    if calls.len() < n {
        return Err("not enough pre-minted tokens".into());
    }
    Ok(calls)
}

// ---------------------------------------------------------------------------------------------
// Load: closed loop (C workers, fresh or persistent connections) and open loop (fixed rate).

/// What a scenario counted: requests sent, latencies of the successful ones, errors by class
/// (`HTTP 409`, `tls`, `timeout`, …), wall time.
#[derive(Default)]
pub struct Tally {
    pub sent: usize,
    pub lat_us: Vec<u64>,
    pub errors: BTreeMap<String, usize>,
    pub secs: f64,
}

impl Tally {
    fn record(&mut self, r: Result<Answer, tokio::time::error::Elapsed>, lat: Duration) {
        self.sent += 1;
        match r {
            Ok(Ok((s, _))) if (200..300).contains(&s) => self.lat_us.push(lat.as_micros() as u64),
            Ok(Ok((s, _))) => *self.errors.entry(format!("HTTP {s}")).or_default() += 1,
            Ok(Err(class)) => *self.errors.entry(class.to_string()).or_default() += 1,
            Err(_) => *self.errors.entry("timeout".into()).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.lat_us.extend(other.lat_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// Settings of the closed-loop scenarios.
pub struct Ctx {
    pub concurrency: usize,
    pub max_time: Duration,
    pub timeout: Duration,
}

impl Ctx {
    /// `calls` spread over C workers, each sending as fast as answers come back.
    pub async fn closed(&self, t: &Target, calls: Vec<Call>, fresh: bool) -> Tally {
        let calls = Arc::new(calls);
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let deadline = start + self.max_time;
        let timeout = self.timeout;
        let workers: Vec<_> = (0..self.concurrency)
            .map(|_| {
                let (t, calls, next) = (t.clone(), calls.clone(), next.clone());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    let mut conn = None;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= calls.len() || Instant::now() >= deadline {
                            break;
                        }
                        let t0 = Instant::now();
                        let r = if fresh {
                            tokio::time::timeout(timeout, once(&t, &calls[i])).await
                        } else {
                            let r = tokio::time::timeout(timeout, reuse(&t, &mut conn, &calls[i]));
                            r.await
                        };
                        tally.record(r, t0.elapsed());
                    }
                    tally
                })
            })
            .collect();
        let mut tally = Tally::default();
        for w in workers {
            match w.await {
                Ok(t) => tally.merge(t),
                Err(_) => *tally.errors.entry("worker failed".into()).or_default() += 1,
            }
        }
        tally.secs = start.elapsed().as_secs_f64();
        tally
    }
}

/// Request i is due at start + i/rate and is sent on its own task and connection whatever
/// happened to the others; its latency counts from that scheduled time.
pub async fn open_loop(
    t: &Target,
    calls: Vec<Call>,
    rate: f64,
    timeout: Duration,
    max_inflight: usize,
) -> Tally {
    let calls = Arc::new(calls);
    let inflight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(calls.len());
    let mut tally = Tally::default();
    for i in 0..calls.len() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        if inflight.load(Ordering::Relaxed) >= max_inflight {
            tally.sent += 1;
            *tally
                .errors
                .entry("client in-flight limit".into())
                .or_default() += 1;
            continue;
        }
        inflight.fetch_add(1, Ordering::Relaxed);
        let (t, calls, inflight) = (t.clone(), calls.clone(), inflight.clone());
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(timeout, once(&t, &calls[i])).await;
            inflight.fetch_sub(1, Ordering::Relaxed);
            (r, due.elapsed())
        }));
    }
    for task in tasks {
        match task.await {
            Ok((r, lat)) => tally.record(r, lat),
            Err(_) => {
                tally.sent += 1;
                *tally.errors.entry("task failed".into()).or_default() += 1;
            }
        }
    }
    tally.secs = start.elapsed().as_secs_f64();
    tally
}
