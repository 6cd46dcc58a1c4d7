//! Captures the service log (tracing) of the in-process brokers into a buffer, so tests can
//! prove no issued value ever reaches it.

use std::io::Write;
use std::sync::{Mutex, Once};

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BUFFER.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once per test binary (jobpass at trace, other crates at debug; JSON).
pub fn init() {
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug,jobpass=trace"))
            .json()
            .with_writer(|| Sink)
            .try_init();
    });
}

/// Everything logged so far by every broker of this test binary.
pub fn text() -> String {
    String::from_utf8_lossy(&BUFFER.lock().unwrap()).into_owned()
}
