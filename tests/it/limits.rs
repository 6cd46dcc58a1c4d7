//! Staying up under attack (issue 11, items 1–3): names are checked before anything is
//! recorded or echoed; callers who prove no identity are counted into aggregate audit records;
//! rate limits per source, per subject and global answer 429 with `Retry-After`; silent
//! connections are closed, a source over its connection cap is cut off, HTTP/2 carries a stream
//! limit and pings, and an oversized body gets its 413 before the connection closes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::{Broker, Options, github_claims};

crate::support::harness::cases! {
    EachStore: [
        names_are_checked_before_anything_is_recorded_or_echoed,
        refusals_without_an_identity_are_counted_into_aggregate_records,
        a_source_over_its_rate_gets_429_with_retry_after,
        a_subject_over_its_rate_is_refused_without_spending_its_token,
        silent_connections_are_closed,
        a_source_over_its_connection_cap_is_cut_off,
        an_oversized_body_gets_its_413_before_the_connection_closes,
        an_oversized_http2_body_gets_its_answer_before_the_stream_is_reset,
        http2_connections_carry_a_stream_limit_and_pings,
        anonymous_traffic_cannot_spend_the_admin_budget_of_certificate_holders,
        refusals_of_a_verified_caller_are_lines_up_to_a_budget_then_counted,
        a_revoked_token_used_again_is_on_record_with_its_lease,
    ],
}

async fn with_limits(limits: &str) -> Broker {
    Broker::start_with(Options {
        extra_config: format!("[limits]\n{limits}\n"),
        ..Options::default()
    })
    .await
}

