//! Host peers of the guest's I/O workloads: threads on loopback TCP that QEMU connects to, check
//! what the guest sends, echo it back and count. Each is bounded in time and size and stops by
//! itself when QEMU closes the connection, when told to, or at its deadline.

pub mod console_echo;
pub mod net_echo;

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How often a blocked peer looks at its stop flag and deadline.
const POLL: Duration = Duration::from_millis(50);

/// A peer thread and the way to stop it.
#[derive(Debug)]
pub struct Peer<S> {
    pub port: u16,
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<S>,
}

impl<S: Send + 'static> Peer<S> {
    /// Listens on 127.0.0.1 (a free port) and runs `serve` on the first connection in a thread.
    /// `serve` gets the stream (read timeout [`POLL`]) and a `live` check that turns false when the
    /// peer is told to stop or `deadline` passes; `idle` builds the result if nobody connects.
    fn spawn(
        what: &str,
        deadline: Instant,
        serve: impl FnOnce(TcpStream, &dyn Fn() -> bool) -> S + Send + 'static,
        idle: impl FnOnce() -> S + Send + 'static,
    ) -> Result<Peer<S>> {
        let listener = TcpListener::bind("127.0.0.1:0").with_context(|| format!("{what} peer: bind"))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::Builder::new()
            .name(format!("{what}-peer"))
            .spawn(move || {
                // Relaxed: the flag carries no data, it only ends the loops.
                let live = move || !flag.load(Ordering::Relaxed) && Instant::now() < deadline;
                loop {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let ready = s
                                .set_nonblocking(false)
                                .and_then(|()| s.set_read_timeout(Some(POLL)))
                                .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
                                .and_then(|()| s.set_nodelay(true));
                            if ready.is_err() {
                                return idle();
                            }
                            return serve(s, &live);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock && live() => {
                            thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => return idle(),
                    }
                }
            })?;
        Ok(Peer { port, stop, handle })
    }

    /// Tells the peer to stop, waits for it and returns its result.
    pub fn finish(self) -> S {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(s) => s,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

/// True for the errors a read with a timeout returns when nothing arrived.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}
