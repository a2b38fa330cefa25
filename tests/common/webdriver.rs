//! A real browser: headless Chromium (Debian `chromium`) driven over the
//! W3C WebDriver protocol by `chromedriver` (Debian `chromium-driver`).
//!
//! [`WebDriver`] is one `chromedriver` on a free port of 127.0.0.1, ready
//! once its `/status` says so, killed when dropped. [`Chromium`] is one
//! browser of it (a WebDriver session: its own Chromium with a fresh
//! profile, so its own cookies), closed when dropped.
//!
//! The client is the few WebDriver commands the tests use, as JSON over
//! the blocking reqwest client the other tests already use: the tests are
//! synchronous, and the async crates (thirtyfour, fantoccini) would add a
//! second HTTP stack and a runtime per test for a dozen requests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::proc::{ChildGuard, POLL_INTERVAL, READY_TIMEOUT, free_port, poll_for};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package `chromium-driver`), of the same version.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Every browser's page area (the viewport), so that screenshots look alike.
pub const WINDOW: (u32, u32) = (1280, 800);
/// How long a wait for something on a page may take.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Run before a page's own scripts: keeps each Content-Security-Policy
/// violation of the page in `window.__cspViolations`.
const CSP_WATCH: &str = "window.__cspViolations = []; \
    document.addEventListener('securitypolicyviolation', function (e) { \
    window.__cspViolations.push(e.violatedDirective + ' blocked ' + e.blockedURI); });";

/// The key of an element reference in WebDriver's JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running `chromedriver`.
pub struct WebDriver {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    dir: PathBuf,
    http: Client,
    process: ChildGuard,
}

impl WebDriver {
    /// Starts `chromedriver` with its log in `dir`, and waits until it
    /// reports itself ready.
    pub fn start(dir: &Path) -> WebDriver {
        let port = free_port();
        let log = dir.join("chromedriver.log");
        let mut process = ChildGuard::spawn(
            "chromedriver",
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1"),
            Some(&log),
        );
        let url = format!("http://127.0.0.1:{port}");
        let http = Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("build the WebDriver HTTP client");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            process.assert_running();
            let ready = http
                .get(format!("{url}/status"))
                .send()
                .ok()
                .and_then(|r| read_json(r).ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within {READY_TIMEOUT:?}; log:\n{}",
                process.log_text()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
        WebDriver {
            url,
            dir: dir.to_path_buf(),
            http,
            process,
        }
    }

    /// A new browser (its own Chromium, profile in `chromium-NAME` of the
    /// test's folder), headless, with a [`WINDOW`]-sized window.
    pub fn browser(&self, name: &str) -> Chromium {
        let profile = self.dir.join(format!("chromium-{name}"));
        std::fs::create_dir_all(&profile).expect("create the Chromium profile folder");
        let args = [
            "--headless=new".to_string(),
            // Root in a container: no user namespaces for the sandbox.
            "--no-sandbox".to_string(),
            "--disable-dev-shm-usage".to_string(),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            "--force-device-scale-factor=1".to_string(),
            "--hide-scrollbars".to_string(),
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-extensions".to_string(),
            "--disable-sync".to_string(),
            "--lang=en-US".to_string(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"pageLoad": 60_000, "script": 30_000, "implicit": 0},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let answer = self
            .http
            .post(format!("{}/session", self.url))
            .header("content-type", "application/json")
            .body(caps.to_string())
            .send()
            .map_err(|e| e.to_string())
            .and_then(read_json)
            .unwrap_or_else(|e| panic!("new WebDriver session: {e}"));
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "chromedriver did not start Chromium: {answer}\nlog:\n{}",
                    self.process.log_text()
                )
            })
            .to_string();
        let browser = Chromium {
            name: name.to_string(),
            http: self.http.clone(),
            session: format!("{}/session/{id}", self.url),
        };
        // The window's page area is smaller than the window (headless
        // Chromium keeps room for its toolbars): fix the page area itself.
        browser.must(
            "POST",
            "/goog/cdp/execute",
            Some(
                json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                    "width": WINDOW.0, "height": WINDOW.1, "deviceScaleFactor": 1, "mobile": false,
                }}),
            ),
        );
        // Every page records what its Content-Security-Policy blocked.
        browser.must(
            "POST",
            "/goog/cdp/execute",
            Some(
                json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {
                    "source": CSP_WATCH,
                }}),
            ),
        );
        browser
    }
}

