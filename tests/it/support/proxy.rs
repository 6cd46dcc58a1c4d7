//! A pausable TCP forwarder on loopback, to simulate a database outage: put it between the
//! broker and PostgreSQL, `pause` it (every forwarded connection is cut, new ones are closed
//! at once), then `resume` it.
//!
//! The listening socket stays bound while paused (the port never changes): a connection made
//! while paused is accepted and immediately reset (SO_LINGER 0), so clients see "connection
//! reset" / EOF during their handshake rather than "connection refused". Forwarding tasks run
//! on the runtime that called [`Proxy::start`]; dropping the `Proxy` stops the listener and
//! cuts every forwarded connection.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `paused`, and an epoch bumped by every `pause`: a forwarded connection lives only while the
/// epoch it was accepted in is current.
#[derive(Clone, Copy, Debug, Default)]
struct State {
    paused: bool,
    epoch: u64,
}

pub struct Proxy {
    port: u16,
    target: String,
    state: watch::Sender<State>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target` ("host:port").
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy listener");
        let port = listener.local_addr().expect("proxy local addr").port();
        let (state, _) = watch::channel(State::default());
        let accepted = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            target.to_string(),
            state.clone(),
            accepted.clone(),
            refused.clone(),
        ));
        Proxy {
            port,
            target: target.to_string(),
            state,
            accepted,
            refused,
            accept_task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1:<port>".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Stops forwarding AND cuts every forwarded connection (both sides closed, the client side
    /// with a reset); connections made until `resume` are closed at once. Takes effect for
    /// every connection accepted after this call returns; existing connections are cut as soon
    /// as their task next runs (before any further byte is forwarded).
    pub fn pause(&self) {
        self.state.send_modify(|s| {
            s.paused = true;
            s.epoch += 1;
        });
    }

    /// Forwards new connections again (connections cut by `pause` stay closed).
    pub fn resume(&self) {
        self.state.send_modify(|s| s.paused = false);
    }

    pub fn is_paused(&self) -> bool {
        self.state.borrow().paused
    }

    /// Connections forwarded so far (accepted while not paused).
    pub fn forwarded(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the proxy was paused.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Cut every forwarded connection (their tasks also end when the sender is dropped).
        self.pause();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    state: watch::Sender<State>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // E.g. EMFILE: do not spin.
            tokio::task::yield_now().await;
            continue;
        };
        let _ = client.set_zero_linger();
        let snapshot = *state.borrow();
        if snapshot.paused {
            refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        accepted.fetch_add(1, Ordering::SeqCst);
        let rx = state.subscribe();
        tokio::spawn(forward(client, target.clone(), rx, snapshot.epoch));
    }
}

async fn forward(
    mut client: TcpStream,
    target: String,
    mut rx: watch::Receiver<State>,
    epoch: u64,
) {
    let cut = async {
        // Err: the Proxy was dropped.
        let _ = rx.wait_for(|s| s.epoch != epoch).await;
    };
    let pipe = async {
        let Ok(mut upstream) = TcpStream::connect(&target).await else {
            return;
        };
        let _ = upstream.set_nodelay(true);
        let _ = client.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    };
    tokio::select! {
        biased;
        () = cut => {}
        () = pipe => {}
    }
    // Dropping `client` (SO_LINGER 0) resets it; dropping `upstream` closes the server side.
}
