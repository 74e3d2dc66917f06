//! `gatehouse cert ...`: the administrator's certificate commands (self-signed, CSR, import
//! of an all-in-one PEM or a PFX, show, shared ticket keys).
//!
//! Owns argument shapes, printing and exit codes; the work is in `super::certs` and
//! `super::ticket_keys`. Exit codes: 0 done, 1 the files or certificates are unusable,
//! 2 bad arguments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use super::certs::{self, CertBundle, CertInfo};
use super::ticket_keys::{KeyFileRole, TicketKeyError, TicketKeyFile, TicketKeySchedule};

/// Arguments of `gatehouse cert`.
#[derive(Args, Debug)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Make a self-signed certificate (ECDSA P-256) and its key for this node's names.
    SelfSigned {
        /// A DNS name or IP address; repeat for several (the first is also the CN).
        #[arg(long = "name", required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Where to write the certificate (PEM).
        #[arg(long, value_name = "FILE")]
        out_cert: PathBuf,
        /// Where to write the private key (PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        out_key: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=36_500))]
        days: u64,
        /// Replace the output files when they exist.
        #[arg(long)]
        force: bool,
    },
    /// Make a new key and a certificate signing request for a third-party CA.
    Csr {
        /// Subject common name.
        #[arg(long)]
        cn: String,
        /// A subjectAltName (DNS name or IP address); repeat for several. The CN is added.
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Where to write the CSR (PEM).
        #[arg(long, value_name = "FILE")]
        out_csr: PathBuf,
        /// Where to write the new private key (PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        out_key: PathBuf,
        /// Replace the output files when they exist.
        #[arg(long)]
        force: bool,
    },
    /// Import an all-in-one PEM (key, certificate, intermediates in any order) or a PFX,
    /// and write a leaf-first chain and its key.
    Import {
        /// The all-in-one PEM file.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "pfx",
            required_unless_present = "pfx"
        )]
        pem: Option<PathBuf>,
        /// The PKCS#12/PFX file.
        #[arg(long, value_name = "FILE", requires = "password_env")]
        pfx: Option<PathBuf>,
        /// Name of the environment variable holding the PFX password (never on the command line).
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// Where to write the chain, leaf first (PEM).
        #[arg(long, value_name = "FILE")]
        out_cert: PathBuf,
        /// Where to write the private key (PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        out_key: PathBuf,
        /// Write it even when expired, not yet valid or a CA certificate, or over existing
        /// output files.
        #[arg(long)]
        force: bool,
    },
    /// Print subject, SANs, issuer and validity of each certificate in a PEM file, and
    /// problems with the chain order. Exits 1 when a certificate is expired or not yet valid.
    Show {
        /// The PEM file.
        file: PathBuf,
    },
    /// Create or rotate a shared session-ticket key file (run by cron on one node, or let
    /// one gateway rotate), then list its keys' activation times.
    TicketKeys {
        /// The key file (mode 0600).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Hours between keys.
        #[arg(long, default_value_t = 6)]
        rotate_every_hours: u64,
    },
}