/// An answer's body as JSON (the reqwest here has no `json` feature).
fn read_json(r: reqwest::blocking::Response) -> Result<Value, String> {
    let body = r.bytes().map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))
}

/// A WebDriver error answer.
#[derive(Debug)]
pub struct WdError {
    pub error: String,
    pub message: String,
}

/// One browser (a WebDriver session).
pub struct Chromium {
    name: String,
    http: Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
}

/// An element of the page in a [`Chromium`].
pub struct Element<'a> {
    browser: &'a Chromium,
    id: String,
    /// The selector it was found by, for messages.
    css: String,
}

impl Chromium {
    /// Sends one command; the answer's `value`, or its error.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        let url = format!("{}{path}", self.session);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let answer = req
            .send()
            .map_err(|e| e.to_string())
            .and_then(read_json)
            .map_err(|e| WdError {
                error: "http".into(),
                message: format!("{method} {url}: {e}"),
            })?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        match value.get("error").and_then(Value::as_str) {
            Some(error) => Err(WdError {
                error: error.to_string(),
                message: value["message"].as_str().unwrap_or("").to_string(),
            }),
            None => Ok(value),
        }
    }

    /// [`Chromium::command`], panicking on an error with the page.
    fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, path, body).unwrap_or_else(|e| {
            panic!(
                "browser {}: {method} {path}: {} {}\n{}",
                self.name,
                e.error,
                e.message,
                self.describe()
            )
        })
    }

    /// Where the browser is and what it shows, for failure messages.
    pub fn describe(&self) -> String {
        let url = self
            .command("GET", "/url", None)
            .map(|v| v.as_str().unwrap_or("").to_string())
            .unwrap_or_else(|e| format!("(no URL: {})", e.message));
        let source = self
            .command("GET", "/source", None)
            .map(|v| v.as_str().unwrap_or("").to_string())
            .unwrap_or_else(|e| format!("(no source: {})", e.message));
        format!("----- page {url} -----\n{source}\n----- end of page -----")
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url })));
    }

    /// The address shown.
    pub fn url(&self) -> String {
        self.must("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's markup as the browser has it now.
    pub fn source(&self) -> String {
        self.must("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's visible text.
    pub fn body_text(&self) -> String {
        self.find("body").text()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns
    /// its result.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// The HTTP status of the page's own navigation.
    pub fn status(&self) -> i64 {
        self.execute(
            "return performance.getEntriesByType('navigation')[0].responseStatus;",
            vec![],
        )
        .as_i64()
        .unwrap_or_else(|| panic!("no navigation status\n{}", self.describe()))
    }

    /// What the page's Content-Security-Policy blocked so far.
    pub fn csp_violations(&self) -> Vec<String> {
        match self.execute("return window.__cspViolations || null;", vec![]) {
            Value::Array(a) => a.iter().map(|v| v.to_string()).collect(),
            v => panic!(
                "the CSP watch is not on this page ({v})\n{}",
                self.describe()
            ),
        }
    }

    /// The names of the cookies the page's origin has.
    pub fn cookie_names(&self) -> Vec<String> {
        self.must("GET", "/cookie", None)
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn element(&self, value: &Value, css: &str) -> Element<'_> {
        Element {
            browser: self,
            id: value[ELEMENT_KEY]
                .as_str()
                .unwrap_or_else(|| panic!("not an element: {value}"))
                .to_string(),
            css: css.to_string(),
        }
    }

    /// The first element matching `css` now, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        match self.command(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        ) {
            Ok(v) => Some(self.element(&v, css)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("find {css}: {} {}\n{}", e.error, e.message, self.describe()),
        }
    }

    /// The first element matching `css`; panics with the page if none.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| {
            panic!(
                "browser {}: no element {css}\n{}",
                self.name,
                self.describe()
            )
        })
    }

    /// All elements matching `css` now.
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let v = self.must(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .map(|a| a.iter().map(|e| self.element(e, css)).collect())
            .unwrap_or_default()
    }

    /// Polls `check` until it returns `Some` (elements come and go while a
    /// page loads or a script runs); panics after [`PAGE_TIMEOUT`] naming
    /// `what`, with the page.
    pub fn wait_until<T>(&self, what: &str, mut check: impl FnMut(&Chromium) -> Option<T>) -> T {
        poll_for(PAGE_TIMEOUT, || check(self)).unwrap_or_else(|| {
            panic!(
                "browser {}: timed out after {PAGE_TIMEOUT:?} waiting for {what}\n{}",
                self.name,
                self.describe()
            )
        })
    }

    /// Waits for an element matching `css`.
    pub fn wait_for(&self, css: &str) -> Element<'_> {
        self.wait_until(&format!("an element {css}"), |b| {
            b.try_find(css).map(|_| ())
        });
        self.find(css)
    }

    /// Waits for the page's `<h1>` to read `title`.
    pub fn wait_for_title(&self, title: &str) {
        self.wait_until(&format!("the page {title:?}"), |b| {
            b.try_find("main h1")
                .filter(|h| h.text() == title)
                .map(|_| ())
        });
    }

    /// Logs in at the test IdP as a person would: opens `start` (a console
    /// page), which sends the browser to the IdP; types `user` and
    /// `password` into its login form and submits it; allows the consent
    /// form; and waits until the browser is back on the console at
    /// `console` (`http://127.0.0.1:PORT`), past `/auth/callback` when the
    /// login gave a session (its page moves on by itself), or on the
    /// callback's answer when it did not.
    pub fn log_in(&self, console: &str, start: &str, user: &str, password: &str) {
        self.goto(&format!("{console}{start}"));
        let mut typed = false;
        let mut consented = false;
        self.wait_until(
            &format!("the IdP login of {user} back on the console"),
            |b| {
                let url = b.url();
                if url.starts_with(console) {
                    let on_callback = url.starts_with(&format!("{console}/auth/callback"));
                    // The callback's page moves on by a meta refresh; a refused
                    // login stays there (no `#continue` link).
                    if !on_callback || b.try_find("#continue").is_none() {
                        return Some(());
                    }
                } else if !typed && let Some(form) = b.try_find("form#login") {
                    form.find("input[name=login]").type_text(user);
                    form.find("input[name=password]").type_text(password);
                    form.find("button[type=submit]").click();
                    typed = true;
                } else if !consented && let Some(form) = b.try_find("form#consent") {
                    form.find("button[type=submit]").click();
                    consented = true;
                }
                None
            },
        );
        assert!(typed, "the IdP showed no login form");
    }

    /// Saves what the window shows as a PNG at `path`.
    pub fn screenshot(&self, path: &Path) {
        let data = self.must("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("screenshot is not base64: {e}"));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "screenshot not a PNG"
        );
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create the screenshot folder");
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("write screenshot {}: {e}", path.display()));
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Closes Chromium; chromedriver's own end (its process group)
        // takes whatever is left.
        let _ = self.command("DELETE", "", None);
    }
}