/// A TLS connection to the broker, handshake done, offering `alpn`.
async fn connect(b: &Broker, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in jobpass::tls::parse_certs(&b.pki.ca_pem, "test CA").unwrap() {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let addr = b.url.trim_start_matches("https://").to_string();
    let tcp = TcpStream::connect(&addr).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Reads until the server closes the connection (EOF or reset); false if it is still open
/// after `within`.
async fn closed_within(s: &mut TlsStream<TcpStream>, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn names_are_checked_before_anything_is_recorded_or_echoed() {
    let b = Broker::start().await;
    let long = "e".repeat(60 * 1024);
    let marker = "e".repeat(100);
    let answers = vec![
        b.exchange(&b.github_token(), &long, Some("deploy-web"))
            .await,
        b.exchange(&b.github_token(), "prod\nforged", None).await,
        b.exchange(&b.github_token(), "prod", Some(&long)).await,
        b.get(&format!("/v1/secrets/{long}/x"), Some("jpt_x")).await,
        b.get(
            &format!("/v1/secrets/prod/{}", "p".repeat(4000)),
            Some("jpt_x"),
        )
        .await,
        b.get(&format!("/v1/envs/{long}/jwks.json"), None).await,
    ];
    for (status, body) in &answers {
        assert_eq!(*status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert!(!body.to_string().contains(&marker), "the name was echoed");
    }
    // An admin call without a certificate, on a route naming a long environment.
    let (status, _) = b
        .request(
            &b.client(),
            "POST",
            &format!("/v1/admin/environments/{long}/freeze"),
            None,
            Some(json!({"reason": "x"}).to_string()),
        )
        .await;
    assert_eq!(status, 403);
    b.app.flush_refusals().await.unwrap();
    let text = b.audit_text();
    assert!(!text.contains(&marker), "a long name reached the audit log");
    assert!(!text.contains("forged"), "a bad name reached the audit log");
    let longest = text.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2048, "an audit line of {longest} bytes");
    assert_eq!(b.lease_count().await, 0);
}

fn refusal_records(b: &Broker) -> Vec<Value> {
    b.audit_records()
        .into_iter()
        .filter(|r| r["event"] == "refusals")
        .collect()
}

async fn refusals_without_an_identity_are_counted_into_aggregate_records() {
    let b = Broker::start().await;
    let before = b.audit_records().len();
    // Forged: a token of the GitLab issuer, which prod does not trust, and garbage.
    let mut claims = github_claims(&b.gh.issuer_url());
    claims["iss"] = json!(b.gl.issuer_url());
    for i in 0..30 {
        let token = if i % 2 == 0 {
            b.gl.sign(claims.clone())
        } else {
            "not.a.token".to_string()
        };
        let (status, body) = b.exchange(&token, "prod", Some("deploy-web")).await;
        assert_eq!(status, 401, "{body}");
    }
    for _ in 0..5 {
        let (status, _) = b.get("/v1/secrets/prod/app/db", Some("jpt_unknown")).await;
        assert_eq!(status, 401);
    }
    let (status, _) = b.exchange(&b.github_token(), "nowhere", None).await;
    assert_eq!(status, 400);
    assert_eq!(
        b.audit_records().len(),
        before,
        "a refusal without identity was written on its own line"
    );
    // A token that verifies but is denied by policy is still its own record.
    let mut denied = github_claims(&b.gh.issuer_url());
    denied["ref"] = json!("refs/heads/feature");
    let (status, _) = b
        .exchange(&b.gh.sign(denied), "prod", Some("deploy-web"))
        .await;
    assert_eq!(status, 403);
    assert_eq!(b.audit_records().len(), before + 1);
    assert_eq!(b.audit_records()[before]["event"], "exchange");

    b.app.flush_refusals().await.unwrap();
    let records = refusal_records(&b);
    let find = |call: &str, answer: &str| {
        records
            .iter()
            .find(|r| r["details"]["call"] == call && r["details"]["answer"] == answer)
            .unwrap_or_else(|| panic!("no {call}/{answer} record in {records:?}"))
    };
    let forged = find("exchange", "invalid_token");
    assert_eq!(forged["details"]["count"], 30, "{forged}");
    assert_eq!(forged["details"]["source"], "127.0.0.1", "{forged}");
    assert_eq!(forged["outcome"], "denied");
    assert_eq!(find("secret_read", "invalid_token")["details"]["count"], 5);
    assert_eq!(find("exchange", "invalid_request")["details"]["count"], 1);
    assert_eq!(records.len(), 3, "{records:?}");
    // A second flush writes nothing more.
    let n = b.audit_records().len();
    b.app.flush_refusals().await.unwrap();
    assert_eq!(b.audit_records().len(), n);
    let audit = std::process::Command::new(crate::support::binary())
        .args(["audit", "verify", "--config"])
        .arg(&b.config_path)
        .arg(b.audit_path())
        .output()
        .unwrap();
    assert!(audit.status.success(), "{audit:?}");
}

async fn a_source_over_its_rate_gets_429_with_retry_after() {
    let b = with_limits("exchange_per_ip = { per_second = 1, burst = 3 }").await;
    for _ in 0..3 {
        let (status, _) = b.exchange("not.a.token", "prod", Some("deploy-web")).await;
        assert_eq!(status, 401);
    }
    let resp = b
        .client()
        .post(format!("{}/v1/exchange", b.url))
        .header("content-type", "application/json")
        .body(
            json!({"token": b.github_token(), "environment": "prod", "role": "deploy-web"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After: {retry}");
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    // Reads have their own bucket.
    let (status, _) = b.get("/v1/secrets/prod/app/db", Some("jpt_unknown")).await;
    assert_eq!(status, 401);
    let metrics = b
        .client()
        .get(format!("{}/metrics", b.url))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    // Asked for OpenMetrics, as Prometheus does: an OpenMetrics body, served as one.
    let kind = metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        kind.starts_with("application/openmetrics-text; version=1.0.0"),
        "{kind}"
    );
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert!(
        metrics.contains(r#"jobpass_rate_limited_total{class="exchange",scope="per_ip"} 1"#),
        "{metrics}"
    );
    b.app.flush_refusals().await.unwrap();
    let limited = refusal_records(&b)
        .into_iter()
        .find(|r| r["details"]["answer"] == "rate_limited")
        .expect("a refusal record of the rate limit");
    assert_eq!(limited["details"]["count"], 1);
}

async fn a_subject_over_its_rate_is_refused_without_spending_its_token() {
    let b = with_limits("exchange_per_subject = { per_second = 1, burst = 1 }").await;
    let (status, body) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(status, 200, "{body}");
    let second = b.github_token();
    let (status, body) = b.exchange(&second, "prod", Some("deploy-web")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    // Another subject is not held back.
    let mut other = github_claims(&b.gh.issuer_url());
    other["sub"] = json!("repo:acme/web:environment:prod");
    let (status, body) = b
        .exchange(&b.gh.sign(other), "prod", Some("deploy-web"))
        .await;
    assert_eq!(status, 200, "{body}");
    // The refused token was not spent: once the bucket refills it is exchanged.
    let mut answer = (0, Value::Null);
    for _ in 0..50 {
        answer = b.exchange(&second, "prod", Some("deploy-web")).await;
        if answer.0 != 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.0, 200, "{}", answer.1);
    assert_eq!(b.lease_count().await, 3);
}

async fn silent_connections_are_closed() {
    let b = with_limits("first_byte_timeout = \"1s\"\nidle_timeout = \"1s\"").await;
    // Nothing sent after the handshake.
    let mut silent = connect(&b, &[b"http/1.1"]).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "a connection that sent nothing is still open"
    );
    // One request, then silence on a kept-alive connection.
    let mut idle = connect(&b, &[b"http/1.1"]).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    assert!(
        closed_within(&mut idle, Duration::from_secs(20)).await,
        "an idle kept-alive connection is still open"
    );
    let metrics = b.client().get(format!("{}/metrics", b.url)).send().await;
    let metrics = metrics.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"jobpass_connections_closed_total{reason="silent"} 2"#),
        "{metrics}"
    );
}

async fn a_source_over_its_connection_cap_is_cut_off() {
    let b = with_limits("max_connections_per_ip = 2").await;
    let first = connect(&b, &[b"http/1.1"]).await.unwrap();
    let _second = connect(&b, &[b"http/1.1"]).await.unwrap();
    assert!(
        connect(&b, &[b"http/1.1"]).await.is_err(),
        "a third connection from one source was served"
    );
    drop(first);
    // The closed connection's slot is free again once the server has seen it close.
    let mut third = None;
    for _ in 0..50 {
        if let Ok(c) = connect(&b, &[b"http/1.1"]).await {
            third = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut third = third.expect("no connection after one of the two closed");
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    drop(third.read_to_end(&mut answer).await);
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

async fn an_oversized_body_gets_its_413_before_the_connection_closes() {
    let b = Broker::start().await;
    let mut s = connect(&b, &[b"http/1.1"]).await.unwrap();
    // Like curl: the whole request is sent before the answer is read. The server answers
    // 413 after the headers; the body it never wanted still arrives afterwards.
    let size = 16 * 1024 * 1024;
    let head = format!(
        "POST /v1/exchange HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {size}\r\n\r\n"
    );
    let sent = tokio::time::timeout(Duration::from_secs(30), async {
        s.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..(size / chunk.len()) {
            s.write_all(&chunk).await?;
        }
        s.flush().await
    })
    .await
    .expect("the body could not be sent");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
        .await
        .expect("the answer did not come");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "no 413 reached the client (send: {sent:?}, read: {read:?}): {text:?}"
    );
    // The connection was not reset under the client while it was still sending.
    assert!(sent.is_ok(), "sending the body failed: {sent:?}");
    assert!(read.is_ok(), "reading the answer failed: {read:?}");
    assert!(text.contains("invalid_request"), "{text}");
}

/// One HTTP/2 frame: (type, flags, payload).
async fn frame(s: &mut TlsStream<TcpStream>) -> (u8, u8, Vec<u8>) {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], payload)
}

/// Writes one HTTP/2 frame.
async fn send_frame(
    s: &mut TlsStream<TcpStream>,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut head = vec![len[1], len[2], len[3], kind, flags];
    head.extend_from_slice(&stream.to_be_bytes());
    s.write_all(&head).await.unwrap();
    s.write_all(payload).await.unwrap();
}

/// An HPACK literal header field without indexing, its name from the static table (index
/// on a 4-bit prefix), its value a plain string.
fn literal(name_index: u8, value: &str) -> Vec<u8> {
    let mut out = if name_index < 15 {
        vec![name_index]
    } else {
        vec![0x0f, name_index - 15]
    };
    out.push(u8::try_from(value.len()).unwrap());
    out.extend_from_slice(value.as_bytes());
    out
}

async fn an_oversized_http2_body_gets_its_answer_before_the_stream_is_reset() {
    let b = Broker::start().await;
    let mut s = connect(&b, &[b"h2"]).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    send_frame(&mut s, 4, 0, 0, &[]).await;
    let (kind, _, _) = frame(&mut s).await;
    assert_eq!(kind, 4);
    send_frame(&mut s, 4, 1, 0, &[]).await; // its SETTINGS acknowledged: its window applies
    // POST /v1/exchange with a body far over the limit: headers, then more body than the
    // limit (64 KiB) but less than the server's stream window.
    let mut headers = vec![0x83, 0x87]; // :method POST, :scheme https (indexed)
    headers.extend(literal(4, "/v1/exchange")); // :path
    headers.extend(literal(1, "127.0.0.1")); // :authority
    headers.extend(literal(31, "application/json")); // content-type
    headers.extend(literal(28, "16777216")); // content-length
    send_frame(&mut s, 1, 0x4, 1, &headers).await; // HEADERS, END_HEADERS
    let chunk = vec![b' '; 16_383];
    for _ in 0..5 {
        send_frame(&mut s, 0, 0, 1, &chunk).await;
    }
    // The answer's HEADERS must come before any reset of the stream, and a reset after a
    // complete answer must be NO_ERROR.
    let order = tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = Vec::new();
        loop {
            let (kind, flags, payload) = frame(&mut s).await;
            if kind == 4 && flags & 1 == 0 {
                send_frame(&mut s, 4, 1, 0, &[]).await;
            }
            match kind {
                1 => seen.push("headers".to_string()),
                0 if flags & 1 == 1 => seen.push("end".to_string()),
                3 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    seen.push(format!("reset {code}"));
                    return seen;
                }
                7 => {
                    seen.push("goaway".to_string());
                    return seen;
                }
                _ => {}
            }
            if seen.last().is_some_and(|l| l == "end") && seen.len() >= 2 {
                // A complete answer; a reset, if any, follows at once.
                if let Ok((3, _, p)) =
                    tokio::time::timeout(Duration::from_secs(2), frame(&mut s)).await
                {
                    let code = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                    seen.push(format!("reset {code}"));
                }
                return seen;
            }
        }
    })
    .await
    .expect("no answer");
    assert_eq!(
        order.first().map(String::as_str),
        Some("headers"),
        "{order:?}"
    );
    assert!(order.contains(&"end".to_string()), "{order:?}");
    if let Some(reset) = order.iter().find(|e| e.starts_with("reset")) {
        assert_eq!(reset, "reset 0", "{order:?}");
    }
}

async fn http2_connections_carry_a_stream_limit_and_pings() {
    let b = with_limits(
        "http2_max_concurrent_streams = 7\nhttp2_keep_alive_interval = \"1s\"\n\
         http2_keep_alive_timeout = \"20s\"\nidle_timeout = \"60s\"\nfirst_byte_timeout = \"60s\"",
    )
    .await;
    let mut s = connect(&b, &[b"h2"]).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let (kind, _, settings) = frame(&mut s).await;
    assert_eq!(kind, 4, "the server's first frame is its SETTINGS");
    let max_streams = settings.chunks(6).find_map(|p| {
        (u16::from_be_bytes([p[0], p[1]]) == 3)
            .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
    });
    assert_eq!(max_streams, Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
    // The server pings a quiet connection (answering nothing but its SETTINGS ack).
    let pinged = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (kind, flags, _) = frame(&mut s).await;
            if kind == 4 && flags & 1 == 0 {
                s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap();
            }
            if kind == 6 && flags & 1 == 0 {
                return;
            }
        }
    })
    .await;
    assert!(pinged.is_ok(), "no HTTP/2 PING from the server");
}

