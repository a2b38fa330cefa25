//! A browser for the review console, as far as HTTP goes: reqwest with a
//! cookie store, following redirects across the console and the test IdP,
//! filling the IdP's plain HTML login and consent forms (tests/idp/README.md).

use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::HeaderMap;

/// One answer, read whole.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    /// Where the last redirect led.
    pub url: String,
    pub headers: HeaderMap,
    pub text: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// All values of a header (e.g. `set-cookie`).
    pub fn headers_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }

    /// The value of attribute `attr` of the first tag that contains `marker`.
    pub fn attr_after(&self, marker: &str, attr: &str) -> Option<String> {
        let at = self.text.find(marker)?;
        let tag_end = self.text[at..].find('>')? + at;
        let tag = &self.text[at..tag_end];
        let key = format!("{attr}=\"");
        let start = tag.find(&key)? + key.len();
        let len = tag[start..].find('"')?;
        Some(tag[start..start + len].replace("&amp;", "&"))
    }

    /// The console's CSRF token on this page.
    pub fn csrf(&self) -> String {
        self.attr_after("name=\"csrf\"", "value")
            .unwrap_or_else(|| panic!("no CSRF field on {}:\n{}", self.url, self.text))
    }
}

/// A cookie-keeping browser: `client` follows redirects, `raw` shows
/// them; both share one cookie jar.
pub struct Browser {
    client: Client,
    raw: Client,
    /// The console's `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Browser {
    /// A browser for the console at `base`, with no cookies yet.
    pub fn new(base: &str) -> Browser {
        Browser::trusting(base, None)
    }

    /// One that also trusts the CA (or self-signed certificate) `root_pem`.
    pub fn trusting(base: &str, root_pem: Option<&[u8]>) -> Browser {
        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let build = |policy| {
            let mut b = Client::builder()
                .cookie_provider(jar.clone())
                .redirect(policy)
                .timeout(Duration::from_secs(60));
            if let Some(pem) = root_pem {
                b = b.add_root_certificate(
                    reqwest::Certificate::from_pem(pem).expect("a PEM certificate"),
                );
            }
            b.build().expect("build the HTTP client")
        };
        Browser {
            client: build(reqwest::redirect::Policy::limited(20)),
            raw: build(reqwest::redirect::Policy::none()),
            base: base.to_string(),
        }
    }

    /// `GET path` without following a redirect.
    pub fn get_raw(&self, path: &str) -> Page {
        let url = self.url(path);
        Browser::read(&format!("GET {url}"), self.raw.get(&url).send())
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn read(what: &str, r: reqwest::Result<Response>) -> Page {
        let r = r.unwrap_or_else(|e| panic!("{what}: {e:?}"));
        Page {
            status: r.status().as_u16(),
            url: r.url().to_string(),
            headers: r.headers().clone(),
            text: r.text().unwrap_or_else(|e| panic!("{what}: body: {e}")),
        }
    }

    pub fn get(&self, path: &str) -> Page {
        let url = self.url(path);
        Browser::read(&format!("GET {url}"), self.client.get(&url).send())
    }

    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        let url = self.url(path);
        Browser::read(
            &format!("POST {url}"),
            self.client.post(&url).form(form).send(),
        )
    }

    /// Log in at the console through the IdP's pages as `user` /
    /// `password`; returns the console's answer to the callback (403 for
    /// a user without a console role) or, after a login, the page the
    /// console continues to.
    pub fn login(&self, user: &str, password: &str) -> Page {
        let page = self.login_callback(user, password);
        match page.attr_after("id=\"continue\"", "href") {
            Some(next) if page.status == 200 => self.get(&next),
            _ => page,
        }
    }

    /// [`Browser::login`] up to the console's answer at `/auth/callback`
    /// (where the session cookie is set).
    pub fn login_callback(&self, user: &str, password: &str) -> Page {
        self.login_from("/auth/login", user, password)
    }

    /// [`Browser::login_callback`] starting at `start` (a page that
    /// redirects to the login, or a `/auth/login?next=` address).
    pub fn login_from(&self, start: &str, user: &str, password: &str) -> Page {
        let mut page = self.get(start);
        for _ in 0..4 {
            if let Some(action) = page.attr_after("<form id=\"login\"", "action") {
                let url = resolve(&page.url, &action);
                page = self.post(&url, &[("login", user), ("password", password)]);
            } else if let Some(action) = page.attr_after("<form id=\"consent\"", "action") {
                let url = resolve(&page.url, &action);
                page = self.post(&url, &[]);
            } else {
                break;
            }
        }
        assert!(
            page.url
                .starts_with(&format!("{}/auth/callback", self.base)),
            "the IdP did not send the browser back to the console: {page:?}"
        );
        page
    }
}

/// `path` (absolute or rooted) against the page at `base`.
fn resolve(base: &str, path: &str) -> String {
    if path.starts_with("http") {
        return path.to_string();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{path}", &base[..origin_end])
}

/// The test IdP's users of the console tests: reviewers (rita, and mallory
/// whose IdP name is a script), an admin (adam), someone with no console
/// role (bob), and an engineer who logs in over SSH (alice).
pub fn users() -> serde_json::Value {
    serde_json::json!({
        "rita": {"password": "rita-pw", "preferred_username": "rita", "groups": ["security"]},
        "adam": {"password": "adam-pw", "preferred_username": "adam", "groups": ["portvakt-admins"]},
        "bob": {"password": "bob-pw", "preferred_username": "bob", "groups": ["dev"]},
        "mallory": {"password": "mallory-pw", "preferred_username": "<script>alert(1)</script>", "groups": ["security"]},
        "alice": {"password": "alice-pw", "preferred_username": "alice", "groups": ["sre"]},
    })
}
