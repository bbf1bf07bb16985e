//! Receiving and sending datagrams in batches: on Linux `recvmmsg(2)` takes
//! up to [`BATCH`] datagrams per system call and `sendmmsg(2)` sends their
//! replies in one more; elsewhere the same interface moves one datagram at a
//! time. Either way each datagram keeps its own source, arrival address and
//! length, and each reply goes to its own source.

use std::net::{IpAddr, SocketAddr};

/// The smallest receive buffer that holds any merged (GRO) receive: the
/// kernel merges up to one IP packet's worth, 65,535 bytes less the IP
/// and UDP headers, so at most 65,527 bytes of datagrams (IPv6), plus the
/// byte that shows a datagram too long.
pub(crate) const GRO_BUFFER: usize = 65_528;

/// Buffers filled per `recvmmsg` (and replies sent per system call) at
/// most; with GRO, one buffer may hold several datagrams.
#[cfg(target_os = "linux")]
pub(crate) const BATCH: usize = 32;
#[cfg(not(target_os = "linux"))]
pub(crate) const BATCH: usize = 1;

/// One received datagram.
#[derive(Debug)]
pub(crate) struct Datagram<'a> {
    /// Its bytes, cut at the buffer size: a datagram longer than the largest
    /// one answered shows as longer than that, never as a truncated one.
    pub(crate) data: &'a [u8],
    pub(crate) source: Option<SocketAddr>,
    /// The socket's count of datagrams the kernel dropped for want of
    /// buffer space, as of this one (`SO_RXQ_OVFL`), where the OS says.
    pub(crate) drops: Option<u32>,
    /// The kernel had more control data than room for it (`MSG_CTRUNC`):
    /// none of it is used, so the drop count waits for the next datagram
    /// and the reply leaves from the socket's own address.
    pub(crate) control_truncated: bool,
    /// The address it was sent to, where the OS says (`IP_PKTINFO` on a
    /// wildcard bind).
    pub(crate) arrival: Option<IpAddr>,
}

/// The replies to one batch, in one buffer: for each, the index of the
/// datagram it answers and its bytes.
#[derive(Debug, Default)]
pub(crate) struct Replies {
    arena: Vec<u8>,
    entries: Vec<(usize, usize, usize)>,
}