async fn anonymous_traffic_cannot_spend_the_admin_budget_of_certificate_holders() {
    let b = with_limits(
        "admin_per_ip = { per_second = 1, burst = 1 }\nadmin_global = { per_second = 1, burst = 1 }",
    )
    .await;
    // Without a certificate the source and global admin buckets run dry...
    let anonymous = b.client();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (s, _) = b
            .request(&anonymous, "GET", "/v1/admin/leases", None, None)
            .await;
        statuses.push(s);
    }
    assert_eq!(statuses, vec![403, 429, 429]);
    // ...and the security on-call still revokes.
    let (s, v) = b
        .request(
            &b.admin(jobpass::tls::AdminRole::Security),
            "POST",
            "/v1/admin/revoke",
            None,
            Some(json!({"selector": {"environment": "prod"}, "reason": "INC-1"}).to_string()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

async fn refusals_of_a_verified_caller_are_lines_up_to_a_budget_then_counted() {
    let b = Broker::start().await;
    // A real token of a trusted issuer, denied by policy (wrong branch), sent again and again.
    let mut denied = github_claims(&b.gh.issuer_url());
    denied["ref"] = json!("refs/heads/feature");
    let token = b.gh.sign(denied);
    for _ in 0..40 {
        let (s, _) = b.exchange(&token, "prod", Some("deploy-web")).await;
        assert_eq!(s, 403);
    }
    let lines = b
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "exchange" && r["outcome"] == "denied")
        .count();
    let budget = jobpass::limits::rate::RECORDS_BURST.get() as usize;
    assert!(
        (budget..budget + 5).contains(&lines),
        "{lines} lines for 40 denials (budget {budget})"
    );
    b.app.flush_refusals().await.unwrap();
    let counted = refusal_records(&b)
        .into_iter()
        .find(|r| r["details"]["call"] == "exchange" && r["details"]["answer"] == "access_denied")
        .expect("the denials over the budget, counted");
    assert_eq!(
        counted["details"]["count"].as_u64().unwrap() as usize + lines,
        40,
        "{counted}"
    );
}

async fn a_revoked_token_used_again_is_on_record_with_its_lease() {
    let b = Broker::start().await;
    b.put_secret("prod", "deploy/web/api", json!({"key": "v"}))
        .await;
    let (s, v) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 200, "{v}");
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let token = v["credentials"][0]["token"].as_str().unwrap().to_string();
    let (s, _) = b
        .request(&b.client(), "POST", "/v1/revoke/self", Some(&token), None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = b.get("/v1/secrets/prod/deploy/web/api", Some(&token)).await;
    assert_eq!(s, 401);
    let last = b
        .audit_records()
        .into_iter()
        .rfind(|r| r["event"] == "secret_read")
        .expect("the read with the revoked token, on its own line");
    assert_eq!(last["lease_id"], lease.as_str(), "{last}");
    assert_eq!(last["outcome"], "denied", "{last}");
}
