//! Metrics and health (issue 6, item 1): `[metrics] listen` serves
//! `/healthz`, `/readyz` and `/metrics` in the Prometheus text format, whose
//! counters, gauges and histograms move as logins and forwards happen, with
//! labels from fixed sets only (never a user name or an address); and the
//! Grafana dashboard in config/ queries only metrics that a scrape holds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use serde_json::Value;

use common::proc;
use common::*;

/// One sample line of a scrape: `name{labels} value`.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` answer.
#[derive(Clone, Debug)]
struct Scrape {
    text: String,
    samples: Vec<Sample>,
    /// `# TYPE` of each metric family.
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// Fetches and parses `/metrics` of the node whose metrics port is `port`,
    /// checking the exposition format on the way.
    fn get(port: u16) -> Scrape {
        let response = http_get(port, "/metrics");
        assert_eq!(response.status, 200, "GET /metrics: {response:?}");
        let content_type = response.header("content-type").unwrap_or("");
        assert!(
            content_type.starts_with("application/openmetrics-text")
                || content_type.starts_with("text/plain; version=0.0.4"),
            "/metrics is not in a Prometheus text format: content-type {content_type:?}"
        );
        Scrape::parse(&response.body)
    }

    /// Parses the Prometheus / OpenMetrics text format; panics on any line
    /// that is neither a comment nor a well-formed sample.
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            samples.push(parse_sample(line));
        }
        if text.contains("# EOF") {
            assert!(
                text.trim_end().ends_with("# EOF"),
                "OpenMetrics text must end with # EOF"
            );
        }
        for s in &samples {
            assert!(
                family_of(&s.name, &types).is_some(),
                "sample {} has no # TYPE line",
                s.name
            );
        }
        Scrape {
            text: text.to_string(),
            samples,
            types,
        }
    }

    /// The sum of the samples named `name` whose labels include `labels`
    /// (0 when there are none yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every sample name the scrape holds or declares: the samples, plus
    /// what each `# TYPE` line stands for (a counter family with no child
    /// yet still names `NAME_total`).
    fn metric_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.samples.iter().map(|s| s.name.clone()).collect();
        for (family, kind) in &self.types {
            match kind.as_str() {
                "counter" => {
                    names.insert(format!("{family}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{family}{suffix}"));
                    }
                }
                _ => {
                    names.insert(family.clone());
                }
            }
        }
        names
    }

    /// The label names the samples of `metric` carry.
    fn label_names(&self, metric: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == metric)
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    }
}

/// The `# TYPE` family a sample name belongs to.
fn family_of<'a>(sample: &str, types: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let candidates = [
        sample,
        sample.strip_suffix("_total").unwrap_or(""),
        sample.strip_suffix("_bucket").unwrap_or(""),
        sample.strip_suffix("_count").unwrap_or(""),
        sample.strip_suffix("_sum").unwrap_or(""),
        sample.strip_suffix("_created").unwrap_or(""),
    ];
    candidates
        .into_iter()
        .find_map(|c| types.get_key_value(c).map(|(k, _)| k.as_str()))
}

/// `name{a="x",b="y"} value [timestamp]`.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("bad sample line {line:?}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let end;
        loop {
            let (i, c) = chars
                .next()
                .unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
            match c {
                '}' => {
                    end = i;
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    assert_eq!(
                        chars.next().map(|(_, c)| c),
                        Some('"'),
                        "label value not quoted in {line:?}"
                    );
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars
                            .next()
                            .unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                        match c {
                            '"' => break,
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(other) => value.push(other),
                                None => panic!("bad escape in {line:?}"),
                            },
                            other => value.push(other),
                        }
                    }
                    assert!(
                        labels.insert(std::mem::take(&mut key), value).is_none(),
                        "a label twice in {line:?}"
                    );
                }
                other => key.push(other),
            }
        }
        rest = &inner[end + 1..];
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let value: f64 = value_text
        .parse()
        .unwrap_or_else(|_| panic!("bad value {value_text:?} in {line:?}"));
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// Polls the scrape until `ok` holds; returns the last scrape either way.
fn scrape_until(port: u16, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut last = Scrape::get(port);
    let _ = poll_for(AUDIT_TIMEOUT, || {
        last = Scrape::get(port);
        ok(&last).then_some(())
    });
    last
}

/// The bastion of these tests: alice with a certificate, one echo target.
struct Bastion {
    pv: Portvakt,
    metrics: u16,
    alice: UserKey,
    echo: TcpServer,
}

/// The one target's name: must never show up in the metrics.
const TARGET: &str = "echo-svc";

