//! Every configuration rule, one bad value each: `Settings` refuses it naming the setting,
//! and the binary exits 2 with that message before it opens a database or a port.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batchlens::config::{ConfigError, Settings};

const KEY_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// What a rule is about, the environment, the config file text, the setting the error names.
type Rule = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
    &'static str,
);

fn rules() -> Vec<Rule> {
    vec![
        (
            "host not an IP",
            vec![("BATCHLENS__SERVER__HOST", "localhost")],
            "",
            "server.host",
        ),
        (
            "open service on a public address",
            vec![("BATCHLENS__SERVER__HOST", "0.0.0.0")],
            "",
            "server.host",
        ),
        (
            "tiny body limit",
            vec![("BATCHLENS__SERVER__MAX_BODY_BYTES", "100")],
            "",
            "server.max_body_bytes",
        ),
        (
            "no webhook attempts",
            vec![("BATCHLENS__WEBHOOKS__MAX_ATTEMPTS", "0")],
            "",
            "webhooks.max_attempts",
        ),
        (
            "webhook timeout 0",
            vec![("BATCHLENS__WEBHOOKS__TIMEOUT_SECS", "0")],
            "",
            "webhooks.timeout_secs",
        ),
        (
            "secret without whsec_",
            vec![("BATCHLENS__WEBHOOKS__SECRET", "hunter2")],
            "",
            "webhooks.secret",
        ),
        (
            "secret not base64",
            vec![("BATCHLENS__WEBHOOKS__SECRET", "whsec_%%%")],
            "",
            "webhooks.secret",
        ),
        (
            "secret too short",
            vec![("BATCHLENS__WEBHOOKS__SECRET", "whsec_c2hvcnQ=")],
            "",
            "webhooks.secret",
        ),
        (
            "database scheme",
            vec![("DATABASE_URL", "mysql://db/x")],
            "",
            "database.url",
        ),
        (
            "openai url",
            vec![("OPENAI_BASE_URL", "not a url")],
            "",
            "openai.base_url",
        ),
        (
            "openai scheme",
            vec![("OPENAI_BASE_URL", "ftp://api.example.com")],
            "",
            "openai.base_url",
        ),
        (
            "empty default model",
            vec![("BATCHLENS__OPENAI__DEFAULT_MODEL", " ")],
            "",
            "openai.default_model",
        ),
        (
            "no completion tokens",
            vec![("BATCHLENS__OPENAI__MAX_COMPLETION_TOKENS", "0")],
            "",
            "openai.max_completion_tokens",
        ),
        (
            "request timeout 0",
            vec![("BATCHLENS__OPENAI__REQUEST_TIMEOUT_SECS", "0")],
            "",
            "openai.request_timeout_secs",
        ),
        (
            "transfer timeout 0",
            vec![("BATCHLENS__OPENAI__TRANSFER_TIMEOUT_SECS", "0")],
            "",
            "openai.request_timeout_secs",
        ),
        (
            "poll min 0",
            vec![("BATCHLENS__BATCH__POLL_MIN_MS", "0")],
            "",
            "batch.poll_max_ms",
        ),
        (
            "poll max below min",
            vec![
                ("BATCHLENS__BATCH__POLL_MIN_MS", "5000"),
                ("BATCHLENS__BATCH__POLL_MAX_MS", "100"),
            ],
            "",
            "batch.poll_max_ms",
        ),
        (
            "file under 1 KB",
            vec![("BATCHLENS__BATCH__MAX_FILE_BYTES", "1000")],
            "",
            "batch.max_file_bytes",
        ),
        (
            "file over 200 MB",
            vec![("BATCHLENS__BATCH__MAX_FILE_BYTES", "200000001")],
            "",
            "batch.max_file_bytes",
        ),
        (
            "no lines",
            vec![("BATCHLENS__BATCH__MAX_LINES", "0")],
            "",
            "batch.max_lines",
        ),
        (
            "over 50,000 lines",
            vec![("BATCHLENS__BATCH__MAX_LINES", "50001")],
            "",
            "batch.max_lines",
        ),
        (
            "no batch attempts",
            vec![("BATCHLENS__BATCH__MAX_ATTEMPTS", "0")],
            "",
            "batch.max_attempts",
        ),
        (
            "short lease",
            vec![("BATCHLENS__BATCH__LEASE_SECS", "4")],
            "",
            "batch.lease_secs",
        ),
        (
            "tick 0",
            vec![("BATCHLENS__BATCH__TICK_MS", "0")],
            "",
            "batch.tick_ms",
        ),
        (
            "rpm 0",
            vec![("BATCHLENS__INDIVIDUAL__RPM", "0")],
            "",
            "individual.rpm",
        ),
        (
            "tpm 0",
            vec![("BATCHLENS__INDIVIDUAL__TPM", "0")],
            "",
            "individual.rpm",
        ),
        (
            "concurrency 0",
            vec![("BATCHLENS__INDIVIDUAL__CONCURRENCY", "0")],
            "",
            "individual.rpm",
        ),
        (
            "shared budget not a choice",
            vec![("BATCHLENS__INDIVIDUAL__SHARED_BUDGET", "sometimes")],
            "",
            "individual.shared_budget",
        ),
        (
            "shared budget on SQLite",
            vec![],
            "[individual]\nshared_budget = true\n",
            "individual.shared_budget",
        ),
        (
            "image bytes 0",
            vec![("BATCHLENS__INTAKE__MAX_IMAGE_BYTES", "0")],
            "",
            "intake.max_image_bytes",
        ),
        (
            "default width 0",
            vec![("BATCHLENS__INTAKE__DEFAULT_IMAGE_WIDTH", "0")],
            "",
            "intake.default_image_width",
        ),
        (
            "default height 0",
            vec![("BATCHLENS__INTAKE__DEFAULT_IMAGE_HEIGHT", "0")],
            "",
            "intake.default_image_width",
        ),
        (
            "fetch timeout 0",
            vec![("BATCHLENS__INTAKE__FETCH_TIMEOUT_SECS", "0")],
            "",
            "intake.fetch_timeout_secs",
        ),
        (
            "fetch concurrency 0",
            vec![("BATCHLENS__INTAKE__FETCH_CONCURRENCY", "0")],
            "",
            "intake.fetch_concurrency",
        ),
        (
            "fetch bytes under one image",
            vec![("BATCHLENS__INTAKE__FETCH_MAX_BYTES_IN_FLIGHT", "1000")],
            "",
            "intake.fetch_max_bytes_in_flight",
        ),
        (
            "observed items 0",
            vec![("BATCHLENS__ESTIMATE__MIN_OBSERVED_ITEMS", "0")],
            "",
            "estimate.min_observed_items",
        ),
        (
            "history jobs 0",
            vec![("BATCHLENS__ESTIMATE__HISTORY_JOBS", "0")],
            "",
            "estimate.history_jobs",
        ),
        (
            "history items 0",
            vec![("BATCHLENS__ESTIMATE__HISTORY_ITEMS_PER_JOB", "0")],
            "",
            "estimate.history_items_per_job",
        ),
        (
            "log filter",
            vec![("BATCHLENS__LOG__LEVEL", "info,=[")],
            "",
            "log.level",
        ),
        (
            "key without tenant",
            vec![],
            "[[auth.keys]]\ntenant = \" \"\nsha256 = \"KEY\"\n",
            "auth.keys.tenant",
        ),
        (
            "key hash too short",
            vec![],
            "[[auth.keys]]\ntenant = \"acme\"\nsha256 = \"abc123\"\n",
            "auth.keys.sha256",
        ),
        (
            "key hash not hex",
            vec![],
            "[[auth.keys]]\ntenant = \"acme\"\nsha256 = \"KEYZ\"\n",
            "auth.keys.sha256",
        ),
        (
            "negative price",
            vec![],
            "[pricing.gpt-4o-mini]\nPRICES\ninput = -1.0\n",
            "pricing",
        ),
        (
            "price with 7 decimals",
            vec![],
            "[pricing.gpt-4o-mini]\nPRICES\ninput = 0.1234567\n",
            "pricing",
        ),
    ]
}

