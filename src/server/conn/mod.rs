//! One SSH connection, in the order of its life:
//!
//! - [`driver`]: accept → handshake → deadlines → disconnect → last rows;
//! - [`state`]: [`ConnCtx`], what the pieces of one connection share;
//! - [`handler`]: the russh `Handler`, callbacks that delegate;
//! - [`sink`]: what the login (`auth::login`) may do to the connection;
//! - [`forward_task`]: one `direct-tcpip` channel, decide → row → dial →
//!   pump → close;
//! - [`session`] and [`session_text`]: session channels, text and logout.

mod driver;
mod forward_task;
mod handler;
mod session;
mod session_text;
mod sink;
mod state;

pub use driver::{CLOSE_WAIT, serve};
pub use state::ConnCtx;
