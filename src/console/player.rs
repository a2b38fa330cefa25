//! The terminal player of `/recordings/ID`: asciinema-player (Apache-2.0),
//! vendored by `scripts/update-asciinema-player` into `assets/`, served
//! from the binary under a path with its version (so it can be cached for a
//! year), and `player-init.js`, which starts it on the page's
//! `data-cast-url` element (the console allows no inline script).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error_page;

const PLAYER_JS: &str = include_str!("assets/asciinema-player/asciinema-player.min.js");
const PLAYER_CSS: &str = include_str!("assets/asciinema-player/asciinema-player.css");
const VERSION_FILE: &str = include_str!("assets/asciinema-player/VERSION");
const INIT_JS: &str = include_str!("assets/player-init.js");

/// The vendored version (the first line of `VERSION`).
pub fn version() -> &'static str {
    VERSION_FILE.lines().next().unwrap_or("").trim()
}

/// Where the page finds the player's script.
pub fn script_url() -> String {
    format!(
        "/static/asciinema-player/{}/asciinema-player.min.js",
        version()
    )
}

/// Where the page finds the player's stylesheet.
pub fn stylesheet_url() -> String {
    format!(
        "/static/asciinema-player/{}/asciinema-player.css",
        version()
    )
}

pub const INIT_URL: &str = "/static/player-init.js";

/// The policy of the recording page: the console's, plus
/// `'wasm-unsafe-eval'`, because the player runs its terminal emulator as
/// WebAssembly, which browsers compile only with that source. It allows
/// compiling WebAssembly and nothing else: no `eval`, no inline script.
pub const RECORDING_CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// `GET /static/asciinema-player/VERSION/FILE`: the vendored files,
/// cached for a year (a new version has a new path).
pub async fn asset(Path((version, file)): Path<(String, String)>) -> Response {
    if version != self::version() {
        return error_page(StatusCode::NOT_FOUND, "No such file.");
    }
    let (ctype, body) = match file.as_str() {
        "asciinema-player.min.js" => ("text/javascript; charset=utf-8", PLAYER_JS),
        "asciinema-player.css" => ("text/css; charset=utf-8", PLAYER_CSS),
        _ => return error_page(StatusCode::NOT_FOUND, "No such file."),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ctype)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /static/player-init.js` (an hour, like the stylesheet: its path
/// does not change with the binary).
pub async fn init_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        INIT_JS,
    )
        .into_response()
}