/// The config file text with the placeholder hashes filled in.
fn file_text(text: &str) -> String {
    let prices = "cached_input = 0.075\noutput = 0.6\nbatch_input = 0.075\n\
                  batch_cached_input = 0.0375\nbatch_output = 0.3";
    text.replace("PRICES", prices)
        .replace("KEYZ", &format!("{}Z", &KEY_SHA[..63]))
        .replace("KEY", KEY_SHA)
}

#[test]
fn every_rule_names_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (about, env, file, setting)) in rules().into_iter().enumerate() {
        let path = dir.path().join(format!("rule-{i}.toml"));
        std::fs::write(&path, file_text(file)).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Settings::load_from(Some((&path, true)), &env) {
            Err(ConfigError::Invalid {
                setting: named,
                problem,
            }) => {
                assert_eq!(named, setting, "{about}: {problem}")
            }
            Err(other) => panic!("{about}: not a rule's error: {other}"),
            Ok(_) => panic!("{about}: accepted"),
        }
    }
    // And the defaults pass every rule.
    assert!(Settings::load_from(None, &HashMap::new()).is_ok());
}

#[test]
fn the_binary_exits_2_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (about, env, file, setting)) in rules().into_iter().enumerate() {
        let path = dir.path().join(format!("rule-{i}.toml"));
        std::fs::write(&path, file_text(file)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_batchlens"))
            .env_clear()
            .env("BATCHLENS_CONFIG", &path)
            // Were a rule not enforced, the service would start: keep it off the real data
            // directory and on a port of its own.
            .env("BATCHLENS__DATA_DIR", dir.path().join("data"))
            .env("BATCHLENS__SERVER__PORT", "0")
            .envs(env.iter().copied())
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run batchlens");
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{about}: the service started instead of refusing the setting");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{about}: {stderr}");
        assert!(
            stderr.contains(&format!("configuration: {setting}")),
            "{about}: {stderr}"
        );
    }
}