impl Element<'_> {
    fn path(&self, what: &str) -> String {
        format!("/element/{}/{what}", self.id)
    }

    /// Its rendered text.
    pub fn text(&self) -> String {
        match self.browser.command("GET", &self.path("text"), None) {
            Ok(v) => v.as_str().unwrap_or_default().to_string(),
            // Replaced by a reload or a script while we looked.
            Err(e) if e.error == "stale element reference" => String::new(),
            Err(e) => panic!(
                "text of {}: {} {}\n{}",
                self.css,
                e.error,
                e.message,
                self.browser.describe()
            ),
        }
    }

    /// The value of its attribute `name`.
    pub fn attr(&self, name: &str) -> Option<String> {
        self.browser
            .must("GET", &self.path(&format!("attribute/{name}")), None)
            .as_str()
            .map(str::to_string)
    }

    /// Clicks it (and, if that navigates, waits for the new page).
    pub fn click(&self) {
        self.browser.must("POST", &self.path("click"), None);
    }

    /// Types `text` into it, replacing what it held.
    pub fn type_text(&self, text: &str) {
        self.browser.must("POST", &self.path("clear"), None);
        self.browser
            .must("POST", &self.path("value"), Some(json!({ "text": text })));
    }

    /// The first element inside it matching `css`.
    pub fn find(&self, css: &str) -> Element<'_> {
        let v = self.browser.must(
            "POST",
            &self.path("element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        self.browser.element(&v, &format!("{} {css}", self.css))
    }
}
