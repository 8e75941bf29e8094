//! A real TCP proxy on loopback that sits between an uploader and a real
//! collector and misbehaves on demand: answers 500, hangs, forwards the
//! request and then cuts the answer short, or forwards and holds the answer
//! (so a test can kill the uploader after the collector stored the batch but
//! before the uploader heard about it). Used by the `sync` and `agent`
//! tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward requests and answers untouched.
    Pass,
    /// Answer `500` without forwarding.
    Status500,
    /// Read the request, never answer (until the proxy stops).
    Hang,
    /// Forward the request; send back half the answer and close.
    CutAnswer,
    /// Forward the request; keep the answer and the connection (until the proxy stops).
    HoldAnswer,
    /// Close the connection without answering (a collector that is down).
    Close,
    /// Answer `200` with an HTML page without forwarding (a captive portal).
    Portal200,
    /// Answer `200` announcing 3 GB and stream it until the client stops
    /// reading (counted in `FaultProxy::answer_bytes`).
    Endless200,
    /// Answer `307 Temporary Redirect` to `FaultProxy::redirect_to`'s
    /// address without forwarding.
    Redirect307,
}

pub struct FaultProxy {
    addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<AtomicBool>,
    /// Requests that reached the collector (forwarded).
    pub forwarded: Arc<AtomicUsize>,
    /// Requests seen at all.
    pub seen: Arc<AtomicUsize>,
    /// Bytes of answers the proxy made up itself (`Endless200`) that the
    /// client took.
    pub answer_bytes: Arc<AtomicUsize>,
    /// Where `Fault::Redirect307` points.
    location: Arc<Mutex<String>>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = FaultProxy {
            addr: listener.local_addr().unwrap(),
            fault: Arc::new(Mutex::new(fault)),
            stop: Arc::new(AtomicBool::new(false)),
            forwarded: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(AtomicUsize::new(0)),
            answer_bytes: Arc::new(AtomicUsize::new(0)),
            location: Arc::new(Mutex::new(String::new())),
        };
        let (f, stop, forwarded, seen, answered, location) = (
            proxy.fault.clone(),
            proxy.stop.clone(),
            proxy.forwarded.clone(),
            proxy.seen.clone(),
            proxy.answer_bytes.clone(),
            proxy.location.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (f, stop, forwarded, seen, answered, location) = (
                            f.clone(),
                            stop.clone(),
                            forwarded.clone(),
                            seen.clone(),
                            answered.clone(),
                            location.clone(),
                        );
                        std::thread::spawn(move || {
                            let counters = (&*forwarded, &*seen, &*answered);
                            let _ = serve(client, upstream, &f, &stop, counters, &location);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Where `Fault::Redirect307` sends clients.
    pub fn redirect_to(&self, url: &str) {
        *self.location.lock().unwrap() = url.to_owned();
    }

    /// Wait until `counter` reaches `n` (bounded).
    pub fn wait_for(counter: &AtomicUsize, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if counter.load(Ordering::SeqCst) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One HTTP/1.1 message: head and body, by Content-Length.
fn read_message(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    head.extend_from_slice(&body);
    Ok(Some(head))
}

fn hold(stop: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    fault: &Mutex<Fault>,
    stop: &AtomicBool,
    (forwarded, seen, answered): (&AtomicUsize, &AtomicUsize, &AtomicUsize),
    location: &Mutex<String>,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = client.try_clone()?;
    let mut reader = BufReader::new(client);
    while let Some(request) = read_message(&mut reader)? {
        seen.fetch_add(1, Ordering::SeqCst);
        let fault = *fault.lock().unwrap();
        if fault == Fault::Status500 {
            writer.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nboom!")?;
            continue;
        }
        if fault == Fault::Close {
            return Ok(());
        }
        if fault == Fault::Redirect307 {
            let location = location.lock().unwrap().clone();
            writer.write_all(
                format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
                    .as_bytes(),
            )?;
            continue;
        }
        if fault == Fault::Portal200 {
            let page = b"<html><body>Please log in to the hotel Wi-Fi</body></html>";
            writer.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/html\r\n\r\n",
                    page.len()
                )
                .as_bytes(),
            )?;
            writer.write_all(page)?;
            continue;
        }
        if fault == Fault::Endless200 {
            writer.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3000000000\r\ncontent-type: application/json\r\n\r\n",
            )?;
            let chunk = vec![b' '; 64 << 10];
            while !stop.load(Ordering::SeqCst) {
                // Fails once the client stops reading and closes.
                writer.write_all(&chunk)?;
                answered.fetch_add(chunk.len(), Ordering::SeqCst);
            }
            return Ok(());
        }
        if fault == Fault::Hang {
            hold(stop);
            return Ok(());
        }
        let up = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
        up.set_read_timeout(Some(Duration::from_secs(10)))?;
        (&up).write_all(&request)?;
        let answer = read_message(&mut BufReader::new(up))?.unwrap_or_default();
        forwarded.fetch_add(1, Ordering::SeqCst);
        match fault {
            Fault::CutAnswer => {
                writer.write_all(&answer[..answer.len() / 2])?;
                return Ok(());
            }
            Fault::HoldAnswer => {
                hold(stop);
                return Ok(());
            }
            _ => writer.write_all(&answer)?,
        }
    }
    Ok(())
}
