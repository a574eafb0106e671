use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_setting_has_a_key() {
    let text = serde_yaml_ng_like_keys();
    for key in SETTING_KEYS {
        assert!(text.contains(key), "{key} is not a field of Settings");
    }
}

/// The Debug rendering of the defaults names every field.
fn serde_yaml_ng_like_keys() -> String {
    format!("{:?}", Settings::default())
}

#[test]
fn layers_apply_in_order_defaults_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("settings.yaml");
    let repo = dir.path().display().to_string();
    std::fs::write(
        &file,
        format!("model_repository: {repo}\ngrpc_port: 9001\nhttp_port: 9000\nlog_format: json\n"),
    )
    .unwrap();
    let settings = Settings::load(
        Some(&file),
        env(&[
            ("SWITCHYARD_HTTP_PORT", "7000"),
            ("SWITCHYARD_BIN", "/x"),
            ("OTHER", "1"),
        ]),
        vec![("grpc_port", 7001u64.into())],
    )
    .unwrap();
    assert_eq!(settings.grpc_port, 7001, "flag beats file");
    assert_eq!(settings.http_port, 7000, "environment beats file");
    assert_eq!(settings.log_format, LogFormat::Json, "file beats default");
    assert_eq!(settings.metrics_port, DEFAULT_METRICS_PORT, "default");
}

#[test]
fn explicit_mode_takes_a_model_list_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().display().to_string();
    let settings = Settings::load(
        None,
        env(&[
            ("SWITCHYARD_MODEL_REPOSITORY", &repo),
            ("SWITCHYARD_MODEL_CONTROL_MODE", "explicit"),
            ("SWITCHYARD_LOAD_MODEL", "simple,classifier"),
        ]),
        vec![],
    )
    .unwrap();
    assert_eq!(settings.model_control_mode, ModelControlMode::Explicit);
    assert_eq!(settings.load_model, vec!["simple", "classifier"]);
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().display().to_string();
    let err = |pairs: &[(&str, &str)]| {
        let mut all = env(&[("SWITCHYARD_MODEL_REPOSITORY", &repo)]);
        all.extend(env(pairs));
        Settings::load(None, all, vec![]).unwrap_err().to_string()
    };
    assert!(err(&[("SWITCHYARD_GRPC_PORT", "70000")]).contains("grpc_port"));
    assert!(err(&[("SWITCHYARD_MODEL_CONTROL_MODE", "sometimes")]).contains("sometimes"));
    assert!(err(&[("SWITCHYARD_GRPC_ADDRESS", "localhost:1")]).contains("grpc_address"));
    let missing = Settings::load(
        None,
        env(&[("SWITCHYARD_MODEL_REPOSITORY", "/no/such/dir")]),
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(missing.contains("/no/such/dir"), "{missing}");
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "grpc_prot = 1\n").unwrap();
    let typo = Settings::load(
        Some(&file),
        env(&[("SWITCHYARD_MODEL_REPOSITORY", &repo)]),
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(typo.contains("grpc_prot"), "{typo}");
}

#[test]
fn management_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().display().to_string();
    let load = |pairs: &[(&str, &str)]| {
        let mut all = vec![("SWITCHYARD_MODEL_REPOSITORY", repo.as_str())];
        all.extend_from_slice(pairs);
        Settings::load(None, env(&all), Vec::new())
    };
    let ok = load(&[
        ("SWITCHYARD_MANAGEMENT_ADDRESS", "127.0.0.1"),
        ("SWITCHYARD_MANAGEMENT_PORT", "9100"),
        ("SWITCHYARD_MANAGEMENT_TOKEN", "t"),
        ("SWITCHYARD_TRAFFIC_STORE", "memory"),
    ])
    .unwrap();
    assert_eq!(ok.management_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(ok.management_port, Some(9100));
    assert_eq!(ok.traffic_store, TrafficStore::Memory);
    let error = |pairs: &[(&str, &str)]| load(pairs).unwrap_err().to_string();
    assert!(
        error(&[("SWITCHYARD_MANAGEMENT_ADDRESS", "127.0.0.1")]).contains("needs management_port")
    );
    assert!(
        error(&[
            ("SWITCHYARD_MANAGEMENT_ADDRESS", "internal"),
            ("SWITCHYARD_MANAGEMENT_PORT", "1")
        ])
        .contains("'internal' is not an IP address")
    );
    assert!(error(&[("SWITCHYARD_MANAGEMENT_TOKEN", "")]).contains("set but empty"));
    assert!(error(&[("SWITCHYARD_TRAFFIC_STORE", "disk")]).contains("disk"));
}
