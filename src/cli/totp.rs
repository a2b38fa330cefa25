//! `portvakt totp enroll|reset`

use clap::Subcommand;
use serde::Serialize;

use super::{Outcome, print_json};
use crate::audit::{Event, EventKind};
use crate::auth::totp::{Secret, Totp, TotpCheck, qr_text};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum TotpCmd {
    /// Give USER a TOTP secret: prints the otpauth:// URI, the base32 secret
    /// and a QR code for an authenticator app.
    Enroll {
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove USER's TOTP secret (their next IdP login enrols again when
    /// self_enroll is on).
    Reset { user: String },
}

#[derive(Serialize)]
struct Enrolled {
    user: String,
    secret: String,
    uri: String,
}

pub async fn run(cmd: &TotpCmd, cfg: &Config, store: &Store) -> Outcome {
    let totp = match Totp::open(store.clone(), &cfg.mfa.secret_key_file) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    match cmd {
        TotpCmd::Enroll { user, json } => {
            let secret = match Secret::generate() {
                Ok(s) => s,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            let uri = match secret.uri(user) {
                Ok(u) => u,
                Err(e) => return Outcome::Usage(format!("cannot enrol {user:?}: {e}")),
            };
            match totp.enroll(user, &secret, None).await {
                Ok(TotpCheck::Ok) => {}
                Ok(_) => {
                    return Outcome::Failed(format!(
                        "{user} already has a TOTP secret; run `portvakt totp reset {user}` first"
                    ));
                }
                Err(e) => return Outcome::Failed(e.to_string()),
            }
            let ev = Event::new(EventKind::TotpEnroll)
                .user(user.as_str())
                .detail("by", "cli");
            if let Err(o) = super::record(cfg, store, ev).await {
                return o;
            }
            let out = Enrolled {
                user: user.clone(),
                secret: secret.base32(),
                uri,
            };
            if *json {
                return print_json(&out);
            }
            println!(
                "TOTP for {}:\n{}",
                out.user,
                qr_text(&out.uri).unwrap_or_default()
            );
            println!("secret: {}\nuri:    {}", out.secret, out.uri);
            Outcome::Ok
        }
        TotpCmd::Reset { user } => match totp.reset(user).await {
            Ok(true) => {
                let ev = Event::new(EventKind::TotpReset)
                    .user(user.as_str())
                    .detail("by", "cli");
                if let Err(o) = super::record(cfg, store, ev).await {
                    return o;
                }
                println!("removed the TOTP secret of {user}");
                Outcome::Ok
            }
            Ok(false) => Outcome::Failed(format!("{user} has no TOTP secret")),
            Err(e) => Outcome::Failed(e.to_string()),
        },
    }
}