fn bastion(env: &TestEnv, config: Config) -> Bastion {
    let echo = EchoServer::start();
    let metrics = free_port();
    // Two bastions may share one test folder: their files get their own names.
    let ca = env.ca(&format!("user_ca-{metrics}"));
    let alice = env.signed_key(
        &ca,
        &format!("alice-{metrics}"),
        &CertSpec::user(&["alice"]),
    );
    let pv = env.portvakt(
        &config
            .trust(&ca)
            .metrics(metrics)
            .target(Target::host(TARGET, "127.0.0.1", echo.port).allow_users(&["alice"])),
    );
    Bastion {
        pv,
        metrics,
        alice,
        echo,
    }
}

#[test]
fn healthz_and_readyz_answer_200_with_a_working_database() {
    let env = TestEnv::new();
    let b = bastion(&env, Config::new());

    let health = http_get(b.metrics, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let ready = http_get(b.metrics, "/readyz");
    assert_eq!(ready.status, 200, "{ready:?}");
    let missing = http_get(b.metrics, "/no-such-page");
    assert_eq!(missing.status, 404, "{missing:?}");
}

#[test]
fn readyz_waits_for_identity_provider_discovery() {
    let env = TestEnv::new();

    // An IdP that answers: discovery is done, the node is ready.
    let idp = Idp::start(env.path());
    let with_idp = bastion(&env, Config::new().oidc(idp.oidc()));
    let ready = poll_for(AUDIT_TIMEOUT, || {
        Some(http_get(with_idp.metrics, "/readyz")).filter(|r| r.status == 200)
    });
    assert!(
        ready.is_some(),
        "not ready with a working IdP: {:?}",
        http_get(with_idp.metrics, "/readyz")
    );

    // An IdP that is down: the process is healthy but not ready, and says why.
    let dead_issuer = format!("http://127.0.0.1:{}", free_port());
    let without = bastion(
        &env,
        Config::new().oidc(Oidc::new(&dead_issuer, "portvakt")),
    );
    let health = http_get(without.metrics, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let ready = http_get(without.metrics, "/readyz");
    assert_eq!(
        ready.status, 503,
        "ready although the IdP is down: {ready:?}"
    );
    assert!(
        ready.body.contains("identity provider"),
        "/readyz does not say why: {ready:?}"
    );
}

#[test]
fn metrics_move_with_logins_and_forwards_and_name_no_user_or_address() {
    let env = TestEnv::new();
    let b = bastion(&env, Config::new());
    // The harness's readiness probe (a bare TCP connection) has gone.
    let before = scrape_until(b.metrics, |s| {
        s.value("portvakt_connections_open", &[]) == 0.0
    });
    assert_eq!(
        before.value("portvakt_connections_open", &[]),
        0.0,
        "{}",
        before.text
    );
    let alice = env.client(&b.pv, "alice").identity(&b.alice);

    // A forward that carries 100 000 bytes each way.
    let payload = random_bytes(100_000);
    let out = forward_stdio(&alice, TARGET, b.echo.port, &payload);
    out.assert_success();
    assert!(out.stdout == payload, "echo mismatch: {out}");

    // A forward to a target that does not exist.
    // (LogLevel INFO: ssh logs the refusal text at INFO.)
    let out = forward_stdio(&alice.clone().log_level("INFO"), "no-such-target", 22, b"");
    assert_forward_prohibited(&out, "alice");

    // A login with a certificate from a CA nobody trusts.
    let rogue = env.ca("rogue_ca");
    let mallory = env.signed_key(&rogue, "mallory", &CertSpec::user(&["mallory"]));
    let out = env
        .client(&b.pv, "mallory")
        .identity(&mallory)
        .run(&[BASTION, "true"]);
    assert_login_refused(&out);

    // A forward held open: the gauges go up while it is open ...
    let open_forwards = before.value("portvakt_forwards_open", &[]);
    let open_connections = before.value("portvakt_connections_open", &[]);
    let mut held = alice.spawn(&["-W", &format!("{TARGET}:{}", b.echo.port), BASTION]);
    held.stdin().write_all(b"hi\n").unwrap();
    held.stdin().flush().unwrap();
    let (_stdout, back) = proc::read_exact_within(held.take_stdout(), 3, AUDIT_TIMEOUT);
    assert_eq!(&back, b"hi\n");
    let during = scrape_until(b.metrics, |s| {
        s.value("portvakt_forwards_open", &[]) == open_forwards + 1.0
    });
    assert_eq!(
        during.value("portvakt_forwards_open", &[]),
        open_forwards + 1.0,
        "forwards_open while one forward is open:\n{}",
        during.text
    );
    assert!(
        during.value("portvakt_connections_open", &[]) >= open_connections + 1.0,
        "connections_open while one connection is open:\n{}",
        during.text
    );
    // ... and back down when it ends.
    held.close_stdin();
    held.wait_exit(AUDIT_TIMEOUT);
    let after = scrape_until(b.metrics, |s| {
        s.value("portvakt_forwards_open", &[]) == open_forwards
            && s.value("portvakt_connections_open", &[]) == open_connections
            && s.value(
                "portvakt_forwarded_bytes_total",
                &[("direction", "from_target")],
            ) >= before.value(
                "portvakt_forwarded_bytes_total",
                &[("direction", "from_target")],
            ) + 100_003.0
            && s.value("portvakt_logins_total", &[("result", "failure")])
                > before.value("portvakt_logins_total", &[("result", "failure")])
    });
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let show = &after.text;

    assert_eq!(
        after.value("portvakt_forwards_open", &[]),
        open_forwards,
        "{show}"
    );
    assert_eq!(
        after.value("portvakt_connections_open", &[]),
        open_connections,
        "{show}"
    );
    // Four SSH connections: the forward, the refused forward, mallory, the held one.
    assert!(delta("portvakt_connections_total", &[]) >= 4.0, "{show}");
    // alice logged in three times with her certificate.
    assert_eq!(
        delta(
            "portvakt_logins_total",
            &[("method", "certificate"), ("result", "success")]
        ),
        3.0,
        "{show}"
    );
    // mallory's refusal, with its reason as a label, under the same method
    // word as alice's successes (one vocabulary: the SSH method).
    assert!(
        delta(
            "portvakt_logins_total",
            &[
                ("method", "certificate"),
                ("result", "failure"),
                ("reason", "certificate_untrusted_ca")
            ]
        ) >= 1.0,
        "no failure with reason certificate_untrusted_ca:\n{show}"
    );
    assert_eq!(
        delta("portvakt_forwards_total", &[("result", "allowed")]),
        2.0,
        "{show}"
    );
    assert_eq!(
        delta(
            "portvakt_forwards_total",
            &[("result", "denied"), ("reason", "unknown_target")]
        ),
        1.0,
        "{show}"
    );
    // The bytes moved, exactly, in their own direction.
    assert_eq!(
        delta(
            "portvakt_forwarded_bytes_total",
            &[("direction", "to_target")]
        ),
        100_003.0,
        "{show}"
    );
    assert_eq!(
        delta(
            "portvakt_forwarded_bytes_total",
            &[("direction", "from_target")]
        ),
        100_003.0,
        "{show}"
    );
    assert!(
        delta("portvakt_forwards_closed_total", &[]) >= 2.0,
        "{show}"
    );
    // The histograms saw the logins and the dials.
    assert_eq!(
        delta(
            "portvakt_login_duration_seconds_count",
            &[("method", "certificate")]
        ),
        3.0,
        "{show}"
    );
    assert_eq!(
        delta("portvakt_dial_duration_seconds_count", &[]),
        2.0,
        "{show}"
    );
    assert!(
        after.value("portvakt_dial_duration_seconds_bucket", &[("le", "+Inf")]) >= 2.0,
        "{show}"
    );

    // Labels come from fixed sets: no label names beyond these, no values
    // that look like a user, an address or a target.
    let allowed_labels = ["method", "result", "reason", "direction", "le"];
    let forbidden = ["alice", "mallory", "127.0.0.1", TARGET, "no-such-target"];
    for s in &after.samples {
        for (name, value) in &s.labels {
            assert!(
                allowed_labels.contains(&name.as_str()),
                "unexpected label {name} on {s:?}"
            );
            assert!(
                !forbidden.iter().any(|f| value.contains(f)) && !value.contains(':'),
                "label {name}={value:?} names a user, address or target: {s:?}"
            );
            if name != "le" {
                assert!(
                    value
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_+-".contains(c)),
                    "label {name}={value:?} is not a fixed word: {s:?}"
                );
            }
        }
    }
    for word in forbidden {
        assert!(
            !after.text.contains(word),
            "the scrape mentions {word:?}:\n{show}"
        );
    }
    let port = b.echo.port.to_string();
    assert!(
        !after
            .samples
            .iter()
            .any(|s| s.labels.values().any(|v| *v == port)),
        "a label value is the target port:\n{show}"
    );
}

/// Every `portvakt_...` metric name in `expr`.
fn metric_names_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("portvakt_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Label names an expression groups by (`by (...)`, `without (...)`) or
/// matches on (`{name="..."}`).
fn label_names_in(expr: &str) -> Vec<String> {
    let mut labels = Vec::new();
    for keyword in ["by", "without"] {
        let mut rest = expr;
        while let Some(i) = rest.find(keyword) {
            let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
            let tail = rest[i + keyword.len()..].trim_start();
            if before_ok && tail.starts_with('(') {
                let list = &tail[1..tail.find(')').expect("unclosed by (...)")];
                labels.extend(
                    list.split(',')
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
            }
            rest = &rest[i + keyword.len()..];
        }
    }
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("unclosed {") + open;
        for matcher in rest[open + 1..close].split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                labels.push(name);
            }
        }
        rest = &rest[close + 1..];
    }
    labels
}

/// Every string under a key named `key`, anywhere in `v`.
fn strings_under(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == key
                    && let Some(s) = child.as_str()
                {
                    out.push(s.to_string());
                }
                strings_under(child, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| strings_under(i, key, out)),
        _ => {}
    }
}