/// Runs `gatehouse cert ...`; called by `crate::cli`.
pub fn run(args: CertArgs) -> ExitCode {
    let now = SystemTime::now();
    let result = match args.command {
        CertCommand::SelfSigned {
            names,
            out_cert,
            out_key,
            days,
            force,
        } => {
            if let Err(code) =
                usable_names("--name", &names).and(fresh_outputs(&[&out_cert, &out_key], force))
            {
                return code;
            }
            certs::generate_self_signed(&names, now, Duration::from_secs(days.saturating_mul(86_400)))
                .and_then(|b| b.write(&out_cert, &out_key))
                .map(|()| println!("wrote {} and {}", out_cert.display(), out_key.display()))
        }
        CertCommand::Csr {
            cn,
            sans,
            out_csr,
            out_key,
            force,
        } => {
            let checks = usable_names("--cn", std::slice::from_ref(&cn))
                .and(usable_names("--san", &sans))
                .and(fresh_outputs(&[&out_csr, &out_key], force));
            if let Err(code) = checks {
                return code;
            }
            certs::generate_csr(&cn, &sans).and_then(|csr| {
                certs::write_atomic(&out_key, csr.key_pem.as_bytes(), 0o600)?;
                certs::write_atomic(&out_csr, csr.csr_pem.as_bytes(), 0o644)?;
                println!(
                    "wrote {} and {}; send the CSR to your CA",
                    out_csr.display(),
                    out_key.display()
                );
                Ok(())
            })
        }
        CertCommand::Import {
            pem,
            pfx,
            password_env,
            out_cert,
            out_key,
            force,
        } => return import(pem, pfx, password_env, &out_cert, &out_key, force, now),
        CertCommand::Show { file } => return show(&file, now),
        CertCommand::TicketKeys {
            file,
            rotate_every_hours,
        } => return ticket_keys(file, rotate_every_hours, now),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Names for a certificate's subjectAltName; exit code 2 (bad arguments) on the first that
/// cannot be one.
fn usable_names(flag: &str, names: &[String]) -> Result<(), ExitCode> {
    for name in names {
        if let Err(e) = certs::check_subject_name(name) {
            eprintln!("error: {flag} {e}");
            return Err(ExitCode::from(2));
        }
    }
    Ok(())
}

/// Refuses to replace existing output files without `--force` (exit code 1): a certificate
/// or key in use is not overwritten by a typo.
fn fresh_outputs(paths: &[&Path], force: bool) -> Result<(), ExitCode> {
    if force {
        return Ok(());
    }
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        eprintln!("error: {} exists (use --force to replace it)", p.display());
        return Err(ExitCode::from(1));
    }
    Ok(())
}

fn import(
    pem: Option<PathBuf>,
    pfx: Option<PathBuf>,
    password_env: Option<String>,
    out_cert: &Path,
    out_key: &Path,
    force: bool,
    now: SystemTime,
) -> ExitCode {
    let loaded = match (pem, pfx) {
        (Some(pem), _) => certs::load_pem_bundle(&pem),
        (None, Some(pfx)) => {
            let var = password_env.unwrap_or_default();
            let Ok(password) = std::env::var(&var) else {
                eprintln!("error: --password-env {var}: the variable is not set");
                return ExitCode::from(2);
            };
            certs::load_pkcs12(&pfx, &password)
        }
        (None, None) => {
            eprintln!("error: give --pem FILE or --pfx FILE");
            return ExitCode::from(2);
        }
    };
    let bundle = match loaded {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let problems = match bundle.problems(now, &[]) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    for p in &problems {
        eprintln!("{}: {p}", if p.is_fatal() { "error" } else { "warning" });
    }
    if let Err(code) = fresh_outputs(&[out_cert, out_key], force) {
        return code;
    }
    if problems.iter().any(|p| p.is_fatal()) && !force {
        eprintln!("not written (use --force to write it anyway)");
        return ExitCode::from(1);
    }
    if let Err(e) = bundle.write(out_cert, out_key) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    print_chain(&bundle);
    println!(
        "wrote {} (leaf first) and {}",
        out_cert.display(),
        out_key.display()
    );
    ExitCode::SUCCESS
}

fn print_chain(bundle: &CertBundle) {
    for (i, der) in bundle.chain.iter().enumerate() {
        if let Ok(info) = CertInfo::parse(der, i + 1) {
            println!("#{} {}", i + 1, info.subject);
        }
    }
}

fn show(file: &Path, now: SystemTime) -> ExitCode {
    let ders = match certs::read_pem_certs(file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut infos = Vec::new();
    for (i, der) in ders.iter().enumerate() {
        match CertInfo::parse(der, i + 1) {
            Ok(info) => infos.push(info),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let mut invalid = false;
    for (i, info) in infos.iter().enumerate() {
        println!("certificate #{}", i + 1);
        println!("  subject:  {}", info.subject);
        println!("  issuer:   {}", info.issuer);
        let sans = if info.sans.is_empty() {
            "(none)".to_string()
        } else {
            info.sans.join(", ")
        };
        println!("  SANs:     {sans}");
        let state = match info.validity_problems(now).first() {
            Some(p) => {
                invalid = true;
                if matches!(p, certs::CertProblem::Expired { .. }) {
                    "EXPIRED"
                } else {
                    "NOT YET VALID"
                }
                .to_string()
            }
            None => {
                let days = (info.not_after_unix - certs::unix_seconds(now)) / 86_400;
                format!("valid, {days} days left")
            }
        };
        println!(
            "  validity: {} to {} ({state})",
            certs::format_unix(info.not_before_unix),
            certs::format_unix(info.not_after_unix)
        );
        if info.is_ca {
            println!("  CA:       yes");
        }
    }
    if infos.first().is_some_and(|first| first.is_ca) {
        // Fine for a CA file; as a listener's certificate, refused.
        println!(
            "note: certificate #1 is a CA certificate; as a listener's certificate: {}",
            certs::CertProblem::LeafIsCa
        );
    }
    let problems = certs::chain_order_problems(&infos);
    if problems.is_empty() {
        println!("chain order: ok");
    } else {
        for p in problems {
            println!("chain order problem: {p}");
        }
    }
    if invalid {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn ticket_keys(file: PathBuf, rotate_every_hours: u64, now: SystemTime) -> ExitCode {
    let rotate_every = Duration::from_secs(rotate_every_hours.max(1) * 3600);
    let key_file = TicketKeyFile {
        path: file,
        schedule: TicketKeySchedule {
            rotate_every,
            ticket_lifetime: rotate_every * 2,
            ..TicketKeySchedule::default()
        },
        role: KeyFileRole::Rotate,
    };
    match key_file.open(now) {
        Ok(ticketer) => {
            for key in ticketer.key_set().keys() {
                println!("key active from {}", certs::format_unix(key.active_from_unix));
            }
            ExitCode::SUCCESS
        }
        Err(e @ TicketKeyError::Io { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", key_file.path.display());
            ExitCode::from(1)
        }
    }
}