impl Replies {
    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.entries.clear();
    }

    /// Adds the reply to datagram `index`, built by `build` at the end of
    /// the buffer; `build` returning `false` adds nothing.
    pub(crate) fn push(&mut self, index: usize, build: impl FnOnce(&mut Vec<u8>) -> bool) {
        let start = self.arena.len();
        if build(&mut self.arena) {
            self.entries.push((index, start, self.arena.len()));
        } else {
            self.arena.truncate(start);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The `i`th reply: the datagram it answers and its bytes.
    pub(crate) fn get(&self, i: usize) -> (usize, &[u8]) {
        let (index, start, end) = self.entries[i];
        (index, &self.arena[start..end])
    }
}

#[cfg(target_os = "linux")]
pub(crate) use linux::Batch;
#[cfg(not(target_os = "linux"))]
pub(crate) use portable::Batch;

#[cfg(target_os = "linux")]
mod linux {
    use super::{Datagram, Replies, BATCH};
    use crate::sys::mmsg::{MmsgBatch, SO_RXQ_OVFL};
    use crate::sys::sockopt;
    use socket2::Socket;
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::AsFd;

    /// [`BATCH`] datagrams per `recvmmsg(2)`, and their replies per
    /// `sendmmsg(2)`.
    pub(crate) struct Batch(MmsgBatch);

    impl Batch {
        /// Room for [`BATCH`] datagrams of up to `size` bytes each; with
        /// `pktinfo`, replies leave from each datagram's arrival address
        /// (wildcard binds).
        pub(crate) fn new(size: usize, pktinfo: bool) -> Batch {
            Batch(MmsgBatch::new(size, BATCH, pktinfo))
        }

        /// Waits for a datagram (the socket's read timeout bounds the wait),
        /// then takes every one already queued, up to [`BATCH`] buffers.
        /// Returns how many datagrams (more, with GRO, than buffers).
        pub(crate) fn recv(&mut self, socket: &Socket) -> io::Result<usize> {
            self.0.recv(socket)
        }

        /// The `i`th datagram of the last [`recv`](Self::recv).
        pub(crate) fn datagram(&self, i: usize) -> Datagram<'_> {
            let d = self.0.received(i);
            Datagram {
                data: d.data,
                source: d.source,
                drops: d.drops,
                control_truncated: d.control_truncated,
                arrival: d.arrival,
            }
        }

        /// Sends every reply to the source of the datagram it answers (from
        /// its arrival address with `pktinfo`). Returns the replies and
        /// bytes sent; `failed` hears of each that could not be.
        pub(crate) fn send(
            &mut self,
            socket: &Socket,
            replies: &Replies,
            failed: impl FnMut(usize, io::Error),
        ) -> (u64, u64) {
            self.0
                .send(socket, replies.len(), |j| replies.get(j), failed)
        }

        /// The next merged (GSO) run fails with the OS error `code`.
        #[cfg(test)]
        pub(crate) fn inject_gso_error(&mut self, code: i32) {
            self.0.inject_gso_error(code);
        }

        /// How many buffers the last [`recv`](Self::recv) filled.
        #[cfg(test)]
        pub(crate) fn buffers(&self) -> usize {
            self.0.buffers()
        }

        /// How many messages the last [`send`](Self::send) made.
        #[cfg(test)]
        pub(crate) fn messages(&self) -> usize {
            self.0.messages()
        }

        /// Whether replies may still be merged with `UDP_SEGMENT`.
        #[cfg(test)]
        pub(crate) fn gso(&self) -> bool {
            self.0.gso()
        }
    }

    /// Asks the kernel for each datagram's destination address (to reply
    /// from it) and, always, for its drop count; with `gro`, to hand over
    /// several same-size datagrams of one source in one buffer (split
    /// again in [`MmsgBatch`]). Returns whether it gives the destination.
    ///
    /// `gro` only with buffers of at least [`GRO_BUFFER`] bytes: a merged
    /// receive cut short would lose whole datagrams.
    pub(crate) fn enable(socket: &Socket, local: SocketAddr, pktinfo: bool, gro: bool) -> bool {
        // Best effort: drop counts arriving or not shows whether it took.
        let _ = sockopt::set_int(socket.as_fd(), libc::SOL_SOCKET, SO_RXQ_OVFL, 1);
        if gro {
            // Best effort: a kernel without UDP_GRO (before 5.0) hands
            // over one datagram per buffer, as without it.
            let _ = sockopt::set_int(socket.as_fd(), libc::SOL_UDP, libc::UDP_GRO, 1);
        }
        if !pktinfo {
            return false;
        }
        let (level, name) = match local {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
            SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
        };
        sockopt::set_int(socket.as_fd(), level, name, 1).is_ok()
    }
}

#[cfg(target_os = "linux")]
pub(crate) use linux::enable;

/// One datagram at a time, through the portable socket calls. Replies leave
/// from whatever address routing picks: bind to a specific address to
/// control it. (Compiled on Linux too for its tests, so the fallback is
/// tested where CI runs.)
#[cfg(any(test, not(target_os = "linux")))]
mod portable {
    use super::{Datagram, Replies};
    use socket2::{SockAddr, Socket};
    use std::io;

    pub(crate) struct Batch {
        buf: Vec<u8>,
        len: usize,
        from: Option<SockAddr>,
    }

    impl Batch {
        pub(crate) fn new(size: usize, _pktinfo: bool) -> Batch {
            Batch {
                buf: vec![0; size],
                len: 0,
                from: None,
            }
        }

        pub(crate) fn recv(&mut self, socket: &Socket) -> io::Result<usize> {
            let (len, from) = crate::sys::socket::recv_from(socket, &mut self.buf)?;
            self.len = len.min(self.buf.len());
            self.from = Some(from);
            Ok(1)
        }

