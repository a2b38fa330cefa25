//! portvakt: an SSH bastion (jump host).
//!
//! The modules follow the data flow (see DESIGN.md §2): `server` accepts and
//! drives connections, `auth` makes an [`auth::Identity`], `policy` makes an
//! [`policy::Authorized`], `forward` carries bytes for it, and `audit` records
//! all of it in the `store`. `console` shows the store to reviewers in a
//! browser.

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod forward;
pub mod keyfile;
pub mod metrics;
pub mod policy;
pub mod reasons;
pub mod recording;
pub mod requests;
pub mod revocation;
pub mod secret_file;
pub mod server;
pub mod store;
pub mod text;
