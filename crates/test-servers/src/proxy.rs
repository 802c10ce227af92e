//! A TCP proxy that tests control, to break connections on purpose: [`FaultProxy`] listens on
//! `127.0.0.1:0`, forwards every connection to one target, and cuts every live connection on
//! command ([`FaultProxy::cut`]) or at random intervals ([`FaultProxy::cut_randomly`]).
//!
//! It runs on a thread of its own with its own single-threaded Tokio runtime, so it works the
//! same under any test (sync, `current_thread` or multi-threaded) and never competes with the
//! test's tasks; dropping the handle stops it and closes every connection it holds.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] live connections (one more is closed at once;
//! [`FaultProxy::start_with_limit`] sets another bound), a
//! [`CONNECT_TIMEOUT`] to reach the target, and Tokio's 8 KiB copy buffer per direction.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// Live connections one proxy holds at most; one more is closed as soon as it is accepted.
pub const MAX_CONNECTIONS: usize = 256;

/// The longest the proxy waits for the target to accept a connection; past it the client's
/// connection is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// An abortive close (`SO_LINGER` 0): both peers see a reset, what was in flight is gone.
    /// What a phone switching networks or a NAT forgetting a mapping looks like.
    Reset,
    /// An orderly close (FIN) of both sides, as if each peer had closed.
    Close,
}

/// What the proxy counts, for tests to check that it did what they asked.
#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicU64,
    cut: AtomicU64,
}

