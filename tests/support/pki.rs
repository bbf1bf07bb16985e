//! Certificates for the TLS tests, made by `openssl` in a temporary
//! directory: a CA, two server certificates it signed (for 127.0.0.1 and
//! localhost) and a client certificate.

use std::path::PathBuf;
use std::process::Command;

/// A CA, two server certificates it signed (serials 1001 and 2002), and a
/// client certificate, in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `None` (with a message) without openssl or any of `tools` (the
    /// clients a test needs besides).
    pub fn make(tools: &[&str]) -> Option<Pki> {
        for tool in [&["openssl"][..], tools].concat() {
            if Command::new(tool).arg("--version").output().is_err()
                && Command::new(tool).arg("version").output().is_err()
            {
                eprintln!("skipped: no {tool} on this machine");
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        pki.openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=echo test CA",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            pki.path("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(pki.path("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, serial, ext, cn) in [
            ("server", "1001", "server.ext", "/CN=localhost"),
            ("server2", "2002", "server.ext", "/CN=localhost"),
            ("client", "3003", "client.ext", "/CN=echo test client"),
        ] {
            let (key, csr, pem) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            pki.openssl(
                &[
                    &["req"],
                    &ec[..],
                    &["-keyout", &key, "-out", &csr, "-subj", cn],
                ]
                .concat(),
            );
            pki.openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &pem,
            ]);
        }
        Some(pki)
    }

    pub fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_owned()
    }
}