        pub(crate) fn datagram(&self, _: usize) -> Datagram<'_> {
            Datagram {
                data: &self.buf[..self.len],
                source: self.from.as_ref().and_then(SockAddr::as_socket),
                drops: None,
                control_truncated: false,
                arrival: None,
            }
        }

        pub(crate) fn send(
            &mut self,
            socket: &Socket,
            replies: &Replies,
            mut failed: impl FnMut(usize, io::Error),
        ) -> (u64, u64) {
            let (mut sent, mut bytes) = (0, 0);
            for j in 0..replies.len() {
                let (index, reply) = replies.get(j);
                let Some(to) = &self.from else { continue };
                match socket.send_to(reply, to) {
                    Ok(n) => {
                        sent += 1;
                        bytes += n as u64;
                    }
                    Err(e) => failed(index, e),
                }
            }
            (sent, bytes)
        }
    }

    pub(crate) fn enable(_: &Socket, _: std::net::SocketAddr, _: bool, _: bool) -> bool {
        false
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) use portable::enable;

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use socket2::{Domain, Socket, Type};
    use std::net::UdpSocket;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(30);

    fn server_socket() -> (Socket, SocketAddr) {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        (s, addr)
    }

    /// Every datagram is received with its bytes and its source, and its
    /// reply (the bytes and a `!`) reaches that source from the server's
    /// address: through `recv`, `datagram`, `Replies` and `send`.
    macro_rules! round_trip {
        ($name:ident, $batch:ty) => {
            #[test]
            fn $name() {
                let (server, addr) = server_socket();
                let clients: Vec<UdpSocket> = (0..2)
                    .map(|_| {
                        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                        c.set_read_timeout(Some(DEADLINE)).unwrap();
                        c
                    })
                    .collect();
                let sent: [(usize, &[u8]); 4] =
                    [(0, b"one"), (1, b"two two"), (0, b""), (1, &[0xff; 1500])];
                for (who, data) in sent {
                    clients[who].send_to(data, addr).unwrap();
                }
                let mut batch = <$batch>::new(2048, false);
                let mut replies = Replies::default();
                let mut seen = 0;
                while seen < sent.len() {
                    let n = batch.recv(&server).unwrap();
                    assert!(n >= 1 && seen + n <= sent.len(), "{n} datagrams");
                    replies.clear();
                    let mut reply_bytes = 0;
                    for k in 0..n {
                        let d = batch.datagram(k);
                        let (who, data) = sent[seen + k];
                        assert_eq!(d.data, data, "datagram {}", seen + k);
                        assert_eq!(d.source, Some(clients[who].local_addr().unwrap()));
                        reply_bytes += data.len() as u64 + 1;
                        replies.push(k, |out| {
                            out.extend_from_slice(d.data);
                            out.push(b'!');
                            true
                        });
                    }
                    // A reply that is not built is not sent.
                    replies.push(0, |out| {
                        out.push(b'?');
                        false
                    });
                    let result = batch.send(&server, &replies, |i, e| panic!("reply {i}: {e}"));
                    assert_eq!(result, (n as u64, reply_bytes));
                    seen += n;
                }
                for (who, data) in sent {
                    let mut buf = [0u8; 2048];
                    let (len, from) = clients[who].recv_from(&mut buf).unwrap();
                    assert_eq!(&buf[..len], [data, b"!"].concat().as_slice());
                    assert_eq!(from, addr);
                }
            }
        };
    }

    #[cfg(target_os = "linux")]
    round_trip!(
        linux_batches_keep_each_datagram_and_its_source,
        linux::Batch
    );

    /// A reply the kernel refuses (too long for UDP) is reported and
    /// skipped, whether it comes first or after others in a `sendmmsg`;
    /// every other reply goes out once, and no header left over from an
    /// earlier, longer batch is sent again.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_reply_is_skipped_and_the_rest_sent_once() {
        let (server, addr) = server_socket();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = linux::Batch::new(2048, false);
        let mut replies = Replies::default();
        let mut batch_of = |data: &[&[u8]], too_long: &[usize]| {
            for d in data {
                client.send_to(d, addr).unwrap();
            }
            let mut got = 0;
            while got < data.len() {
                got += batch.recv(&server).unwrap();
            }
            assert_eq!(got, data.len(), "one batch");
            replies.clear();
            for k in 0..data.len() {
                let d = batch.datagram(k).data.to_vec();
                replies.push(k, |out| {
                    match too_long.contains(&k) {
                        true => out.resize(out.len() + 70_000, b'x'),
                        false => out.extend_from_slice(&d),
                    }
                    true
                });
            }
            let mut refused = Vec::new();
            let result = batch.send(&server, &replies, |i, e| refused.push((i, e.kind())));
            (result, refused)
        };
        let six: [&[u8]; 6] = [b"a0", b"a1", b"a2", b"a3", b"a4", b"a5"];
        assert_eq!(batch_of(&six, &[]), ((6, 12), vec![]));
        let four: [&[u8]; 4] = [b"b0", b"b1", b"b2", b"b3"];
        let (result, refused) = batch_of(&four, &[0, 2]);
        assert_eq!(result, (2, 4));
        let refused: Vec<usize> = refused.iter().map(|r| r.0).collect();
        assert_eq!(refused, [0, 2]);
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut received = Vec::new();
        while let Ok(len) = client.recv(&mut buf) {
            received.push(buf[..len].to_vec());
        }
        let want: Vec<&[u8]> = vec![b"a0", b"a1", b"a2", b"a3", b"a4", b"a5", b"b1", b"b3"];
        assert_eq!(received, want);
    }
    /// What each client got, the `(sent, bytes)` totals, and for each
    /// send its messages and replies.
    #[cfg(target_os = "linux")]
    type GsoEcho = (Vec<Vec<Vec<u8>>>, (u64, u64), Vec<(usize, usize)>);

    /// Echoes `data` (sent from `clients[who]`) through one `Batch` and
    /// returns what each client receives back, in order, with the
    /// `(sent, bytes)` totals and the messages and replies of each `send`.
    #[cfg(target_os = "linux")]
    fn gso_echo(
        batch: &mut linux::Batch,
        data: &[(usize, Vec<u8>)],
        before_send: &mut dyn FnMut(&mut linux::Batch),
    ) -> GsoEcho {
        let (server, addr) = server_socket();
        let clients: Vec<UdpSocket> = (0..2)
            .map(|_| {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.set_read_timeout(Some(DEADLINE)).unwrap();
                c
            })
            .collect();
        let mut replies = Replies::default();
        let mut totals = (0, 0);
        let mut messages = Vec::new();
        let mut got = vec![Vec::new(), Vec::new()];
        let mut buf = vec![0u8; 70_000];
        // In slices the default socket buffers hold (each datagram costs
        // its truesize, over 2 KiB), so loopback drops nothing.
        for chunk in data.chunks(32) {
            for (who, d) in chunk {
                clients[*who].send_to(d, addr).unwrap();
            }
            let mut seen = 0;
            while seen < chunk.len() {
                let n = batch.recv(&server).unwrap();
                replies.clear();
                for k in 0..n {
                    let d = batch.datagram(k).data.to_vec();
                    replies.push(k, |out| {
                        out.extend_from_slice(&d);
                        true
                    });
                }
                before_send(batch);
                let (sent, bytes) = batch.send(&server, &replies, |i, e| panic!("{i}: {e}"));
                totals.0 += sent;
                totals.1 += bytes;
                messages.push((batch.messages(), replies.len()));
                seen += n;
            }
            for (who, c) in clients.iter().enumerate() {
                for _ in chunk.iter().filter(|d| d.0 == who) {
                    match c.recv(&mut buf) {
                        Ok(n) => got[who].push(buf[..n].to_vec()),
                        Err(_) => break,
                    }
                }
            }
        }
        // Nothing more than one reply per datagram.
        for (who, c) in clients.iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            while let Ok(n) = c.recv(&mut buf) {
                got[who].push(buf[..n].to_vec());
            }
        }
        (got, totals, messages)
    }

    /// `n` datagrams from client `who`, of `size(seq)` bytes, each
    /// starting with its sequence number.
    #[cfg(target_os = "linux")]
    fn numbered(who: usize, n: u32, size: impl Fn(u32) -> usize) -> Vec<(usize, Vec<u8>)> {
        (0..n)
            .map(|seq| {
                let mut d = seq.to_be_bytes().to_vec();
                d.resize(size(seq).max(4), who as u8 ^ seq as u8);
                (who, d)
            })
            .collect()
    }

    #[cfg(target_os = "linux")]
    fn expected(data: &[(usize, Vec<u8>)]) -> Vec<Vec<Vec<u8>>> {
        let mut want = vec![Vec::new(), Vec::new()];
        for (who, d) in data {
            want[*who].push(d.clone());
        }
        want
    }

    /// Replies of one size to one source leave merged (fewer messages than
    /// replies: GSO) and arrive as the datagrams they answer, each once,
    /// in order; two sources interleaved and mixed sizes too.
    #[cfg(target_os = "linux")]
    #[test]
    fn merged_replies_arrive_as_separate_datagrams() {
        let mut batch = linux::Batch::new(2048, false);
        let same = numbered(0, 200, |_| 1000);
        let (got, totals, messages) = gso_echo(&mut batch, &same, &mut |_| {});
        assert_eq!(got, expected(&same));
        assert_eq!(totals, (200, 200_000));
        assert!(batch.gso(), "GSO still on");
        let merged: usize = messages.iter().map(|m| m.0).sum();
        assert!(merged < 200, "merged: {messages:?}");
        // Two sources, sizes changing every few datagrams, a shorter one
        // closing runs, empty ones (never merged).
        let mut mixed = Vec::new();
        let sizes = [1000, 1000, 1000, 999, 1000, 7, 7, 0, 0, 1500, 1500, 64];
        for (a, b) in numbered(0, 120, |s| sizes[s as usize % 12])
            .into_iter()
            .zip(numbered(1, 120, |s| sizes[(s as usize + 5) % 12]))
        {
            mixed.push(a.clone());
            mixed.push(a);
            mixed.push(b);
        }
        let (got, totals, _) = gso_echo(&mut batch, &mixed, &mut |_| {});
        assert_eq!(got, expected(&mixed));
        let bytes: usize = mixed.iter().map(|d| d.1.len()).sum();
        assert_eq!(totals, (mixed.len() as u64, bytes as u64));
    }

    /// The largest datagrams are never merged past the kernel's limit
    /// (64 KiB in all), and arrive whole. (Few at a time: the socket's
    /// default buffer holds about two of 64 KiB.)
    #[cfg(target_os = "linux")]
    #[test]
    fn the_largest_datagrams_are_sent_whole() {
        let mut batch = linux::Batch::new(65_508, false);
        for (size, count, messages) in [
            (65_507, 1, 1),
            (32_768, 2, 2),
            (32_000, 2, 1),
            (21_000, 3, 1),
        ] {
            let data = numbered(0, count, |_| size);
            let (got, totals, sends) = gso_echo(&mut batch, &data, &mut |_| {});
            assert_eq!(got, expected(&data), "{size}");
            assert_eq!(totals, (u64::from(count), u64::from(count) * size as u64));
            let made: usize = sends.iter().map(|m| m.0).sum();
            // Received in one batch, unless the kernel split the burst.
            if sends.len() == 1 {
                assert_eq!(made, messages, "{size} × {count}");
            }
        }
    }

    /// When the kernel refuses a merged run (EIO: no checksum offload;
    /// EINVAL on first use; ENOPROTOOPT), its replies are sent one by one,
    /// nothing lost, and merging stops for good on that socket.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_merged_run_is_sent_again_unmerged() {
        for code in [libc::EIO, libc::EINVAL, libc::ENOPROTOOPT] {
            let mut batch = linux::Batch::new(2048, false);
            let data = numbered(0, 200, |_| 1000);
            let mut first = true;
            let (got, totals, messages) = gso_echo(&mut batch, &data, &mut |b| {
                if std::mem::take(&mut first) {
                    b.inject_gso_error(code);
                }
            });
            assert_eq!(got, expected(&data), "errno {code}");
            assert_eq!(totals, (200, 200_000), "errno {code}");
            assert!(!batch.gso(), "errno {code}: GSO off");
            // After the first send, one message per reply.
            assert!(messages[1..].iter().all(|m| m.0 == m.1), "{messages:?}");
        }
    }

    /// A receiver with GRO gets merged replies (GSO) as one buffer and
    /// splits it back into the datagrams, each whole and in order, the
    /// shorter last one too: socket `b` (GRO on) sends to `a`, whose
    /// replies leave merged.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_merged_receive_is_split_into_its_datagrams() {
        let (a, a_addr) = server_socket();
        let (b, b_addr) = server_socket();
        linux::enable(&b, b_addr, false, true);
        let mut a_batch = linux::Batch::new(2048, false);
        let mut b_batch = linux::Batch::new(GRO_BUFFER, false);
        let mut replies = Replies::default();
        for sizes in [
            vec![1000; 30],
            [vec![1200; 20], vec![700]].concat(),
            vec![7, 7, 0, 9],
        ] {
            let data: Vec<Vec<u8>> = (0..sizes.len())
                .map(|seq| {
                    let mut d = vec![seq as u8; sizes[seq]];
                    d.iter_mut().enumerate().for_each(|(i, x)| *x ^= i as u8);
                    d
                })
                .collect();
            for d in &data {
                b.send_to(d, &a_addr.into()).unwrap();
            }
            let mut seen = 0;
            while seen < data.len() {
                let n = a_batch.recv(&a).unwrap();
                replies.clear();
                for k in 0..n {
                    let d = a_batch.datagram(k).data.to_vec();
                    replies.push(k, |out| {
                        out.extend_from_slice(&d);
                        true
                    });
                }
                a_batch.send(&a, &replies, |i, e| panic!("{i}: {e}"));
                seen += n;
            }
            let (mut got, mut buffers) = (Vec::new(), 0);
            while got.len() < data.len() {
                let n = b_batch.recv(&b).unwrap();
                buffers += b_batch.buffers();
                for k in 0..n {
                    let d = b_batch.datagram(k);
                    assert_eq!(d.source, Some(a_addr));
                    got.push(d.data.to_vec());
                }
            }
            assert_eq!(got, data, "{sizes:?}");
            if sizes[0] >= 700 {
                assert!(buffers < data.len(), "merged: {buffers} buffers");
            }
        }
    }

    /// An error that concerns one run, not the socket (here EAGAIN),
    /// re-sends that run unmerged and keeps merging.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_transient_error_keeps_gso_on() {
        let mut batch = linux::Batch::new(2048, false);
        let data = numbered(0, 100, |_| 1000);
        let mut first = true;
        let (got, totals, _) = gso_echo(&mut batch, &data, &mut |b| {
            if std::mem::take(&mut first) {
                b.inject_gso_error(libc::EAGAIN);
            }
        });
        assert_eq!(got, expected(&data));
        assert_eq!(totals, (100, 100_000));
        assert!(batch.gso());
    }

    round_trip!(
        portable_batches_keep_each_datagram_and_its_source,
        portable::Batch
    );

    /// The portable calls cannot tell a datagram's arrival address, and say
    /// so: replies then leave from the address routing picks.
    #[test]
    fn the_portable_batch_reports_no_arrival_address() {
        let (server, addr) = server_socket();
        assert!(!portable::enable(&server, addr, true, true));
    }
}