/// The part shared between the handle and the proxy's thread.
#[derive(Debug, Default)]
struct Shared {
    /// Each live connection's "cut it" signal, by connection number.
    live: Mutex<HashMap<u64, oneshot::Sender<Cut>>>,
    counts: Counts,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Cut>>> {
        // A panic while holding this lock leaves a plain map behind: still usable.
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Cuts every live connection unless `cancelled` (checked under the lock, so that once
    /// a canceller has set it and taken the lock, no cut of its schedule follows).
    fn cut_all(&self, how: Cut, cancelled: Option<&AtomicBool>) -> usize {
        let mut live = self.live();
        if cancelled.is_some_and(|cancelled| cancelled.load(Ordering::SeqCst)) {
            return 0;
        }
        let mut count = 0;
        for (_, signal) in live.drain() {
            // A connection that ended by itself meanwhile has dropped its receiver.
            if signal.send(how).is_ok() {
                count += 1;
            }
        }
        self.counts.cut.fetch_add(count as u64, Ordering::Relaxed);
        count
    }
}

/// A running proxy; stopped (every connection closed) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    /// The random cuts' task and its cancel flag.
    chaos: Mutex<Option<(AbortHandle, Arc<AtomicBool>)>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` that forwards to `target`, holding at most
    /// [`MAX_CONNECTIONS`].
    pub fn start(target: SocketAddr) -> FaultProxy {
        FaultProxy::start_with_limit(target, MAX_CONNECTIONS)
    }

    /// As [`start`](Self::start), holding at most `max_connections` live connections.
    pub fn start_with_limit(target: SocketAddr, max_connections: usize) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime for the proxy");
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("a port on 127.0.0.1 for the proxy");
        std_listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = std_listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel();
        let handle = runtime.handle().clone();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener)
                        .expect("the listener joins the runtime");
                    tokio::select! {
                        () = accept_loop(listener, target, max_connections, serving) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here drops every relay task, closing its sockets.
            })
            .expect("a thread for the proxy");
        FaultProxy {
            addr,
            target,
            shared,
            runtime: handle,
            chaos: Mutex::new(None),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Cuts every live connection, both directions, now; returns how many. Connections
    /// accepted afterwards are forwarded as usual.
    pub fn cut(&self, how: Cut) -> usize {
        self.shared.cut_all(how, None)
    }

    /// Cuts every live connection again and again, waiting a random time in `every` (at
    /// least 1 ms) before each cut, until [`stop_cutting`](Self::stop_cutting) or the drop.
    /// Calling it again replaces the previous schedule.
    pub fn cut_randomly(&self, every: Range<Duration>, how: Cut) {
        let low = every.start.max(Duration::from_millis(1));
        let high = every.end.max(low);
        let shared = self.shared.clone();
        let cancelled = Arc::new(AtomicBool::new(false));
        let flag = cancelled.clone();
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let (low, high) = (micros(low), micros(high));
        let task = self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_micros(fastrand::u64(low..=high))).await;
                shared.cut_all(how, Some(&flag));
            }
        });
        let previous = self.chaos().replace((task.abort_handle(), cancelled));
        if let Some(previous) = previous {
            Self::cancel(&self.shared, previous);
        }
    }

    /// Stops [`cut_randomly`](Self::cut_randomly); no cut happens after it returns.
    pub fn stop_cutting(&self) {
        let chaos = self.chaos().take();
        if let Some(chaos) = chaos {
            Self::cancel(&self.shared, chaos);
        }
    }

    fn cancel(shared: &Shared, (task, cancelled): (AbortHandle, Arc<AtomicBool>)) {
        task.abort();
        // `abort` only takes effect at the task's next await; the flag, read under the live
        // map's lock, stops a cut that is past it, and taking the lock once waits for a cut
        // already under way.
        cancelled.store(true, Ordering::SeqCst);
        drop(shared.live());
    }

    /// Connections open now.
    pub fn live_connections(&self) -> usize {
        self.shared.live().len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.counts.accepted.load(Ordering::Relaxed)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.shared.counts.cut.load(Ordering::Relaxed)
    }

    fn chaos(&self) -> MutexGuard<'_, Option<(AbortHandle, Arc<AtomicBool>)>> {
        self.chaos
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop_cutting();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    max_connections: usize,
    shared: Arc<Shared>,
) {
    let mut next_id = 0u64;
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or similar: let the moment pass rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.counts.accepted.fetch_add(1, Ordering::Relaxed);
        let (cut, cut_signal) = oneshot::channel();
        {
            let mut live = shared.live();
            if live.len() >= max_connections {
                continue; // `client` is dropped: closed at once.
            }
            next_id += 1;
            live.insert(next_id, cut);
        }
        let id = next_id;
        let shared = shared.clone();
        tokio::spawn(async move {
            relay(client, target, cut_signal).await;
            shared.live().remove(&id);
        });
    }
}

/// Forwards bytes both ways until either side closes or the connection is cut.
async fn relay(mut client: TcpStream, target: SocketAddr, cut: oneshot::Receiver<Cut>) {
    let _ = client.set_nodelay(true);
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target));
    let mut cut = cut;
    let mut server = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(server)) => server,
            _ => return,
        },
        how = &mut cut => {
            finish(&client, None, how.ok());
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let how = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
        how = &mut cut => how.ok(),
    };
    finish(&client, Some(&server), how);
}

/// A reset sets `SO_LINGER` to 0 so that dropping the sockets (right after) sends RST.
fn finish(client: &TcpStream, server: Option<&TcpStream>, how: Option<Cut>) {
    if how == Some(Cut::Reset) {
        let _ = client.set_zero_linger();
        if let Some(server) = server {
            let _ = server.set_zero_linger();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::time::Instant;

    const GUARD: Duration = Duration::from_secs(10);

    /// A target that echoes every byte back, on a thread per connection.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(proxy: &FaultProxy) -> std::net::TcpStream {
        let stream = std::net::TcpStream::connect(proxy.addr()).unwrap();
        stream.set_read_timeout(Some(GUARD)).unwrap();
        stream
    }

    fn echo(stream: &mut std::net::TcpStream, bytes: &[u8]) {
        stream.write_all(bytes).unwrap();
        let mut back = vec![0; bytes.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, bytes);
    }

    /// Reads until the connection ends; what ended it.
    fn ending(stream: &mut std::net::TcpStream) -> Result<(), ErrorKind> {
        let mut buf = [0; 64];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(err) => return Err(err.kind()),
            }
        }
    }

    /// Waits (bounded) until `done` holds.
    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + GUARD;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn forwards_both_ways_and_cuts_with_a_reset_or_a_close() {
        let proxy = FaultProxy::start(echo_server());
        let mut a = connect(&proxy);
        let mut b = connect(&proxy);
        echo(&mut a, b"hello");
        echo(&mut b, b"world");
        until("two live connections", || proxy.live_connections() == 2);

        assert_eq!(proxy.cut(Cut::Reset), 2);
        assert_eq!(ending(&mut a), Err(ErrorKind::ConnectionReset));
        assert_eq!(ending(&mut b), Err(ErrorKind::ConnectionReset));
        until("no live connection", || proxy.live_connections() == 0);

        // New connections go through again; a close is an orderly end of stream.
        let mut c = connect(&proxy);
        echo(&mut c, b"again");
        assert_eq!(proxy.cut(Cut::Close), 1);
        assert_eq!(ending(&mut c), Ok(()));
        assert_eq!((proxy.accepted(), proxy.cuts()), (3, 3));
    }

    #[test]
    fn random_cuts_keep_coming_until_stopped() {
        let proxy = FaultProxy::start(echo_server());
        proxy.cut_randomly(
            Duration::from_millis(10)..Duration::from_millis(30),
            Cut::Reset,
        );
        // Each connection is cut in turn; three in a row show the schedule repeats.
        for _ in 0..3 {
            let mut stream = connect(&proxy);
            assert_eq!(ending(&mut stream), Err(ErrorKind::ConnectionReset));
        }
        proxy.stop_cutting();
        let cuts = proxy.cuts();
        let mut stream = connect(&proxy);
        // Well past the longest interval: a cut would have ended it.
        for _ in 0..20 {
            echo(&mut stream, b"still here");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(proxy.cuts(), cuts);
    }

    #[test]
    fn dropping_the_proxy_closes_its_connections_and_its_port() {
        let proxy = FaultProxy::start(echo_server());
        let addr = proxy.addr();
        let mut stream = connect(&proxy);
        echo(&mut stream, b"x");
        drop(proxy);
        // Ended (not timed out: the read timeout would say WouldBlock).
        assert!(matches!(
            ending(&mut stream),
            Ok(()) | Err(ErrorKind::ConnectionReset)
        ));
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[test]
    fn connections_past_the_bound_are_closed() {
        let proxy = FaultProxy::start_with_limit(echo_server(), 3);
        let mut held: Vec<_> = (0..3).map(|_| connect(&proxy)).collect();
        for stream in &mut held {
            echo(stream, b"x");
        }
        let mut extra = connect(&proxy);
        let _ = extra.write_all(b"x");
        assert!(matches!(
            ending(&mut extra),
            Ok(()) | Err(ErrorKind::ConnectionReset)
        ));
        assert_eq!(proxy.live_connections(), 3);
        // The ones held still work.
        echo(&mut held[0], b"y");
    }
}