/// Every panel, also those nested in collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack: Vec<Value> = dashboard["panels"].as_array().cloned().unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested.iter().cloned());
        }
        out.push(panel);
    }
    out
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_scrape_contains() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));

    // A live scrape after some traffic and a config reload.
    let env = TestEnv::new();
    let b = bastion(&env, Config::new());
    let alice = env.client(&b.pv, "alice").identity(&b.alice);
    assert_echo_works(&alice, TARGET, b.echo.port);
    // A command: portvakt refuses the session channel's exec.
    alice.run(&[BASTION, "true"]);
    b.pv.signal("HUP");
    let scrape = scrape_until(b.metrics, |s| {
        s.value("portvakt_config_reloads_total", &[]) >= 1.0
            && s.value("portvakt_channels_refused_total", &[]) >= 1.0
    });
    let known = scrape.metric_names();

    // An importable dashboard on a Prometheus data source chosen at import.
    let schema = dashboard["schemaVersion"].as_i64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "no title"
    );
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input: {inputs:?}"
    );

    let panels = all_panels(&dashboard);
    let mut titles = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert!(panel["gridPos"].is_object(), "panel {title} has no gridPos");
        assert!(titles.insert(title.clone()), "two panels titled {title:?}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {title} does not use the DS_PROMETHEUS input"
        );
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title} queries nothing");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title}: a target without expr"))
                .to_string();
            assert_eq!(
                target["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {title}: {expr}"
            );
            exprs.push((title.clone(), expr));
        }
    }
    // Template variable queries name metrics too.
    let mut variable_queries = Vec::new();
    strings_under(&dashboard["templating"], "query", &mut variable_queries);
    strings_under(
        &dashboard["templating"],
        "definition",
        &mut variable_queries,
    );
    exprs.extend(
        variable_queries
            .into_iter()
            .map(|q| ("templating".to_string(), q)),
    );

    for (title, expr) in &exprs {
        let names = metric_names_in(expr);
        assert!(
            !names.is_empty(),
            "panel {title}: {expr} names no portvakt metric"
        );
        let mut labels: BTreeSet<String> = ["instance", "job"].map(String::from).into();
        for name in &names {
            assert!(
                known.contains(name),
                "panel {title}: {expr} names {name}, which the scrape does not contain; it has:\n{known:#?}"
            );
            used.insert(name.clone());
            labels.extend(scrape.label_names(name));
        }
        if title != "templating" {
            for label in label_names_in(expr) {
                assert!(
                    labels.contains(&label),
                    "panel {title}: {expr} uses label {label}, which {names:?} do not have"
                );
            }
        }
    }

    // And it shows what issue 6 asks for.
    for metric in [
        "portvakt_connections_open",
        "portvakt_logins_total",
        "portvakt_forwards_open",
        "portvakt_forwards_total",
        "portvakt_forwarded_bytes_total",
        "portvakt_grants_active",
        "portvakt_bans_active",
        "portvakt_login_duration_seconds_bucket",
        "portvakt_dial_duration_seconds_bucket",
        "portvakt_database_errors_total",
        "portvakt_audit_records_dropped_total",
        "portvakt_config_reloads_total",
    ] {
        assert!(used.contains(metric), "no panel shows {metric}");
    }
    let all: Vec<&str> = exprs.iter().map(|(_, e)| e.as_str()).collect();
    for histogram in ["login_duration_seconds", "dial_duration_seconds"] {
        for q in ["0.5", "0.95"] {
            assert!(
                all.iter()
                    .any(|e| e.contains(&format!("histogram_quantile({q},"))
                        && e.contains(histogram)),
                "no p{q} of {histogram}"
            );
        }
    }
    assert!(
        all.iter()
            .any(|e| e.contains("portvakt_logins_total") && e.contains("by (reason)")),
        "no panel of refusals by reason"
    );
    for direction in ["to_target", "from_target"] {
        assert!(
            all.iter()
                .any(|e| e.contains("forwarded_bytes_total") && e.contains(direction)),
            "no bytes per second {direction}"
        );
    }
}
